"""Request handling through a real dataplane thread, real eventfds and a real image file."""

from __future__ import annotations

import os

import pytest
from engine_support import HeldEngine
from ringutil import IMG_SECTORS, Req, assert_writes_within, log, run, start_rig
from waits import WAIT_S, wait_until

from dataplane.device.datapath.factory import open_datapath
from dataplane.device.datapath.python import PythonDatapath
from dataplane.device.disk import Disk
from dataplane.device.engines import ThreadsEngine
from dataplane.device.engines.delay import TestDelay
from dataplane.device.limiter import Limiter, Limits
from dataplane.device.virtqueue import VRING_DESC_F_NEXT
from dataplane.errors import UsageError
from dataplane.guest.ring import Buf, DriverRing
from dataplane.serve.device_checks import MAX_POLL_US
from dataplane.spec import blk


@pytest.fixture(params=["native", "python"])
def datapath(request):
    """A test that takes it runs on both datapaths."""
    return request.param


@pytest.mark.parametrize("engine", ["io_uring", "native", "threads"])
def test_read_write_flush_getid_discard(ram, image, engine, datapath):
    path, fd = image
    ring = DriverRing(ram, 16)
    disk = Disk(IMG_SECTORS, serial=b"serial-1234", queue_size=16)
    rig = start_rig(ram, [ring], fd, disk, engine=engine, datapath=datapath)
    try:
        payload = os.urandom(8192)
        w = Req(ram, blk.VIRTIO_BLK_T_OUT, 16, data=payload, split=2)
        assert run(ram, ring, rig, [w], indirect=True) == [1]
        assert path.read_bytes()[16 * 512 : 16 * 512 + 8192] == payload

        r = Req(ram, blk.VIRTIO_BLK_T_IN, 16, read_len=8192, split=4)
        f = Req(ram, blk.VIRTIO_BLK_T_FLUSH, 0)
        g = Req(ram, blk.VIRTIO_BLK_T_GET_ID, 0, read_len=20)
        lens = run(ram, ring, rig, [r, f, g], check_writes=True)
        assert lens == [8193, 1, len(b"serial-1234") + 9 + 1]
        assert ram.read(r.inp, 8192) == payload
        assert ram.read(g.inp, 20) == b"serial-1234".ljust(20, b"\0")
        assert [ram.read(x.status, 1) for x in (r, f, g)] == [bytes([blk.VIRTIO_BLK_S_OK])] * 3

        d = Req(ram, blk.VIRTIO_BLK_T_DISCARD, 0, data=blk.DWZ_SEGMENT.pack(32, 8, 0))
        z = Req(ram, blk.VIRTIO_BLK_T_WRITE_ZEROES, 0, data=blk.DWZ_SEGMENT.pack(48, 8, 1))
        assert run(ram, ring, rig, [d, z]) == [1, 1]
        img = path.read_bytes()
        assert img[32 * 512 : 40 * 512] == bytes(4096)
        assert img[48 * 512 : 56 * 512] == bytes(4096)
        assert img[40 * 512 : 48 * 512] != bytes(4096)
        assert os.path.getsize(path) == IMG_SECTORS * 512
    finally:
        rig.close()


def test_out_of_range_and_unsupported_requests(ram, image, datapath):
    path, fd = image
    before_img = path.read_bytes()
    ring = DriverRing(ram, 32)
    disk = Disk(IMG_SECTORS, queue_size=32)
    rig = start_rig(ram, [ring], fd, disk, datapath=datapath)
    try:
        reqs = [
            Req(ram, blk.VIRTIO_BLK_T_OUT, IMG_SECTORS - 1, data=bytes(1024)),  # past the end
            Req(ram, blk.VIRTIO_BLK_T_IN, IMG_SECTORS, read_len=512),  # starts at the end
            Req(ram, blk.VIRTIO_BLK_T_OUT, 0, data=bytes(100)),  # not a multiple of 512
            Req(ram, blk.VIRTIO_BLK_T_IN, (1 << 64) - 1, read_len=512),  # sector overflow
            Req(ram, 99, 0, read_len=512),  # unknown type
            Req(ram, blk.VIRTIO_BLK_T_DISCARD, 0, data=blk.DWZ_SEGMENT.pack(IMG_SECTORS, 1, 0)),
            Req(ram, blk.VIRTIO_BLK_T_DISCARD, 0, data=blk.DWZ_SEGMENT.pack(0, 1, 1)),  # UNMAP
            Req(ram, blk.VIRTIO_BLK_T_WRITE_ZEROES, 0, data=blk.DWZ_SEGMENT.pack(0, 1, 2)),
        ]
        run(ram, ring, rig, reqs, check_writes=True)
        got = [ram.read(r.status, 1)[0] for r in reqs]
        E, U = blk.VIRTIO_BLK_S_IOERR, blk.VIRTIO_BLK_S_UNSUPP
        assert got == [E, E, E, E, U, E, U, U]
        assert path.read_bytes() == before_img
    finally:
        rig.close()


def test_read_only_refuses_writes(ram, image, datapath):
    path, fd = image
    before_img = path.read_bytes()
    ring = DriverRing(ram, 16)
    rig = start_rig(
        ram, [ring], fd, Disk(IMG_SECTORS, read_only=True, queue_size=16), datapath=datapath
    )
    try:
        w = Req(ram, blk.VIRTIO_BLK_T_OUT, 0, data=bytes(512))
        z = Req(ram, blk.VIRTIO_BLK_T_WRITE_ZEROES, 0, data=blk.DWZ_SEGMENT.pack(0, 1, 0))
        r = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=512)
        run(ram, ring, rig, [w, z, r])
        assert [ram.read(x.status, 1)[0] for x in (w, z, r)] == [1, 1, 0]
        assert path.read_bytes() == before_img
    finally:
        rig.close()


def test_bounce_buffer_for_misaligned_direct_io(ram, tmp_path, datapath):
    path = tmp_path / "direct.img"
    path.write_bytes(bytes(IMG_SECTORS * 512))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], fd, Disk(IMG_SECTORS, align=512, queue_size=16), datapath=datapath)
    try:
        payload = os.urandom(1024)
        w = Req(ram, blk.VIRTIO_BLK_T_OUT, 3, data=payload)
        # Misalign the data buffer on purpose: O_DIRECT would refuse it.
        w.bufs[1] = Buf(w.out + 1, 1024)
        ram.write(w.out + 1, payload)
        r = Req(ram, blk.VIRTIO_BLK_T_IN, 3, read_len=1024 + 512)
        r.bufs[1] = Buf(r.inp + 7, 1024, True)
        run(ram, ring, rig, [w])
        run(ram, ring, rig, [r])
        assert ram.read(w.status, 1) == b"\0" and ram.read(r.status, 1) == b"\0"
        assert ram.read(r.inp + 7, 1024) == payload
        assert path.read_bytes()[3 * 512 : 3 * 512 + 1024] == payload
    finally:
        rig.close()
        os.close(fd)


@pytest.mark.parametrize("bad", ["header", "status"])
def test_bad_framing_breaks_only_that_queue(ram, image, bad, datapath):
    path, fd = image
    before_img = path.read_bytes()
    rings = [DriverRing(ram, 16), DriverRing(ram, 16)]
    rig = start_rig(ram, rings, fd, Disk(IMG_SECTORS, queue_size=16), datapath=datapath)
    try:
        if bad == "header":  # 8 readable bytes only
            bufs = [Buf(ram.alloc(8), 8), Buf(ram.alloc(1), 1, True)]
        else:  # no device-writable byte
            bufs = [Buf(ram.alloc(16), 16), Buf(ram.alloc(512), 512)]
        ram.write(bufs[0].gpa, blk.HEADER.pack(blk.VIRTIO_BLK_T_OUT, 0, 0)[: bufs[0].length])
        rings[0].publish([rings[0].add_chain(bufs)])
        before = bytes(ram.view)
        rig.kick(0)
        assert rig.err_signalled(0), "the err eventfd was not signalled"
        assert_writes_within(ram, before, [])
        assert rings[0].used_idx() == 0

        # The other queue keeps serving.
        r = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=512)
        run(ram, rings[1], rig, [r], q=1)
        assert ram.read(r.inp, 512) == before_img[:512]
        # And the broken queue stays silent even when kicked again.
        ok = [Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)]
        rings[0].publish([rings[0].add_chain(ok)])
        before = bytes(ram.view)
        rig.kick(0)
        assert not rig.wait_call(0, timeout=0.3)
        # The healthy ring's used->flags may still change: its thread turns kicks back on
        # before it sleeps, after the completion the driver saw (a race, not a bad write).
        assert_writes_within(ram, before, [(rings[1].used, 2)])
    finally:
        rig.close()


def test_hostile_ring_never_written(ram, image, datapath):
    path, fd = image
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], fd, Disk(IMG_SECTORS, queue_size=16), datapath=datapath)
    try:
        a = ram.alloc(16)
        ring.write_desc(0, a, 16, VRING_DESC_F_NEXT, 1)
        ring.write_desc(1, a, 16, VRING_DESC_F_NEXT, 0)  # loop
        ring.publish([0])
        before = bytes(ram.view)
        rig.kick()
        assert rig.err_signalled(0)
        assert_writes_within(ram, before, [])
    finally:
        rig.close()


def popped(rig, ring: DriverRing) -> int:
    """Requests the device has taken off the ring: in flight, or completed (the two are
    read one after the other, so a request completing between them may count twice)."""
    (q,) = rig.thread.stats()["queues"]
    return q["inflight"] + ring.used_idx()


def test_stop_ring_waits_for_inflight_and_returns_base(ram, image, datapath):
    path, fd = image
    ring = DriverRing(ram, 32)
    disk = Disk(IMG_SECTORS, queue_size=32)
    if datapath == "native":  # every completion half a second late: in flight
        rig = start_rig(ram, [ring], fd, disk, engine="io_uring", test_delay=TestDelay(1, 500_000))
    else:  # every completion held until the stop is under way
        held = HeldEngine(ThreadsEngine(fd, 4 * disk.queue_size))
        rig = start_rig(ram, [ring], fd, disk, dp=PythonDatapath(disk, held, [0], log))
    try:
        reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, i, read_len=4096) for i in range(10)]
        ring.publish([ring.add_chain(r.bufs) for r in reqs])
        rig.kick()
        # The stop must land after the device popped something, or it has nothing to wait for.
        wait_until(lambda: popped(rig, ring) > 0, "the device to pop a request")
        stopped = rig.thread.stop_ring(0)
        if datapath == "python":
            assert ring.used_idx() == 0  # nothing completed: the stop waits for all of it
            held.release()
        base = stopped.result(WAIT_S)
        assert 0 < base <= 10
        # Every popped request completed before the stop resolved; the rest were never popped.
        assert ring.used_idx() == base
        assert all(ram.read(r.status, 1) == b"\0" for r in reqs[:base])
        assert all(ram.read(r.status, 1) == b"\xee" for r in reqs[base:])
    finally:
        rig.close()


def test_event_idx_suppresses_interrupts(ram, image, datapath):
    path, fd = image
    ring = DriverRing(ram, 16, event_idx=True)
    rig = start_rig(
        ram, [ring], fd, Disk(IMG_SECTORS, queue_size=16), event_idx=True, datapath=datapath
    )
    try:
        ring.set_used_event(0xFFFF)  # "do not interrupt me" (far away)
        r = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=512)
        ring.publish([ring.add_chain(r.bufs)])
        rig.kick()
        # First completion always notifies (no signalled_used yet).
        assert rig.wait_call()
        r2 = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=512)
        ring.publish([ring.add_chain(r2.bufs)])
        rig.kick()
        assert not rig.wait_call(timeout=0.5)
        assert ring.used_idx() == 2
        assert ring.avail_event() == 2  # the device asked to be kicked at the next entry
    finally:
        rig.close()


def test_adaptive_polling_serves_requests(ram, image):
    """--poll-us exists on the native datapath only."""
    path, fd = image
    ring = DriverRing(ram, 16, event_idx=True)
    disk = Disk(IMG_SECTORS, queue_size=16)
    # The window opens after a wait shorter than poll-us: with the largest, any wait under
    # a second opens it, however busy the machine.
    rig = start_rig(ram, [ring], fd, disk, event_idx=True, datapath="native", poll_us=MAX_POLL_US)
    try:
        img = path.read_bytes()
        for i in range(40):
            r = Req(ram, blk.VIRTIO_BLK_T_IN, i, read_len=512)
            ring.set_used_event(ring.last_used_idx)
            assert run(ram, ring, rig, [r], check_writes=i == 0) == [513]
            assert ram.read(r.inp, 512) == img[i * 512 : (i + 1) * 512]
            ram.reset_alloc(ring.used + 4096)
        stats = rig.thread.call(rig.thread.datapath.stats).result(WAIT_S)
        assert stats["requests"] == 40
        assert stats["poll_hits"] + stats["poll_misses"] > 0, stats
    finally:
        rig.close()


def _misaligned(ram, n: int, split: int, writable: bool) -> tuple[int, list[Buf]]:
    """``n`` bytes one byte past a sector boundary, in ``split`` descriptors."""
    gpa = ram.alloc(n + 1, 512) + 1
    step = n // split
    return gpa, [Buf(gpa + i * step, step, writable) for i in range(split)]


@pytest.mark.parametrize("engine", ["io_uring", "native", "threads"])
def test_bounce_budget_bounds_memory_in_flight(ram, tmp_path, engine):
    """24 misaligned 16 KiB writes, then reads, through 64 KiB of bounce memory.

    Six times the budget is in flight: requests wait for memory, all complete
    with the right data, and the bounce memory in use never exceeds the budget
    (the C datapath's: the Python reference bounces each request on its own).
    """
    path = tmp_path / "direct.img"
    path.write_bytes(bytes(IMG_SECTORS * 512))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    budget, n, count = 64 << 10, 16 << 10, 24
    disk = Disk(IMG_SECTORS, align=512, queue_size=64, bounce_bytes=budget)
    assert disk.size_max == 4096  # 62 segments of 4 KiB fit the 64 KiB budget
    ring = DriverRing(ram, 64)
    rig = start_rig(ram, [ring], fd, disk, engine=engine, datapath="native")
    try:
        payloads = [os.urandom(n) for _ in range(count)]
        writes, reads = [], []
        for i, p in enumerate(payloads):
            w = Req(ram, blk.VIRTIO_BLK_T_OUT, 32 * i)
            w.out, bufs = _misaligned(ram, n, 4, False)
            ram.write(w.out, p)
            w.bufs[1:1] = bufs
            writes.append(w)
        assert run(ram, ring, rig, writes, indirect=True) == [1] * count
        assert [ram.read(w.status, 1) for w in writes] == [b"\0"] * count
        image = path.read_bytes()
        assert all(image[32 * 512 * i :][:n] == p for i, p in enumerate(payloads))
        for i in range(count):
            r = Req(ram, blk.VIRTIO_BLK_T_IN, 32 * i)
            r.inp, bufs = _misaligned(ram, n, 4, True)
            r.bufs[1:1] = bufs
            reads.append(r)
        assert run(ram, ring, rig, reads, indirect=True) == [n + 1] * count
        assert [ram.read(r.inp, n) for r in reads] == payloads
        peak, waits = rig.thread.datapath.bounce_usage()
        assert 0 < peak <= budget
        assert waits > 0, "the budget never made a request wait: the test proves nothing"
    finally:
        rig.close()
        os.close(fd)


@pytest.mark.parametrize("over", ["seg_max", "size_max"])
def test_request_past_seg_max_or_size_max_gets_ioerr(ram, tmp_path, datapath, over):
    """What the config space promises is enforced: IOERR, and the queue keeps serving."""
    path = tmp_path / "direct.img"
    path.write_bytes(bytes(IMG_SECTORS * 512))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    disk = Disk(IMG_SECTORS, align=512, queue_size=16, bounce_bytes=1 << 20)
    assert (disk.seg_max, disk.size_max) == (14, 64 << 10)
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], fd, disk, datapath=datapath)
    try:
        if over == "seg_max":  # 15 data segments of 512 bytes, in one indirect table
            r = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=15 * 512, split=15)
        else:  # one 128 KiB segment
            r = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=128 << 10)
        ok = Req(ram, blk.VIRTIO_BLK_T_IN, 0, read_len=14 * 512, split=14)  # exactly the limits
        assert run(ram, ring, rig, [r, ok], indirect=True) == [r.read_len + 1, ok.read_len + 1]
        assert ram.read(r.status, 1) == bytes([blk.VIRTIO_BLK_S_IOERR])
        assert ram.read(ok.status, 1) == bytes([blk.VIRTIO_BLK_S_OK])
        assert not rig.thread.datapath.is_broken(0)
    finally:
        rig.close()
        os.close(fd)


def test_limits_are_the_c_datapaths_alone(ram, image):
    """The Python reference has no I/O limits: an unlimited limiter is fine, limits refused."""
    _, fd = image
    disk = Disk(IMG_SECTORS, queue_size=16)
    for kind in ("python", "native"):
        dp = open_datapath(kind, disk, "null", fd, 16, [0], log)
        try:
            dp.set_limiter(Limiter())
            if kind == "python":
                with pytest.raises(UsageError, match="I/O limits need --datapath native"):
                    dp.set_limiter(Limiter(Limits(iops=100)))
            else:
                dp.set_limiter(Limiter(Limits(iops=100)))
            assert dp.supports_inflight == dp.supports_dirty_log == (kind == "native")
        finally:
            dp.close()

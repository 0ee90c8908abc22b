"""Dirty logging (live migration) on an in-memory guest, through the C dataplane thread.

A small model of the log (``LogModel``) says which 4 KiB pages the device writes into:
a read's data buffers, GET_ID's serial, every status byte, and the used ring (when
SET_VRING_ADDR asked for it with VHOST_VRING_F_LOG).  With LOG_ALL on, the bits in the
log are exactly the model's pages; with it off, none.
"""

from __future__ import annotations

import os
import time

import pytest
from dirty_log_support import LogModel, Req, clear, log_bits, new_log, serve
from ringutil import IMG_SECTORS, device_memory, start_rig
from ringutil import log as test_log

from dataplane.device.datapath.factory import open_datapath
from dataplane.device.dirty_log import DirtyLog
from dataplane.device.disk import Disk
from dataplane.device.engines.delay import TestDelay
from dataplane.errors import DirtyLogTooSmall, ProtocolError
from dataplane.guest.ring import Buf, DriverRing
from dataplane.spec import blk
from dataplane.spec.dirty_log import LOG_PAGE
from dataplane.spec.ring import USED_IDX

SERIAL = b"dirty-log-test"


def mixed_requests(ram, split: int) -> list[Req]:
    return [
        Req(ram, blk.VIRTIO_BLK_T_IN, 0, 8192, split),
        Req(ram, blk.VIRTIO_BLK_T_IN, 24, 4096 + 512, split),
        Req(ram, blk.VIRTIO_BLK_T_OUT, 64, 4096, split),
        Req(ram, blk.VIRTIO_BLK_T_FLUSH, 0),
        Req(ram, blk.VIRTIO_BLK_T_GET_ID, 0, blk.VIRTIO_BLK_ID_BYTES),
    ]


@pytest.fixture
def rig_for(ram, image):
    rigs = []

    def make(num: int = 32, *, base: int = 0, engine: str = "io_uring", dp=None):
        ring = DriverRing(ram, num)
        if base:
            ring.avail_idx = ring.last_used_idx = base
            ram.write(ring.used + USED_IDX, base.to_bytes(2, "little"))
            ring.set_avail_idx(base)
        disk = Disk(IMG_SECTORS, queue_size=num, serial=SERIAL)
        rig = start_rig(ram, [ring], image[1], disk, engine=engine, base=base, dp=dp)
        rigs.append(rig)
        return rig, ring

    yield make
    for rig in rigs:
        rig.close()


def log_on(rig, log: DirtyLog, ring: DriverRing | None) -> None:
    rig.thread.set_dirty_log(log.host_addr, log.pages).result(10)
    if ring is not None:
        rig.thread.set_used_log(0, ring.used).result(10)


@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
@pytest.mark.parametrize("split", [1, 2])
def test_log_all_marks_exactly_the_pages_written(ram, rig_for, indirect, split):
    rig, ring = rig_for()
    log = new_log(ram)
    try:
        log_on(rig, log, ring)
        reqs = mixed_requests(ram, split)
        serve(ram, rig, ring, reqs, indirect=indirect)
        model = LogModel()
        for r in reqs:
            model.request(r)
        model.used_ring(ring)
        assert log_bits(log) == model.pages
        assert ram.read(reqs[-1].data_in[0].gpa, len(SERIAL)) == SERIAL
        assert rig.thread.datapath.dirty_pages() == len(model.pages)
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()


def test_bounced_reads_are_logged(ram, rig_for, tmp_path):
    """O_DIRECT with misaligned guest buffers: the data comes back through bounce memory,
    copied by the thread into the guest's pieces, and those pages are logged."""
    path = tmp_path / "direct.img"
    path.write_bytes(os.urandom(IMG_SECTORS * 512))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    disk = Disk(IMG_SECTORS, align=512, queue_size=32)
    dp = open_datapath("native", disk, "io_uring", fd, 64, range(1), test_log)
    rig, ring = rig_for(dp=dp)
    log = new_log(ram)
    try:
        log_on(rig, log, ring)
        reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, 16 * i) for i in range(3)]
        for r in reqs:  # misaligned on purpose (O_DIRECT would refuse them): they bounce
            at = ram.alloc(5120 + 3, 512) + 3
            r.data_in = [Buf(at, 2560, True), Buf(at + 2560, 2560, True)]
            r.bufs[1:1] = r.data_in
        serve(ram, rig, ring, reqs)
        model = LogModel()
        for r in reqs:
            model.request(r)
            got = b"".join(ram.read(b.gpa, b.length) for b in r.data_in)
            assert got == path.read_bytes()[r.sector * 512 : r.sector * 512 + len(got)]
        model.used_ring(ring)
        assert log_bits(log) == model.pages  # and the data is right: O_DIRECT took no
        # buffer at +3, so it came through bounce memory
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()
        os.close(fd)


def test_log_at_16_bit_index_wrap(ram, rig_for):
    rig, ring = rig_for(16, base=0xFFFD)
    log = new_log(ram)
    try:
        log_on(rig, log, ring)
        for _ in range(4):  # used->idx goes 0xfffd -> 0xffff -> ... -> 0x000b
            clear(log)
            reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, 8 * i, 4096) for i in range(3)]
            serve(ram, rig, ring, reqs)
            model = LogModel()
            for r in reqs:
                model.request(r)
            model.used_ring(ring)
            assert log_bits(log) == model.pages
        assert ring.used_idx() == (0xFFFD + 12) & 0xFFFF
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()


def test_log_off_marks_nothing(ram, rig_for):
    rig, ring = rig_for()
    log = new_log(ram)
    try:
        rig.thread.set_used_log(0, ring.used).result(10)  # F_LOG alone: LOG_ALL is off
        serve(ram, rig, ring, mixed_requests(ram, 2))
        log_on(rig, log, ring)
        rig.thread.set_dirty_log(0, 0).result(10)  # on, then off again
        serve(ram, rig, ring, mixed_requests(ram, 1))
        assert log_bits(log) == set()
        assert rig.thread.datapath.dirty_pages() == 0
    finally:
        log.close()


def test_used_ring_unlogged_without_vring_f_log(ram, rig_for):
    rig, ring = rig_for()
    log = new_log(ram)
    try:
        log_on(rig, log, None)
        reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, 0, 4096), Req(ram, blk.VIRTIO_BLK_T_OUT, 8, 512)]
        serve(ram, rig, ring, reqs)
        model = LogModel()
        for r in reqs:
            model.request(r)
        assert log_bits(log) == model.pages
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()


def test_second_log_takes_over(ram, rig_for):
    """A new SET_LOG_BASE mid-run: the thread logs into the new log only, from the switch."""
    rig, ring = rig_for()
    first, second = new_log(ram), new_log(ram, offset=4096)
    try:
        log_on(rig, first, ring)
        serve(ram, rig, ring, [Req(ram, blk.VIRTIO_BLK_T_IN, 0, 4096)])
        rig.thread.set_dirty_log(second.host_addr, second.pages).result(10)
        before = bytes(first.view)
        reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, 8, 8192)]
        serve(ram, rig, ring, reqs)
        assert bytes(first.view) == before
        model = LogModel()
        model.request(reqs[0])
        model.used_ring(ring)
        assert log_bits(second) == model.pages
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        first.close()
        second.close()


def test_page_past_the_log_breaks_the_queues_and_writes_nothing_outside(ram, rig_for):
    """The frontend's log covers only the first 2 MiB of guest RAM: a request into the rest
    breaks the queue (the frontend's error, reported to drop it) and no byte of the log's
    memfd past its end is written."""
    rig, ring = rig_for()
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    log = DirtyLog(fd, 4096, 0)
    os.close(fd)
    reported: list[str] = []
    rig.thread.datapath.on_frontend_error = reported.append
    small_pages = (ram.gpa + (2 << 20)) // LOG_PAGE  # the log "ends" here
    try:
        rig.thread.set_dirty_log(log.host_addr, small_pages).result(10)
        rig.thread.set_used_log(0, ring.used).result(10)
        ram.reset_alloc(ram.gpa + (3 << 20))  # the request's buffers lie past the log
        req = Req(ram, blk.VIRTIO_BLK_T_IN, 0, 4096)
        ring.publish([ring.add_chain(req.bufs)])
        rig.kick()
        assert rig.err_signalled(timeout=30)
        deadline = time.monotonic() + 30
        while not rig.thread.datapath.is_broken(0):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ring.used_idx() == 0  # never published
        assert all(p < small_pages for p in log_bits(log))
        assert not any(log.view[small_pages // 8 :])
        deadline = time.monotonic() + 30
        while not reported:  # reported by the thread after it broke the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "past the log" in reported[0]
        assert isinstance(rig.thread.datapath.rings[0].error, DirtyLogTooSmall)
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()


def test_stop_ring_completes_and_logs_requests_held_in_the_engine(ram, rig_for, image):
    """The switch-over: requests the test build's delay holds in the engine at
    GET_VRING_BASE (stop_ring) complete, and are logged, before the stop resolves; after
    it nothing more is written."""
    disk = Disk(IMG_SECTORS, queue_size=16, serial=SERIAL)
    dp = open_datapath(
        "native",
        disk,
        "io_uring",
        image[1],
        64,
        range(1),
        test_log,
        test_delay=TestDelay(1, 300_000),
    )
    rig, ring = rig_for(dp=dp)
    log = new_log(ram)
    try:
        log_on(rig, log, ring)
        reqs = [Req(ram, blk.VIRTIO_BLK_T_IN, 8 * i, 4096) for i in range(6)]
        ring.publish([ring.add_chain(r.bufs) for r in reqs])
        rig.kick()
        deadline = time.monotonic() + 30
        while dp.inflight(0) < len(reqs):  # every one held by the delay, none completed
            assert time.monotonic() < deadline, "requests never reached the engine"
            time.sleep(0.005)
        assert ring.used_idx() == 0
        base = rig.thread.stop_ring(0).result(30)
        assert base == len(reqs) == ring.used_idx()
        assert all(ram.read(r.status, 1) == b"\0" for r in reqs)
        model = LogModel()
        for r in reqs:
            model.request(r)
        model.used_ring(ring)
        assert log_bits(log) == model.pages
        snapshot = bytes(ram.view)
        time.sleep(0.05)  # not a timing assertion: nothing may change, however long we look
        assert bytes(ram.view) == snapshot
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        log.close()


def test_log_checks(ram, tmp_path):
    """What SET_LOG_BASE refuses before anything maps it."""
    path = tmp_path / "not-a-memfd"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ProtocolError, match="not a memfd"):
            DirtyLog(fd, 4096, 0)
    finally:
        os.close(fd)
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 8192)
        with pytest.raises(ProtocolError, match="runs past the end"):
            DirtyLog(fd, 4096, 8192)
        with pytest.raises(ProtocolError, match="runs past the end"):
            DirtyLog(fd, 1 << 62, 0)
        with pytest.raises(ProtocolError, match="0 bytes"):
            DirtyLog(fd, 0, 0)
    finally:
        os.close(fd)
    mem = device_memory(ram)
    small = new_log(ram, size=8)
    try:
        with pytest.raises(ProtocolError, match="needs"):
            small.check_covers(mem)
        new_log(ram).close()
    finally:
        small.close()
        mem.close()


def test_stat_view_shows_dirty_logging():
    from dataplane.cli.live_stats import render

    def snap(t: float, on: bool, pages: int) -> dict:
        dev = {"dirty-log": on, "dirty-pages-logged": pages, "queues": []}
        return {"time": t, "devices": {"vm1": dev, "vm2": {"queues": []}}}

    text = render(snap(0.0, True, 100), snap(2.0, True, 300))
    assert "vm1          dirty log on: 100 pages/s logged, 300 in all" in text
    assert "vm2          dirty log" not in text
    assert "dirty log off: 0 pages/s logged, 300 in all" in render(
        snap(2.0, True, 300), snap(3.0, False, 300)
    )


def test_serve_logs_while_migrating(tmp_path):
    """A frontend plays a migrating QEMU against ``serve``: requests the test build's delay
    holds in the engine at GET_VRING_BASE complete and are logged before the reply; a second
    SET_LOG_BASE takes over from the first; LOG_ALL off logs nothing more."""
    from guest_support import short_socket_dir, start_dataplane

    from dataplane import test_hooks
    from dataplane.guest.dirty_log import MigrationLog
    from dataplane.guest.virtio_blk import BlkDriver, vring_addr
    from dataplane.serve.mgmt_client import MgmtClient
    from dataplane.spec.blk import VIRTIO_BLK_T_IN
    from dataplane.vhost.messages import LogBase, ProtocolFeature

    img = tmp_path / "img"
    img.write_bytes(bytes(4 << 20))
    sock_dir = short_socket_dir()
    sock, mgmt = sock_dir / "s.sock", sock_dir / "m.sock"
    backend = start_dataplane(
        sock, img, aio="io_uring", cache="writeback", log_path=tmp_path / "serve.log",
        keys={"test-delay": "1:200000"}, extra_args=("--mgmt", str(mgmt)), env=test_hooks.ON,
    )  # fmt: skip
    d = BlkDriver(sock, ram_size=4 << 20, also=(ProtocolFeature.LOG_SHMFD,))
    ring = d.queues[0].ring
    rings = [(0, ring)]
    logs = [MigrationLog(d.ram.gpa + d.ram.size) for _ in range(2)]
    m = MgmtClient(mgmt)

    def device() -> dict:  # its stats (``devices`` cannot show a test-delay key as JSON)
        (dev,) = m.call("stats")["devices"].values()
        return dev

    def read_pages(n: int) -> set[int]:
        model = LogModel()
        for i in range(n):
            p = d.queues[0].pending[d.submit(VIRTIO_BLK_T_IN, 8 * i, read_len=4096)]
            model.wrote(p.data_gpa, p.data_len)
            model.wrote(p.status, 1)
        model.used_ring(ring)
        return model.pages

    try:
        assert device()["dirty-log"] is False
        logs[0].start(d.fe, d.features, d.ram, rings)
        assert device()["dirty-log"] is True
        expected = read_pages(4)
        deadline = time.monotonic() + 30
        while device()["queues"][0]["inflight"] < 4:
            assert time.monotonic() < deadline, "the requests never reached the engine"
            time.sleep(0.01)
        assert d.stop_queue(0) == 4  # GET_VRING_BASE: replies once all 4 completed and logged
        assert ring.used_idx() == 4
        assert logs[0].pages() == expected
        d.queues[0].pending.clear()
        ring.get_used()
        d.start_queue(0, base=4)
        d.fe.set_vring_addr(vring_addr(d.ram, 0, ring, log=True))  # as QEMU, logging
        d.fe.set_log_base(LogBase(logs[1].size, 0, logs[1].fd))  # the log grew, say
        before = logs[0].pages()
        assert d.read(64, 8192).status == 0
        assert logs[0].pages() == before
        assert logs[1].pages()  # the second log took over
        MigrationLog.stop(d.fe, d.features, d.ram, rings)
        assert device()["dirty-log"] is False and device()["dirty-pages-logged"] > 0
        before = logs[1].pages()
        assert d.read(128, 4096).status == 0
        assert logs[1].pages() == before
    finally:
        m.close()
        d.close()
        for log in logs:
            log.close()
        assert backend.stop() == 0
    assert "dirty logging on" in backend.log_text() and "dirty logging off" in backend.log_text()

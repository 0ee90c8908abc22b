"""Inflight tracking (INFLIGHT_SHMFD): the area's layout, allocation and adoption, and the
descriptor states after pop, completion and reconnect, on the in-memory ring.

The states are checked on C and on its Python model (tests/inflight_support.py);
tests/device/test_inflight_kill.py kills the backend at every store and holds the two byte for byte.
"""

from __future__ import annotations

import fcntl
import os
import struct

import pytest
from inflight_support import (
    DESC,
    HEADER,
    CInflightQueue,
    InflightModel,
    check_queue,
    desc_state,
    header,
)
from inflight_support import queue_size_bytes as model_queue_size

from dataplane.device.c import lib
from dataplane.device.inflight import REASONS, InflightArea, queue_size_bytes, region_size
from dataplane.errors import BadInflightArea, ProtocolError
from dataplane.guest.ring import Buf, DriverRing, GuestRam

NUM = 8
IMPLS = [InflightModel, CInflightQueue]


def test_layout_is_the_specs():
    assert HEADER.size == 16 and DESC.size == 16  # QueueRegionSplit header, DescStateSplit
    for n in (1, 2, 3, 128, 256, 1024, 32768):
        assert queue_size_bytes(n) == lib.dp_inflight_queue_size(n) == model_queue_size(n)
        assert queue_size_bytes(n) % 64 == 0 and queue_size_bytes(n) >= 16 + 16 * n
        assert region_size(3, n) == lib.dp_inflight_region_size(3, n) == 3 * queue_size_bytes(n)
    assert queue_size_bytes(128) == 2112  # 16 + 128 * 16 = 2064, up to 64


def test_allocate_gives_a_sealed_zeroed_memfd_like_c():
    area = InflightArea.allocate(2, 256, max_queues=4)
    cfd = lib.dp_inflight_memfd(region_size(2, 256))
    try:
        assert cfd >= 0
        assert area.mmap_size == os.fstat(area.fd).st_size == os.fstat(cfd).st_size == 8320
        assert bytes(area.view) == os.pread(cfd, 8320, 0) == bytes(8320)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        assert fcntl.fcntl(area.fd, fcntl.F_GET_SEALS) == fcntl.fcntl(cfd, fcntl.F_GET_SEALS)
        assert fcntl.fcntl(area.fd, fcntl.F_GET_SEALS) & seals == seals
        with pytest.raises(OSError):
            os.ftruncate(area.fd, 4096)  # the frontend cannot shrink it under us either
        assert area.queue_view(1).nbytes == queue_size_bytes(256)
        with pytest.raises(IndexError):
            area.queue_view(2)
    finally:
        os.close(cfd)
        area.close()


@pytest.mark.parametrize(
    ("num_queues", "queue_size", "why"),
    [(0, 128, "0 queues"), (5, 128, "5 queues"), (1, 0, "0 entries"), (1, 32769, "32769")],
)
def test_allocate_refuses_a_description_the_device_cannot_have(num_queues, queue_size, why):
    with pytest.raises(ProtocolError, match=why):
        InflightArea.allocate(num_queues, queue_size, max_queues=4)


def _kept_area(num_queues=2, queue_size=NUM, *, extra=0, offset=0):
    """An area as QEMU keeps it across our death: a memfd it may have written anything into."""
    fd = os.memfd_create("kept-inflight")
    os.ftruncate(fd, offset + region_size(num_queues, queue_size) + extra)
    return fd


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_adopt_maps_the_area_at_its_offset_and_reads_the_record():
    fd = _kept_area(offset=8192 + 64)
    qsize = queue_size_bytes(NUM)
    os.pwrite(fd, HEADER.pack(0, 1, NUM, 3, 7), 8192 + 64 + qsize)  # queue 1, recorded
    area = InflightArea.adopt(fd, region_size(2, NUM), 8192 + 64, 2, NUM, max_queues=2)
    try:
        assert header(area.queue_view(1)) == (0, 1, NUM, 3, 7)
        assert header(area.queue_view(0)) == (0, 0, 0, 0, 0)
    finally:
        area.close()
    assert not _is_open(fd)


@pytest.mark.parametrize(
    ("mmap_size", "fd_extra", "queue1", "why"),
    [
        (region_size(2, NUM) - 1, 0, None, "smaller than"),
        (region_size(2, NUM), -1, None, "bytes of its fd"),
        (region_size(2, NUM), 0, HEADER.pack(0, 2, NUM, 0, 0), "queue 1: .*version"),
        (region_size(2, NUM), 0, HEADER.pack(0, 1, NUM * 2, 0, 0), "queue 1: .*desc_num"),
        (region_size(2, NUM), 0, HEADER.pack(1, 1, NUM, 0, 0), "queue 1: .*feature flags"),
    ],
)
def test_adopt_refuses_an_area_we_cannot_have_sized_and_closes_its_fd(
    mmap_size, fd_extra, queue1, why
):
    fd = _kept_area(extra=fd_extra)
    if queue1 is not None:
        os.pwrite(fd, queue1, queue_size_bytes(NUM))
    with pytest.raises(ProtocolError, match=why):
        InflightArea.adopt(fd, mmap_size, 0, 2, NUM, max_queues=2)
    assert not _is_open(fd)


def test_adopt_refuses_an_offset_past_the_fd_and_a_queue_count_past_the_device():
    fd = _kept_area()
    with pytest.raises(ProtocolError, match="bytes of its fd"):
        InflightArea.adopt(fd, region_size(2, NUM), 1 << 63, 2, NUM, max_queues=2)
    fd = _kept_area()
    with pytest.raises(ProtocolError, match="3 queues"):
        InflightArea.adopt(fd, region_size(3, NUM), 0, 3, NUM, max_queues=2)
    assert not _is_open(fd)


def test_check_queue_matches_c_on_every_kind_of_header():
    buf = bytearray(queue_size_bytes(NUM))
    view = memoryview(buf)
    from dataplane.device.c import ffi

    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))
    for hdr in [(0, 0, 0, 0, 0), (0, 0, 99, 5, 5), (0, 1, NUM, 0, 0), (0, 1, 4, 0, 0),
                (0, 3, NUM, 0, 0), (1 << 63, 1, NUM, 0, 0)]:  # fmt: skip
        HEADER.pack_into(buf, 0, *hdr)
        assert check_queue(view, NUM) == -lib.dp_inflight_check(addr, NUM)
    assert check_queue(view, NUM) == lib.DP_INFLIGHT_EFEATURES


# -- the descriptor states on the in-memory ring -------------------------------------------


class Ring:
    """A driver ring and the device side of it, tracked in an inflight area."""

    def __init__(self, impl, ram: GuestRam, area: bytearray | None = None):
        self.ram = ram
        self.drv = DriverRing(ram, NUM)
        self.area = area if area is not None else bytearray(queue_size_bytes(NUM))
        self.q = impl(memoryview(self.area), NUM)
        self.used_idx = 0  # the device's, up to what it published

    def submit(self, n):
        heads = [self.drv.add_chain([Buf(self.ram.alloc(16), 16)]) for _ in range(n)]
        self.drv.publish(heads)
        return heads

    def pop(self, heads):
        for h in heads:
            self.q.get(h)

    def complete(self, heads, *, publish=True, record=True):
        """add_used + pre_put per head, then used->idx, then post_put (each step optional)."""
        for h in heads:
            self.q.pre_put(h)
        if publish:
            self.used_idx = (self.used_idx + len(heads)) & 0xFFFF
            self.drv.ram.write(self.drv.used + 2, struct.pack("<H", self.used_idx))
        if publish and record:
            self.q.post_put(self.used_idx)

    def reconnect(self, impl):
        """The backend died: a new one adopts the same bytes and recovers against used->idx."""
        self.q = impl(memoryview(self.area), NUM)
        return self.q.recover(self.drv.used_idx(), NUM)

    def flags(self):
        return [desc_state(self.area, h)[0] for h in range(NUM)]


@pytest.fixture
def ram():
    r = GuestRam(1 << 16)
    yield r
    r.close()


@pytest.fixture(params=IMPLS, ids=["model", "c"])
def impl(request):
    return request.param


def started(impl, ram):
    ring = Ring(impl, ram)
    rec = ring.q.recover(0, NUM)
    assert rec.fresh and rec.heads == ()
    assert header(ring.area) == (0, 1, NUM, 0, 0)
    return ring


def test_a_fresh_area_is_initialised_at_the_first_start(impl, ram):
    ring = Ring(impl, ram)
    ring.area[16:] = b"\xaa" * (len(ring.area) - 16)  # whatever the memfd held: desc[] is zeroed
    rec = ring.q.recover(5, NUM)
    assert rec.fresh and rec.used_idx == 5
    assert header(ring.area) == (0, 1, NUM, 0, 5)
    assert all(desc_state(ring.area, h) == (0, 0, 0) for h in range(NUM))


def test_pop_marks_heads_in_flight_in_counter_order(impl, ram):
    ring = started(impl, ram)
    heads = ring.submit(3)
    ring.pop(heads)
    assert [desc_state(ring.area, h) for h in heads] == [(1, 0, 0), (1, 0, 1), (1, 0, 2)]
    assert ring.q.counter == 3


def test_completion_links_the_batch_then_clears_it_after_used_idx(impl, ram):
    ring = started(impl, ram)
    a, b, c = ring.submit(3)
    ring.pop([a, b, c])
    ring.complete([c, a], publish=False)
    # Linked (c.next = old last_batch_head 0, a.next = c), still in flight: not yet published.
    assert desc_state(ring.area, c)[:2] == (1, 0) and desc_state(ring.area, a)[:2] == (1, c)
    assert header(ring.area)[3:] == (a, 0)
    ring.used_idx = 2
    ring.drv.ram.write(ring.drv.used + 2, struct.pack("<H", 2))
    ring.q.post_put(2)
    assert ring.flags()[a] == ring.flags()[c] == 0 and ring.flags()[b] == 1
    assert header(ring.area)[3:] == (a, 2)


def test_reconnect_resubmits_what_is_in_flight_in_pop_order(impl, ram):
    ring = started(impl, ram)
    heads = ring.submit(5)
    ring.pop(heads)
    ring.complete([heads[3], heads[0]])  # out of order: 1, 2 and 4 still in flight
    rec = ring.reconnect(impl)
    assert not rec.fresh and rec.batch_cleared == 0
    assert rec.heads == (heads[1], heads[2], heads[4])
    assert (rec.used_idx, rec.last_avail_idx) == (2, 5)
    assert ring.q.counter == 5  # new pops come after the resubmitted ones


def test_kill_between_completion_and_used_idx_publication(impl, ram):
    """The batch was linked but the guest never saw it: its heads are resubmitted."""
    ring = started(impl, ram)
    heads = ring.submit(3)
    ring.pop(heads)
    ring.complete([heads[2], heads[1]], publish=False)
    rec = ring.reconnect(impl)
    assert rec.batch_cleared == 0 and rec.heads == tuple(heads)
    assert (rec.used_idx, rec.last_avail_idx) == (0, 3)


def test_kill_between_used_idx_publication_and_its_record(impl, ram):
    """used_idx in the area lags used->idx: the last batch completed and must not rerun."""
    ring = started(impl, ram)
    heads = ring.submit(4)
    ring.pop(heads)
    ring.complete([heads[0]])
    ring.complete([heads[3], heads[1]], record=False)
    assert header(ring.area)[4] == 1 and ring.drv.used_idx() == 3
    rec = ring.reconnect(impl)
    assert rec.batch_cleared == 2 and rec.heads == (heads[2],)
    assert (rec.used_idx, rec.last_avail_idx) == (3, 4)
    assert header(ring.area)[4] == 3 and ring.flags() == [int(h == heads[2]) for h in range(NUM)]


def test_reconnect_across_the_16_bit_wrap(impl, ram):
    ring = Ring(impl, ram)
    ring.drv.ram.write(ring.drv.used + 2, struct.pack("<H", 0xFFFE))
    ring.used_idx = 0xFFFE
    ring.q.recover(0xFFFE, NUM)
    heads = ring.submit(4)
    ring.pop(heads)
    ring.complete(heads[1:3], record=False)  # used->idx wraps to 0
    rec = ring.reconnect(impl)
    assert rec.batch_cleared == 2 and rec.heads == (heads[0], heads[3])
    assert (rec.used_idx, rec.last_avail_idx) == (0, 2)


def _recorded(**fields):
    area = bytearray(queue_size_bytes(NUM))
    HEADER.pack_into(area, 0, 0, 1, NUM, fields.get("last", 0), fields.get("used", 0))
    for h, (flag, nxt, counter) in fields.get("desc", {}).items():
        DESC.pack_into(area, 16 + 16 * h, flag, nxt, counter)
    return area


@pytest.mark.parametrize(
    ("area", "used_idx", "num", "code"),
    [
        (_recorded(used=0), NUM + 1, NUM, lib.DP_INFLIGHT_EBATCH),
        (_recorded(used=0, last=NUM), 1, NUM, lib.DP_INFLIGHT_ELINK),
        (_recorded(used=0, last=1, desc={1: (1, 200, 0)}), 2, NUM, lib.DP_INFLIGHT_ELINK),
        (_recorded(desc={2: (2, 0, 0)}), 0, NUM, lib.DP_INFLIGHT_EFLAG),
        (_recorded(desc={6: (1, 0, 0)}), 0, 4, lib.DP_INFLIGHT_EHEAD),
        (_recorded(), 0, NUM * 2, lib.DP_INFLIGHT_ESIZE),
    ],
    ids=["batch-too-long", "last-head-outside", "next-outside", "flag-2", "head-past-ring", "size"],
)
def test_recovery_refuses_a_record_we_cannot_have_written(impl, area, used_idx, num, code):
    q = impl(memoryview(area), NUM)
    with pytest.raises(BadInflightArea, match=REASONS[code]):
        q.recover(used_idx, num)


def test_recovery_refuses_a_version_and_desc_num_it_does_not_know(impl):
    for hdr, code in [((0, 9, NUM, 0, 0), lib.DP_INFLIGHT_EVERSION),
                      ((0, 1, 4, 0, 0), lib.DP_INFLIGHT_EDESCNUM)]:  # fmt: skip
        area = bytearray(queue_size_bytes(NUM))
        HEADER.pack_into(area, 0, *hdr)
        with pytest.raises(BadInflightArea, match=REASONS[code]):
            impl(memoryview(area), NUM).recover(0, NUM)


def test_a_hostile_counter_orders_resubmission_and_nothing_else(impl):
    area = _recorded(desc={0: (1, 0, 1 << 63), 3: (1, 0, 5), 5: (1, 0, 5)})
    q = impl(memoryview(area), NUM)
    rec = q.recover(0, NUM)
    assert rec.heads == (3, 5, 0) and rec.last_avail_idx == 3

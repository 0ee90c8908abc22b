"""A backend dies with requests in flight behind completed ones; the next one recovers.

The C datapath (the Python reference tracks no inflight area), driven from the test
thread: the first life runs with test-delay (every
second completion held back), so that when it is dropped, requests are in flight
behind later ones that completed.  The second life starts the ring as QEMU restarts
it after a backend died (SET_VRING_BASE rewound to used->idx, SET_INFLIGHT_FD with the
same area): the requests left in flight run first, in their pop order, then the new
ones; no completed request runs again and none is lost.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from ringutil import IMG_SECTORS, device_memory

from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.disk import Disk
from dataplane.device.engines.delay import TestDelay
from dataplane.device.inflight import InflightArea
from dataplane.guest.ring import Buf, DriverRing
from dataplane.spec.blk import VIRTIO_BLK_T_OUT

log = logging.getLogger("test-inflight-reconnect")
NUM = 16
HDR = struct.Struct("<IIQ")
HANG = 10.0  # seconds: only ends a hang
HELD = TestDelay(2, 30_000_000)  # every 2nd completion, held longer than the first life


def start(dp: Datapath, ram, ring: DriverRing, area: InflightArea, fds: list[int]) -> None:
    setup = RingSetup(
        index=0, num=NUM, desc_uva=ram.uva_of(ring.desc), avail_uva=ram.uva_of(ring.avail),
        used_uva=ram.uva_of(ring.used), last_avail_idx=ring.used_idx(),  # QEMU's rewind
        kick_fd=os.dup(fds[0]), call_fd=os.dup(fds[1]), err_fd=os.dup(fds[2]),
        event_idx=False, indirect=True,
        inflight_addr=area.queue_addr(0), inflight_desc_num=area.queue_size,
    )  # fmt: skip
    dp.start_ring(setup)


def run_until(dp: Datapath, done) -> None:
    deadline = time.monotonic() + HANG
    while not done():
        assert time.monotonic() < deadline, "the datapath made no progress"
        dp.run(0.02)


def publish_writes(ram, ring: DriverRing, first: int, n: int) -> list[int]:
    heads = []
    for i in range(first, first + n):
        hdr, data, status = ram.alloc(16), ram.alloc(512, 512), ram.alloc(1, 1)
        ram.write(hdr, HDR.pack(VIRTIO_BLK_T_OUT, 0, 8 * i))
        ram.write(data, bytes([i + 1]) * 512)
        heads.append(
            ring.add_chain([Buf(hdr, 16), Buf(data, 512), Buf(status, 1, True)], indirect=True)
        )
    ring.publish(heads)
    return heads


def test_requests_in_flight_at_death_run_first_and_exactly_once(ram, image):
    path, fd = image
    disk = Disk(IMG_SECTORS, queue_size=NUM)
    ring = DriverRing(ram, NUM)
    area = InflightArea.allocate(1, NUM, max_queues=1)
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
    mem = device_memory(ram)
    try:
        first = open_datapath("native", disk, "threads", fd, 64, [0], log, test_delay=HELD)
        first.set_memory(mem)
        start(first, ram, ring, area, fds)
        heads = publish_writes(ram, ring, 0, 8)
        run_until(first, lambda: ring.used_idx() == 4)
        done_first = [h for h, _ in ring.get_used()]
        left = [h for h in heads if h not in done_first]
        assert len(left) == 4 and done_first != heads[:4]  # some completed behind held ones
        first.close()  # the backend dies: the held requests never complete in this life

        second = open_datapath("native", disk, "null", fd, 64, [0], log)
        second.set_memory(mem)
        start(second, ram, ring, area, fds)
        new = publish_writes(ram, ring, 8, 2)
        run_until(second, lambda: ring.used_idx() == 10)
        done_second = [h for h, _ in ring.get_used()]
        # Resubmitted in their pop order (the guest's), before anything new is popped.
        assert done_second == left + new
        assert sorted(done_first + done_second) == sorted(heads + new)
        assert second.last_avail_idx(0) == 10
        second.detach_ring(0)
        second.close()
        flags = bytes(area.view)[16 : 16 + 16 * NUM : 16]
        assert flags == bytes(NUM)  # nothing left in flight
    finally:
        mem.close()
        area.close()
        for f in fds:
            os.close(f)
    img = path.read_bytes()
    for i in range(8):  # the null engine wrote nothing: the first life's writes all landed
        assert img[8 * i * 512 : 8 * i * 512 + 512] == bytes([i + 1]) * 512

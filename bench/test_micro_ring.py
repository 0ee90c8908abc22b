"""pytest-benchmark micro-benchmarks: per-request cost of pop + complete, C against Python.

Run with ``.venv/bin/pytest bench/test_micro_ring.py --benchmark-only`` (not part of the test
suite; nothing here asserts a speed, but every round must complete every request it
published, with status OK, or the test fails).

Each round publishes ``batch`` 512-byte reads on one ring and runs the datapath, in the calling
thread, until all of them are complete: pop, chain walk, parse, submit to the null engine
(which zeroes the buffer), reap, status byte, used ring, notify decision, one call eventfd
write.  The round's time divided by ``batch`` is the per-request cost; ``extra_info`` carries
it as ``ns_per_request``.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile

import pytest

from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.disk import Disk
from dataplane.device.memory import GuestMemory, MemoryRegion
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec.blk import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN

SECTORS = 2048
log = logging.getLogger("dataplane.guest.bench.micro")


class Rig:
    """One ring of ``num`` entries with ``batch`` read chains, re-published every round."""

    def __init__(self, kind: str, num: int, batch: int, indirect: bool) -> None:
        self.ram = GuestRam(8 << 20)
        self.ring = DriverRing(self.ram, num, event_idx=True)
        fd, self.image = tempfile.mkstemp(prefix="dp-micro-", suffix=".img")
        os.ftruncate(fd, SECTORS * 512)
        self.image_fd = fd
        disk = Disk(SECTORS, queue_size=num)
        self.dp: Datapath = open_datapath(kind, disk, "null", fd, num, [0], log)
        self.mem = GuestMemory([MemoryRegion.from_buffer(self.ram.spec, self.ram.map)])
        self.dp.set_memory(self.mem)
        self.heads = []
        self.statuses = []
        self.published = 0  # requests published over all rounds; all must complete
        for i in range(batch):
            hdr = self.ram.alloc(16)
            self.ram.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, i))
            bufs = [Buf(hdr, 16), Buf(self.ram.alloc(512, 512), 512, True)]
            self.statuses.append(self.ram.alloc(1, 1))
            bufs.append(Buf(self.statuses[-1], 1, True))
            self.heads.append(self.ring.add_chain(bufs, indirect=indirect))
        self.kick, self.call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        self.dp.start_ring(
            RingSetup(0, num, self.ram.uva_of(self.ring.desc), self.ram.uva_of(self.ring.avail),
                      self.ram.uva_of(self.ring.used), 0, os.dup(self.kick), os.dup(self.call),
                      None, event_idx=True, indirect=indirect)
        )  # fmt: skip
        self.settle()

    def publish(self) -> None:
        """The guest's part, outside the timing: the last round's completions checked, then
        new avail entries and a kick."""
        self.check_completed()
        for status in self.statuses:
            self.ram.write(status, b"\xff")
        self.ring.publish(self.heads)
        self.published += len(self.heads)
        self.ring.set_used_event(self.ring.avail_idx - 1)  # one interrupt per batch
        os.eventfd_write(self.kick, 1)

    def check_completed(self) -> None:
        """Every request published so far completed (used->idx), each round's with OK."""
        assert self.ring.used_idx() == self.published & 0xFFFF, (
            f"{self.dp.kind}: {self.ring.used_idx()} of {self.published} requests completed"
        )
        if self.published:
            assert all(self.ram.read(s, 1) == bytes([VIRTIO_BLK_S_OK]) for s in self.statuses)

    def settle(self) -> None:
        self.dp.run(0)
        while self.dp.busy():
            self.dp.run(0)

    def close(self) -> None:
        self.dp.detach_ring(0)
        self.dp.close()
        self.mem.close()
        self.ram.close()
        for fd in (self.kick, self.call, self.image_fd):
            os.close(fd)
        os.unlink(self.image)


def record_ns_per_request(benchmark, batch: int) -> None:
    # No stats where benchmarking is off (--benchmark-disable, or pytest-xdist's workers):
    # then the body ran once, as a test.
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_request"] = round(benchmark.stats.stats.mean * 1e9 / batch)


@pytest.mark.parametrize("batch", [1, 32, 64])
@pytest.mark.parametrize("kind", ["native", "python"])
def test_pop_complete_null(benchmark, kind: str, batch: int) -> None:
    rig = Rig(kind, 256, batch, indirect=False)
    try:
        benchmark.pedantic(rig.settle, setup=rig.publish, rounds=300, warmup_rounds=20)
        rig.check_completed()
        assert rig.published >= batch
        benchmark.extra_info["batch"] = batch
        record_ns_per_request(benchmark, batch)
    finally:
        rig.close()


@pytest.mark.parametrize("kind", ["native", "python"])
def test_pop_complete_null_indirect(benchmark, kind: str) -> None:
    """The same with every chain behind an indirect table, as Linux guests send them."""
    rig = Rig(kind, 256, 128, indirect=True)
    try:
        benchmark.pedantic(rig.settle, setup=rig.publish, rounds=300, warmup_rounds=20)
        rig.check_completed()
        assert rig.published >= 128
        record_ns_per_request(benchmark, 128)
    finally:
        rig.close()

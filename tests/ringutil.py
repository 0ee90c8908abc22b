"""Shared helpers for ring-level tests: RAM snapshots and an in-process dataplane thread."""

from __future__ import annotations

import logging
import os
import select
from dataclasses import dataclass

from waits import WAIT_S

from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.disk import Disk
from dataplane.device.engines.delay import TestDelay
from dataplane.device.instrument import Instruments
from dataplane.device.iothread import IoThread
from dataplane.device.memory import GuestMemory, MemoryRegion
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec import blk

log = logging.getLogger("dataplane.test")

IMG_SECTORS = 2048  # the image of the `image` fixture (conftest.py)


def device_memory(ram: GuestRam) -> GuestMemory:
    """The device's view of the guest's RAM, over the test's own mapping (in-process tests)."""
    return GuestMemory([MemoryRegion.from_buffer(ram.spec, ram.map)])


def changed_ranges(before: bytes, after: bytes) -> list[tuple[int, int]]:
    """Byte ranges [start, end) where two snapshots differ."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(before)
    while i < n:
        if before[i] != after[i]:
            j = i
            while j < n and before[j] != after[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def assert_writes_within(ram: GuestRam, before: bytes, allowed: list[tuple[int, int]]) -> None:
    """Every byte that changed lies inside the ``allowed`` (gpa, length) ranges."""
    after = bytes(ram.view)
    union = _merge([(a, a + n) for a, n in allowed])
    for start, end in changed_ranges(before, after):
        gpa_s, gpa_e = ram.gpa + start, ram.gpa + end
        assert any(a <= gpa_s and gpa_e <= b for a, b in union), (
            f"device wrote guest RAM at {gpa_s:#x}..{gpa_e:#x}, outside device-writable buffers"
        )


def used_ring_range(ring: DriverRing) -> tuple[int, int]:
    return ring.used, 4 + 8 * ring.num + 2


@dataclass
class ThreadRig:
    """An IoThread over real eventfds, a real engine and a real image file, on either datapath."""

    thread: IoThread
    ram: GuestRam
    mem: GuestMemory
    kicks: list[int]
    calls: list[int]
    errs: list[int]

    def kick(self, q: int = 0) -> None:
        os.eventfd_write(self.kicks[q], 1)

    def wait_call(self, q: int = 0, timeout: float = WAIT_S) -> bool:
        r, _, _ = select.select([self.calls[q]], [], [], timeout)
        if r:
            os.eventfd_read(self.calls[q])
        return bool(r)

    def err_signalled(self, q: int = 0, timeout: float = WAIT_S) -> bool:
        r, _, _ = select.select([self.errs[q]], [], [], timeout)
        return bool(r)

    def close(self) -> None:
        self.thread.shutdown()
        self.mem.close()
        for fd in self.kicks + self.calls + self.errs:
            os.close(fd)


def start_rig(
    ram: GuestRam,
    rings: list[DriverRing],
    image_fd: int,
    disk: Disk,
    *,
    engine: str = "threads",
    datapath: str = "native",
    event_idx: bool = False,
    indirect: bool = True,
    poll_us: int = 0,
    instruments: Instruments | None = None,
    mem: GuestMemory | None = None,
    dp: Datapath | None = None,
    test_delay: TestDelay | None = None,
    base: int = 0,
) -> ThreadRig:
    """A thread serving ``rings``; ``dp`` is a datapath built by the caller (then the
    engine, datapath and image arguments are unused), else one is opened on ``image_fd``.
    ``mem``: the device's view of ``ram`` (default: over the test's own mapping).
    ``base``: every ring's last_avail_idx (and the used->idx it finds: set it first)."""
    if dp is None:
        dp = open_datapath(
            datapath, disk, engine, image_fd, 4 * disk.queue_size, range(len(rings)), log,
            poll_us=poll_us, instruments=instruments, test_delay=test_delay,
        )  # fmt: skip
    thread = IoThread("dp/test/0", dp, log)
    thread.start()
    mem = device_memory(ram) if mem is None else mem
    thread.set_memory(mem).result(WAIT_S)
    kicks, calls, errs = [], [], []
    for i, r in enumerate(rings):
        k, c, e = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3))
        kicks.append(k)
        calls.append(c)
        errs.append(e)
        setup = RingSetup(
            index=i,
            num=r.num,
            desc_uva=ram.uva_of(r.desc),
            avail_uva=ram.uva_of(r.avail),
            used_uva=ram.uva_of(r.used),
            last_avail_idx=base,
            kick_fd=os.dup(k),
            call_fd=os.dup(c),
            err_fd=os.dup(e),
            event_idx=event_idx,
            indirect=indirect,
        )
        thread.start_ring(setup).result(WAIT_S)
    return ThreadRig(thread, ram, mem, kicks, calls, errs)


class Req:
    """A request laid out in guest RAM, remembered so the test can check it."""

    def __init__(self, ram, rtype, sector, *, data=b"", read_len=0, split=1):
        self.hdr = ram.alloc(16)
        ram.write(self.hdr, blk.HEADER.pack(rtype, 0, sector))
        self.bufs = [Buf(self.hdr, 16)]
        if data:
            self.out = ram.alloc(len(data), 512)
            ram.write(self.out, data)
            step = len(data) // split
            self.bufs += [Buf(self.out + i * step, step) for i in range(split)]
        self.read_len = read_len
        if read_len:
            self.inp = ram.alloc(read_len, 512)
            step = read_len // split
            self.bufs += [Buf(self.inp + i * step, step, True) for i in range(split)]
        self.status = ram.alloc(1, 1)
        ram.write(self.status, b"\xee")
        self.bufs.append(Buf(self.status, 1, True))

    def writable(self):
        return [(b.gpa, b.length) for b in self.bufs if b.writable]


def run(ram, rig_ring, rig, reqs, *, indirect=False, q=0, check_writes=False):
    """Publish ``reqs``, kick, and return each one's used length.

    With ``check_writes``, also assert the device wrote only into the
    requests' device-writable buffers and the used ring.
    """
    heads = [rig_ring.add_chain(r.bufs, indirect=indirect) for r in reqs]
    rig_ring.publish(heads)
    before = bytes(ram.view)
    rig.kick(q)
    got = []
    while len(got) < len(reqs):
        assert rig.wait_call(q), "no completion signalled"
        got += rig_ring.get_used()
    by_head = dict(got)
    if check_writes:
        allowed = [w for r in reqs for w in r.writable()] + [used_ring_range(rig_ring)]
        assert_writes_within(ram, before, allowed)
    return [by_head[h] for h in heads]

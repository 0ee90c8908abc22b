"""A model of the dirty log and requests that remember what the device writes (the dirty-log
tests of the C thread and of the NBD engine)."""

from __future__ import annotations

import os
import time

from dataplane.device.dirty_log import DirtyLog
from dataplane.guest.ring import Buf, DriverRing
from dataplane.spec import blk
from dataplane.spec.dirty_log import LOG_PAGE, log_bytes_for, logged_pages
from dataplane.spec.ring import avail_event_offset


def pages(gpa: int, n: int) -> set[int]:
    return set(range(gpa // LOG_PAGE, (gpa + n - 1) // LOG_PAGE + 1)) if n else set()


class LogModel:
    """The pages a correct device logs: what it writes, and nothing else."""

    def __init__(self) -> None:
        self.pages: set[int] = set()

    def wrote(self, gpa: int, n: int) -> None:
        self.pages |= pages(gpa, n)

    def request(self, req: Req) -> None:
        for b in req.data_in:
            self.wrote(b.gpa, b.length)
        self.wrote(req.status, 1)

    def used_ring(self, ring: DriverRing) -> None:
        self.wrote(ring.used, avail_event_offset(ring.num) + (2 if ring.event_idx else 0))


class Req:
    """One request in guest RAM; ``data_in``: the device-writable buffers before the status."""

    def __init__(self, ram, rtype: int, sector: int, n: int = 0, split: int = 1) -> None:
        self.rtype = rtype
        self.sector = sector
        hdr = ram.alloc(16)
        ram.write(hdr, blk.HEADER.pack(rtype, 0, sector))
        self.bufs = [Buf(hdr, 16)]
        self.data_in: list[Buf] = []
        if n:
            data = ram.alloc(n, 512)
            step = n // split
            pieces = [
                Buf(data + i * step, step, rtype != blk.VIRTIO_BLK_T_OUT) for i in range(split)
            ]
            self.bufs += pieces
            if rtype != blk.VIRTIO_BLK_T_OUT:
                self.data_in = pieces
        self.status = ram.alloc(1, 1)
        self.bufs.append(Buf(self.status, 1, True))


def new_log(ram, *, size: int | None = None, offset: int = 0) -> DirtyLog:
    """A zeroed log in a memfd, sized for ``ram`` as QEMU sizes it (or ``size`` bytes)."""
    size = log_bytes_for(ram.gpa + ram.size) if size is None else size
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, offset + size)
        return DirtyLog(fd, size, offset)
    finally:
        os.close(fd)


def log_bits(log: DirtyLog) -> set[int]:
    return logged_pages(log.view)


def clear(log: DirtyLog) -> None:
    log.view[:] = bytes(len(log.view))


def serve(ram, rig, ring, reqs, *, indirect: bool = False) -> None:
    """Publish ``reqs``, kick, and wait until all are used."""
    heads = [ring.add_chain(r.bufs, indirect=indirect) for r in reqs]
    ring.publish(heads)
    rig.kick()
    got: list = []
    deadline = time.monotonic() + 30
    while len(got) < len(reqs):
        assert time.monotonic() < deadline, "requests not completed"
        rig.wait_call(timeout=1.0)
        got += ring.get_used()

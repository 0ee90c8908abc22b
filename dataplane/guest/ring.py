"""The driver side of a split virtqueue: what a guest's virtio driver does.

Shared by the unit tests, the fuzzers/differential tests and the ring-replay
benchmark.  ``GuestRam`` is a block of shared memory (a memfd, so it can be
handed to a backend over vhost-user) with a bump allocator; ``DriverRing``
lays out one split ring in it, publishes chains and harvests used entries.
It can also write deliberately hostile rings: every field is reachable.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.device.memory import GuestMemory, MemoryRegion, RegionSpec
from dataplane.device.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingAddrs,
    avail_ring_size,
    desc_table_size,
    used_ring_size,
    vring_need_event,
)

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class GuestRam:
    """Shared guest RAM backed by a memfd, at guest-physical ``gpa``.

    ``uva`` is the address the frontend claims for it in SET_MEM_TABLE (any
    value works; the backend only translates with it).
    """

    def __init__(self, size: int, *, gpa: int = 0x100000, uva: int = 0x7F0000000000) -> None:
        self.size = size
        self.gpa = gpa
        self.uva = uva
        self.fd = os.memfd_create("dataplane-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self._next = 0

    @property
    def spec(self) -> RegionSpec:
        return RegionSpec(self.gpa, self.size, self.uva, 0)

    def memory(self) -> GuestMemory:
        """A device-side view of this RAM (for in-process tests)."""
        return GuestMemory([MemoryRegion.from_buffer(self.spec, self.map)])

    def alloc(self, n: int, align: int = 16) -> int:
        """Reserve ``n`` bytes; return their guest-physical address."""
        start = (self._next + align - 1) // align * align
        if start + n > self.size:
            raise MemoryError(f"guest RAM exhausted ({self.size} bytes)")
        self._next = start + n
        return self.gpa + start

    def reset_alloc(self, to: int) -> None:
        self._next = to - self.gpa

    def off(self, gpa: int) -> int:
        return gpa - self.gpa

    def write(self, gpa: int, data: bytes) -> None:
        o = self.off(gpa)
        self.view[o : o + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        o = self.off(gpa)
        return bytes(self.view[o : o + n])

    def uva_of(self, gpa: int) -> int:
        return self.uva + self.off(gpa)

    def close(self) -> None:
        self.view.release()
        self.map.close()
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Buf:
    """One buffer of a chain: guest address, length, device-writable or not."""

    gpa: int
    length: int
    writable: bool = False


class DriverRing:
    """One split ring, driver side, in ``ram``."""

    def __init__(self, ram: GuestRam, num: int, *, event_idx: bool = False) -> None:
        self.ram = ram
        self.num = num
        self.event_idx = event_idx
        self.desc = ram.alloc(desc_table_size(num), 16)
        self.avail = ram.alloc(avail_ring_size(num), 2)
        self.used = ram.alloc(used_ring_size(num), 4)
        self.avail_idx = 0
        self.last_used_idx = 0
        self.free = list(range(num))
        self._chains: dict[int, list[int]] = {}  # head -> descriptor ids it holds

    @property
    def addrs(self) -> RingAddrs:
        return RingAddrs(self.desc, self.avail, self.used)

    # -- raw writes (also for hostile rings) ----------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        self.ram.write(self.desc + 16 * i, _DESC.pack(addr, length, flags, nxt))

    def publish(self, heads: Sequence[int]) -> None:
        """Put ``heads`` in the avail ring and bump avail->idx (the release store)."""
        for h in heads:
            slot = self.avail + 4 + 2 * (self.avail_idx % self.num)
            self.ram.write(slot, _U16.pack(h))
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.ram.write(self.avail + 2, _U16.pack(idx & 0xFFFF))

    def set_avail_flags(self, flags: int) -> None:
        self.ram.write(self.avail, _U16.pack(flags))

    def set_used_event(self, idx: int) -> None:
        self.ram.write(self.avail + 4 + 2 * self.num, _U16.pack(idx & 0xFFFF))

    # -- chains ---------------------------------------------------------------

    def add_chain(self, bufs: Sequence[Buf], *, indirect: bool = False) -> int:
        """Write a chain (direct, or via one indirect table) and return its head."""
        if indirect:
            table = self.ram.alloc(16 * len(bufs), 16)
            for i, b in enumerate(bufs):
                flags = (VRING_DESC_F_WRITE if b.writable else 0) | (
                    VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0
                )
                self.ram.write(table + 16 * i, _DESC.pack(b.gpa, b.length, flags, i + 1))
            head = self.free.pop(0)
            self.write_desc(head, table, 16 * len(bufs), VRING_DESC_F_INDIRECT)
            return head
        if len(bufs) > len(self.free):
            raise RuntimeError("ring full")
        ids = [self.free.pop(0) for _ in bufs]
        for k, (i, b) in enumerate(zip(ids, bufs, strict=True)):
            last = k + 1 == len(bufs)
            flags = (VRING_DESC_F_WRITE if b.writable else 0) | (0 if last else VRING_DESC_F_NEXT)
            self.write_desc(i, b.gpa, b.length, flags, 0 if last else ids[k + 1])
        self._chains[ids[0]] = ids
        return ids[0]

    # -- used side --------------------------------------------------------------

    def used_idx(self) -> int:
        return _U16.unpack(self.ram.read(self.used + 2, 2))[0]

    def used_flags(self) -> int:
        return _U16.unpack(self.ram.read(self.used, 2))[0]

    def avail_event(self) -> int:
        return _U16.unpack(self.ram.read(self.used + 4 + 8 * self.num, 2))[0]

    def get_used(self) -> list[tuple[int, int]]:
        """Harvest new used elements as (id, len), and free their descriptors."""
        out = []
        end = self.used_idx()
        while self.last_used_idx != end:
            slot = self.used + 4 + 8 * (self.last_used_idx % self.num)
            head, length = _USED_ELEM.unpack(self.ram.read(slot, 8))
            out.append((head, length))
            self.free.extend(self._chains.pop(head, [head]))
            self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        return out

    def needs_kick(self, old_avail: int) -> bool:
        """Whether the device asked to be kicked for entries published since ``old_avail``."""
        if self.event_idx:
            return vring_need_event(self.avail_event(), self.avail_idx, old_avail)
        return not self.used_flags() & 1

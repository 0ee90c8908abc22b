"""The driver side of a split virtqueue: what a guest's virtio driver does.

Shared by the unit tests, the fuzzers/differential tests and the ring-replay
benchmark.  ``GuestRam`` is a block of shared memory (a memfd, so it can be
handed to a backend over vhost-user) with a bump allocator; ``DriverRing``
lays out one split ring in it, publishes chains and harvests used entries.
It can also write deliberately hostile rings: every field is reachable.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.spec.ring import (
    AVAIL_FLAGS,
    AVAIL_IDX,
    DESC,
    DESC_SIZE,
    U16,
    USED_ELEM,
    USED_FLAGS,
    USED_IDX,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    RingAddrs,
    avail_event_offset,
    avail_ring_size,
    avail_ring_slot,
    desc_table_size,
    used_event_offset,
    used_ring_size,
    used_ring_slot,
    vring_need_event,
)
from dataplane.vhost.messages import RegionSpec


class GuestRam:
    """Shared guest RAM backed by a memfd, at guest-physical ``gpa``.

    ``uva`` is the address the frontend claims for it in SET_MEM_TABLE (any
    value works; the backend only translates with it).  ``seal``: seal its size, as
    QEMU's memory-backend-memfd does (the bench; tests that shrink RAM on purpose do not).
    """

    def __init__(
        self, size: int, *, gpa: int = 0x100000, uva: int = 0x7F0000000000, seal: bool = False
    ) -> None:
        self.size = size
        self.gpa = gpa
        self.uva = uva
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seal else 0)
        self.fd = os.memfd_create("dataplane-guest-ram", flags)
        os.ftruncate(self.fd, size)
        if seal:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self._next = 0

    @property
    def spec(self) -> RegionSpec:
        return RegionSpec(self.gpa, self.size, self.uva, 0)

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
    """One split ring, driver side, in ``ram``: the Python twin of csrc/guest/dp_drv_ring.h.

    ``add_chain``, ``publish``, ``needs_kick`` and ``get_used`` are the
    operations of Linux's virtio_ring (virtqueue_add, virtqueue_kick_prepare,
    virtqueue_get_buf); the free list of descriptors is kept here.  Every
    write to guest memory goes through the methods of the raw-write and used
    sections, which ``dataplane.guest.c_ring.CDriverRing`` runs in C instead.
    """

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
        self.ram.write(self.desc + DESC_SIZE * i, DESC.pack(addr, length, flags, nxt))

    def write_chain(self, ids: Sequence[int], bufs: Sequence[Buf]) -> None:
        """A direct chain: ``bufs[k]`` in descriptor ``ids[k]``, linked to ``ids[k + 1]``."""
        for k, (i, b) in enumerate(zip(ids, bufs, strict=True)):
            last = k + 1 == len(bufs)
            self.write_desc(i, b.gpa, b.length, _flags(b, last), 0 if last else ids[k + 1])

    def write_indirect(self, head: int, table: int, bufs: Sequence[Buf]) -> None:
        """An indirect chain: ``bufs`` as a table at ``table``, and descriptor ``head`` to it."""
        for k, b in enumerate(bufs):
            last = k + 1 == len(bufs)
            entry = DESC.pack(b.gpa, b.length, _flags(b, last), 0 if last else k + 1)
            self.ram.write(table + DESC_SIZE * k, entry)
        self.write_desc(head, table, DESC_SIZE * len(bufs), VRING_DESC_F_INDIRECT)

    def add_avail(self, head: int) -> None:
        """Put ``head`` in ``avail->ring[avail_idx % num]``; the device sees it at a publish."""
        self.ram.write(self.avail + avail_ring_slot(self.num, self.avail_idx), U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self, heads: Sequence[int]) -> None:
        """Put ``heads`` in the avail ring and bump avail->idx (the release store)."""
        for h in heads:
            self.add_avail(h)
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.ram.write(self.avail + AVAIL_IDX, U16.pack(idx & 0xFFFF))

    def set_avail_flags(self, flags: int) -> None:
        self.ram.write(self.avail + AVAIL_FLAGS, U16.pack(flags))

    def set_used_event(self, idx: int) -> None:
        self.ram.write(self.avail + used_event_offset(self.num), U16.pack(idx & 0xFFFF))

    # -- chains ---------------------------------------------------------------

    def add_chain(self, bufs: Sequence[Buf], *, indirect: bool = False) -> int:
        """Write a chain (direct, or via one indirect table) and return its head."""
        if indirect:
            table = self.ram.alloc(DESC_SIZE * len(bufs), 16)
            head = self.free.pop(0)
            self.write_indirect(head, table, bufs)
            return head
        if len(bufs) > len(self.free):
            raise RuntimeError("ring full")
        ids = [self.free.pop(0) for _ in bufs]
        self.write_chain(ids, bufs)
        self._chains[ids[0]] = ids
        return ids[0]

    # -- used side --------------------------------------------------------------

    def used_idx(self) -> int:
        return U16.unpack(self.ram.read(self.used + USED_IDX, 2))[0]

    def used_flags(self) -> int:
        return U16.unpack(self.ram.read(self.used + USED_FLAGS, 2))[0]

    def avail_event(self) -> int:
        return U16.unpack(self.ram.read(self.used + avail_event_offset(self.num), 2))[0]

    def next_used(self, end: int) -> tuple[int, int] | None:
        """The used element at ``last_used_idx`` if it is before ``end``, as (id, len)."""
        if self.last_used_idx == end:
            return None
        slot = self.used + used_ring_slot(self.num, self.last_used_idx)
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        return USED_ELEM.unpack(self.ram.read(slot, USED_ELEM.size))

    def get_used(self) -> list[tuple[int, int]]:
        """Harvest new used elements as (id, len), and free their descriptors."""
        out = []
        end = self.used_idx()
        while (elem := self.next_used(end)) is not None:
            out.append(elem)
            self.free.extend(self._chains.pop(elem[0], [elem[0]]))
        return out

    def needs_kick(self, old_avail: int) -> bool:
        """Whether the device asked to be kicked for entries published since ``old_avail``."""
        if self.event_idx:
            return vring_need_event(self.avail_event(), self.avail_idx, old_avail)
        return not self.used_flags() & VRING_USED_F_NO_NOTIFY


def _flags(b: Buf, last: bool) -> int:
    return (VRING_DESC_F_WRITE if b.writable else 0) | (0 if last else VRING_DESC_F_NEXT)

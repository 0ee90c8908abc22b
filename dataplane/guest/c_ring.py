"""The C driver ring (csrc/guest/dp_drv_ring.h), the bench driver's own, behind ``DriverRing``.

``CDriverRing`` is a ``DriverRing`` whose ring operations run in C: the free
list and the chain bookkeeping are the Python ring's, every write to and read
of the ring is the C one.  tests/guest/test_ring.py drives both with the same
operations and compares the rings byte for byte.

This module is the checked binding of dp_drv_ring, in the manner of PyNaCl:
every argument is checked here before C sees it (C trusts its caller and
writes through host pointers), and a negative errno from C becomes an
exception here.  Nothing else calls ``lib.dp_drv_ring_*``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataplane.guest.clib import ffi, lib
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec.ring import DESC_SIZE

U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1


def ram_host(ram: GuestRam) -> int:
    """Where ``ram`` is mapped in this process (the address of its first byte)."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(ram.map)))


def _check_errno(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def _check_range(name: str, value: int, limit: int) -> int:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} {value} is not from 0 to {limit}")
    return value


def _c_index(name: str) -> property:
    """A 16-bit ring index kept in the C ring's field ``name``."""

    def get(self: CDriverRing) -> int:
        return getattr(self._r, name)

    def put(self: CDriverRing, value: int) -> None:
        setattr(self._r, name, value & U16_MAX)

    return property(get, put)


class CDriverRing(DriverRing):
    """One split ring, driver side, in ``ram``, its ring operations in C."""

    def __init__(self, ram: GuestRam, num: int, *, event_idx: bool = False) -> None:
        self._r = ffi.new("struct dp_drv_ring *")
        super().__init__(ram, num, event_idx=event_idx)
        ret = lib.dp_drv_ring_init(
            self._r, ram_host(ram), ram.gpa, ram.size, self.desc, self.avail, self.used,
            num, int(event_idx),
        )  # fmt: skip
        _check_errno(ret, f"dp_drv_ring_init(num {num})")
        # A fresh DriverRing starts at 0 whatever RAM holds; the C one resumes from RAM.
        self._r.avail_idx = self._r.last_used_idx = 0

    # The indices live in the C ring.
    avail_idx = _c_index("avail_idx")
    last_used_idx = _c_index("last_used_idx")

    # -- argument checks ----------------------------------------------------------

    def _desc_index(self, i: int) -> int:
        if not 0 <= i < self.num:
            raise ValueError(f"descriptor {i} is not below the queue size {self.num}")
        return i

    def _bufs(self, bufs: Sequence[Buf]) -> object:
        if not 1 <= len(bufs) <= U16_MAX:  # a table's next fields are 16 bits
            raise ValueError(f"a chain of {len(bufs)} buffers (1 to {U16_MAX})")
        out = ffi.new("struct dp_drv_buf[]", len(bufs))
        for k, b in enumerate(bufs):
            out[k].gpa = _check_range("buffer address", b.gpa, U64_MAX)
            out[k].len = _check_range("buffer length", b.length, U32_MAX)
            out[k].writable = int(b.writable)
        return out

    # -- the ring operations --------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        lib.dp_drv_ring_write_desc(
            self._r, self._desc_index(i), _check_range("address", addr, U64_MAX),
            _check_range("length", length, U32_MAX), _check_range("flags", flags, U16_MAX),
            _check_range("next", nxt, U16_MAX),
        )  # fmt: skip

    def write_chain(self, ids: Sequence[int], bufs: Sequence[Buf]) -> None:
        if len(ids) != len(bufs):
            raise ValueError(f"{len(ids)} descriptors for {len(bufs)} buffers")
        c_bufs = self._bufs(bufs)
        c_ids = ffi.new("uint16_t[]", [self._desc_index(i) for i in ids])
        lib.dp_drv_ring_add_chain(self._r, c_ids, c_bufs, len(bufs))

    def write_indirect(self, head: int, table: int, bufs: Sequence[Buf]) -> None:
        c_bufs = self._bufs(bufs)
        size = DESC_SIZE * len(bufs)
        if not (self.ram.gpa <= table and table + size <= self.ram.gpa + self.ram.size):
            raise ValueError(f"indirect table at {table:#x} ({size} bytes) is not in guest RAM")
        lib.dp_drv_ring_add_indirect(self._r, self._desc_index(head), table, c_bufs, len(bufs))

    def add_avail(self, head: int) -> None:
        lib.dp_drv_ring_add_avail(self._r, _check_range("head", head, U16_MAX))

    def set_avail_idx(self, idx: int) -> None:
        lib.dp_drv_ring_store_avail_idx(self._r, idx & U16_MAX)

    def set_avail_flags(self, flags: int) -> None:
        lib.dp_drv_ring_set_avail_flags(self._r, _check_range("avail flags", flags, U16_MAX))

    def set_used_event(self, idx: int) -> None:
        lib.dp_drv_ring_set_used_event(self._r, idx & U16_MAX)

    def used_idx(self) -> int:
        return lib.dp_drv_ring_used_idx(self._r)

    def used_flags(self) -> int:
        return lib.dp_drv_ring_used_flags(self._r)

    def avail_event(self) -> int:
        return lib.dp_drv_ring_avail_event(self._r)

    def next_used(self, end: int) -> tuple[int, int] | None:
        elem = ffi.new("uint32_t[2]")
        if not lib.dp_drv_ring_get_used(self._r, end & U16_MAX, elem, elem + 1):
            return None
        return elem[0], elem[1]

    def needs_kick(self, old_avail: int) -> bool:
        return bool(lib.dp_drv_ring_needs_kick(self._r, old_avail & U16_MAX))

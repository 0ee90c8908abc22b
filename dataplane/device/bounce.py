"""Bounce memory for one dataplane thread: the Python twin of csrc/device/dp_bounce.c.

When O_DIRECT cannot use a request's guest buffers in place (misaligned), the
data goes through an aligned bounce block.  Blocks come from one arena of
``budget`` bytes, mapped once per thread (MAP_NORESERVE: pages fault in on
use): powers of two from 4 KiB, kept on a free list per size once used and
carved from the arena's untouched end otherwise; when nothing is in use, the
whole arena is free again.  A request that does not fit now waits for
memory (the datapath stops popping meanwhile); with nothing else in flight,
any block up to ``max_block`` fits.  So in steady state no request makes a
syscall, and bounce memory never exceeds the budget.
"""

from __future__ import annotations

import mmap

from dataplane.device.c.host import address_of, pinned

MIN_BLOCK = 4096
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; in mmap from 3.13


def _block_size(length: int) -> int:
    size = MIN_BLOCK
    while size < length:
        size *= 2
    return size


class BouncePool:
    """An arena of ``budget`` bytes handing out aligned power-of-two blocks."""

    def __init__(self, budget: int) -> None:
        self.size = budget - budget % MIN_BLOCK
        if self.size <= 0:
            raise ValueError(f"a bounce budget of {budget} bytes holds no {MIN_BLOCK}-byte block")
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        self._arena = mmap.mmap(-1, self.size, flags=flags)
        self.view = memoryview(self._arena)
        self.base = address_of(pinned(self._arena))
        self.max_block = 1 << (self.size.bit_length() - 1)
        self._carved = 0
        self._free: dict[int, list[int]] = {}
        self.in_use = 0
        self.peak = 0

    def get(self, length: int) -> tuple[int, int] | None:
        """(offset, size) of a block of at least ``length`` bytes, or None: not now."""
        if length > self.max_block:
            return None
        size = _block_size(length)
        free = self._free.get(size)
        if free:
            off = free.pop()
        elif size <= self.size - self._carved:
            off, self._carved = self._carved, self._carved + size
        else:
            return None
        self.in_use += size
        self.peak = max(self.peak, self.in_use)
        return off, size

    def put(self, off: int, size: int) -> None:
        self.in_use -= size
        if not self.in_use:
            self._free.clear()  # nothing in use: the whole arena is one free stretch again
            self._carved = 0
        else:
            self._free.setdefault(size, []).append(off)

    def close(self) -> None:
        self.view.release()
        self._arena.close()

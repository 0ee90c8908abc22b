"""A popped descriptor chain (virtio 1.2, section 2.7.5): the guest's buffer, translated.

What the split ring's walker (virtqueue.py) hands to request parsing (blk.py): the
chain's device-readable and device-writable parts as pieces of host memory, and what
the config space's limits are checked against.  A piece lies in a mapped region of guest
RAM (memory.MemoryRegion); request handling needs of it only its bytes and their host
address, for the iovecs handed to the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Mapped(Protocol):
    """Host memory a piece lies in (memory.MemoryRegion): its bytes and their address."""

    @property
    def view(self) -> memoryview: ...

    @property
    def host_addr(self) -> int: ...


Piece = tuple[Mapped, int, int]
"""A translated piece of a guest buffer: (region, offset in region, length)."""


@dataclass(slots=True)
class Chain:
    """A popped descriptor chain, split into device-readable and device-writable pieces."""

    head: int
    out: list[Piece] = field(default_factory=list)
    in_: list[Piece] = field(default_factory=list)
    out_len: int = 0
    in_len: int = 0
    ndesc: int = 0  # descriptors, for the seg_max check
    longest: int = 0  # the longest descriptor, for the size_max check

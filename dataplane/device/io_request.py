"""One operation on the image: what request parsing (blk.py) makes and an engine runs.

The values of ``Op`` are csrc/device/dp_io.h's DP_OP_*; engines/base.py says what each
operation does on the image.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Op(enum.IntEnum):
    READ = 0
    WRITE = 1
    FLUSH = 2
    DISCARD = 3
    WRITE_ZEROES = 4


@dataclass(slots=True)
class IoRequest:
    """One operation on the image.

    ``iov`` holds ``(host_address, length)`` pairs (READ and WRITE only).
    ``token`` is the caller's identifier, handed back by ``reap``.
    """

    op: Op
    offset: int = 0
    length: int = 0
    iov: list[tuple[int, int]] = field(default_factory=list)
    dsync: bool = False
    unmap: bool = False
    token: int = 0

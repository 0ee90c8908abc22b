"""The bounce buffer of one misaligned O_DIRECT request on the Python reference datapath.

O_DIRECT cannot use a request's guest buffers in place when they are misaligned: the
data goes through an aligned buffer instead (a write's data gathered into it before
the I/O, a read's scattered back at completion, blk.py).  The reference maps one
buffer per request and unmaps it when the request completes.

The C datapath hands out blocks from one arena per thread instead, within a budget
(csrc/device/dp_bounce.c, the bounce-mib key): a request that does not fit waits, so a
guest's misaligned flood costs no more memory than the budget.  That arena's smallest
block is the floor of the config space's size_max (disk.MIN_BLOCK).
"""

from __future__ import annotations

import mmap

from dataplane.device.c import address_of, pinned


class BounceBuffer:
    """``length`` bytes of page-aligned memory, at host address ``addr`` until ``close``."""

    def __init__(self, length: int) -> None:
        self._map = mmap.mmap(-1, max(length, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)[:length]
        self.addr = address_of(pinned(self._map))

    def close(self) -> None:
        self.view.release()
        self._map.close()

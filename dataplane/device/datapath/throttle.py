"""The request the device's limiter holds back on a Python dataplane thread.

The twin of ``limit_wait`` in csrc/device/dp_loop.c: a request popped while its
device is over a limit is booked at once (device/limiter.py) and held until
its wait is over; popping waits with it, so the ring's order is kept.  The
time is the one the pass read when it woke: booking reads no clock.
"""

from __future__ import annotations

import math

from dataplane.device.blk import BlkRequest
from dataplane.device.engines.base import Op
from dataplane.device.limiter import Limiter

NS_PER_MS = 1_000_000
MAX_WAIT_MS = (1 << 31) - 1  # epoll's int of ms, as the C loop caps it


class Throttle:
    """What a thread's pass asks of its device's limiter (None: no limiter, nothing held)."""

    def __init__(self) -> None:
        self.limiter: Limiter | None = None
        self.held: tuple[int, BlkRequest] | None = None
        self.until = 0
        self.generation = 0  # the limiter's when the request was held

    def hold(self, index: int, req: BlkRequest, now: int) -> bool:
        """Book ``req`` (ring ``index``) at ``now``; True if it must wait (it is held)."""
        io = req.io
        if self.limiter is None or io is None or io.op == Op.FLUSH:
            return False
        # Discard and write-zeroes book as writes of their bytes, as QEMU's throttle does.
        wait = self.limiter.admit(io.op != Op.READ, io.length, now)
        if not wait:
            return False
        self.held, self.until = (index, req), now + wait
        self.generation = self.limiter.generation
        return True

    def due(self, now: int) -> bool:
        """The held request may go: its wait is over, or the limits changed since it was
        booked (set-limits)."""
        assert self.limiter is not None
        return now >= self.until or self.limiter.generation != self.generation

    def release(self) -> tuple[int, BlkRequest]:
        assert self.held is not None
        held, self.held = self.held, None
        return held

    def timeout(self, wait: float, now: int) -> float:
        """epoll's timeout (seconds, -1: none) cut to end when the held request may go
        (rounded up to epoll's ms, as the C loop)."""
        if self.held is None or wait == 0:
            return wait
        left = min(math.ceil(max(0, self.until - now) / NS_PER_MS), MAX_WAIT_MS) / 1000
        return left if wait < 0 else min(wait, left)

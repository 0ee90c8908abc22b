"""The Python model of csrc/device/dp_limiter.h that tests/device/test_limiter.py holds the C
limiter (dataplane.device.limiter.Limiter) to, booking for booking.

The same GCRA buckets with the same integer arithmetic; Python has no compare-and-swap,
so the model books under a lock.
"""

from __future__ import annotations

import threading

from dataplane.device.c import limiter as climiter
from dataplane.device.limiter import U64_MAX, Limits

NS_PER_S = 1_000_000_000


def cost_ns(units: int, rate: int) -> int:
    """dp_limiter_cost_ns: ``units`` at ``rate`` per second, in ns, saturating."""
    return min(units * NS_PER_S // rate, U64_MAX)


def _kinds(is_write: bool) -> tuple[tuple[int, bool], ...]:
    """(bucket, counts bytes) for a read or a write, in dp_limiter_admit's order."""
    if is_write:
        return (
            (climiter.Limit.IOPS, False),
            (climiter.Limit.WRITE_IOPS, False),
            (climiter.Limit.BPS, True),
            (climiter.Limit.WRITE_BPS, True),
        )
    return (
        (climiter.Limit.IOPS, False),
        (climiter.Limit.READ_IOPS, False),
        (climiter.Limit.BPS, True),
        (climiter.Limit.READ_BPS, True),
    )


class ModelLimiter:
    """The buckets of one device, shared by its threads."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._lock = threading.Lock()
        self.rate = [0] * climiter.KINDS
        self.burst_ns = [0] * climiter.KINDS
        self.tat = [0] * climiter.KINDS
        self.throttled = 0
        self.throttled_ns = 0
        self.generation = 0  # bumped by set: a held request is let go (dp_limiter.h)
        self.set(limits or Limits())

    def set(self, limits: Limits) -> None:
        """Change every limit live; each bucket starts full again (dp_limiter_set)."""
        with self._lock:
            for kind, rate in enumerate(limits.rates()):
                self.rate[kind] = rate
                self.burst_ns[kind] = limits.burst_ns(kind)
                self.tat[kind] = 0
            self.generation += 1

    def _take(self, kind: int, units: int, now: int) -> int:
        rate = self.rate[kind]
        if not rate:
            return 0
        old = self.tat[kind]
        line = min(now + self.burst_ns[kind], U64_MAX)
        self.tat[kind] = min(max(old, now) + cost_ns(units, rate), U64_MAX)
        return old - line if old > line else 0

    def admit(self, is_write: bool, nbytes: int, now_ns: int) -> int:
        """How long (ns) a read or write of ``nbytes`` arriving at ``now_ns`` must wait."""
        with self._lock:
            wait = 0
            for kind, counts_bytes in _kinds(is_write):
                wait = max(wait, self._take(kind, nbytes if counts_bytes else 1, now_ns))
            if wait:  # the counters wrap as C's u64 do
                self.throttled = (self.throttled + 1) & U64_MAX
                self.throttled_ns = (self.throttled_ns + wait) & U64_MAX
            return wait

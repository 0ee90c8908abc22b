"""Per-device I/O limits: token buckets shared by a device's threads.

The twin of csrc/device/dp_limiter.h, whose header says how a bucket works (GCRA: a rate,
a burst allowance as time, one word of state) and why a request is never refused
but told how long to wait.  ``NativeLimiter`` is the C limiter that the native
threads share (the control plane sets it and reads its counts); ``Limiter`` is
the Python reference, which makes the same bookings with the same integer
arithmetic.  Python has no compare-and-swap, so the reference books under a lock.

Requests that count: reads, and writes (discard and write-zeroes book as writes of
their bytes, as QEMU's throttle does); a flush or a GET_ID books nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

from dataplane.device.c import limiter as climiter

NS_PER_S = 1_000_000_000
U64_MAX = (1 << 64) - 1
DEFAULT_BURST_MS = 100  # QEMU's throttle lets a tenth of a second's worth through at once
MAX_BURST_MS = 60_000

# The device keys, in csrc/device/dp_limiter.h's order (enum dp_limit_kind).
KEYS = (
    "iops-limit",
    "read-iops-limit",
    "write-iops-limit",
    "bps-limit",
    "read-bps-limit",
    "write-bps-limit",
)
BURST_KEY = "limit-burst-ms"


@dataclass(frozen=True, slots=True)
class Limits:
    """A device's limits: requests or bytes per second, 0 for none, and the burst allowance."""

    iops: int = 0
    read_iops: int = 0
    write_iops: int = 0
    bps: int = 0
    read_bps: int = 0
    write_bps: int = 0
    burst_ms: int = DEFAULT_BURST_MS

    def __post_init__(self) -> None:
        for key, value in zip(KEYS, self.rates(), strict=True):
            if not 0 <= value <= U64_MAX:
                raise ValueError(f"{key}={value} must be 0 (no limit) or a positive rate")
        if not 0 <= self.burst_ms <= MAX_BURST_MS:
            raise ValueError(f"{BURST_KEY}={self.burst_ms} must be 0 to {MAX_BURST_MS}")

    @classmethod
    def from_keys(cls, keys: dict[str, int]) -> Limits:
        """From device keys (``iops-limit`` ...); ValueError names a key we do not know."""
        names = [f.name for f in fields(cls)]
        by_key = dict(zip((*KEYS, BURST_KEY), names, strict=True))
        unknown = sorted(set(keys) - set(by_key))
        if unknown:
            raise ValueError(f"unknown limit key {unknown[0]} (keys: {', '.join(by_key)})")
        return cls(**{by_key[k]: v for k, v in keys.items()})

    def keys(self) -> dict[str, int]:
        """As device keys: the inverse of ``from_keys``."""
        return dict(zip((*KEYS, BURST_KEY), (*self.rates(), self.burst_ms), strict=True))

    def rates(self) -> tuple[int, ...]:
        return (self.iops, self.read_iops, self.write_iops, self.bps, self.read_bps, self.write_bps)

    def burst_ns(self, kind: int) -> int:
        return self.burst_ms * 1_000_000 if self.rates()[kind] else 0

    @property
    def limited(self) -> bool:
        return any(self.rates())


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


class Limiter:
    """The Python reference: the buckets of one device, shared by its threads."""

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


class NativeLimiter:
    """struct dp_limiter: what the native threads of a device share (``ptr`` is theirs)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._c = climiter.CLimiter()
        self.ptr = self._c.handle
        self.set(limits or Limits())

    def set(self, limits: Limits) -> None:
        for kind, rate in enumerate(limits.rates()):
            self._c.set(kind, rate, limits.burst_ns(kind))

    def admit(self, is_write: bool, nbytes: int, now_ns: int) -> int:
        return self._c.admit(is_write, nbytes, now_ns)

    @property
    def generation(self) -> int:
        return self._c.generation()

    @property
    def binding(self) -> climiter.CLimiter:
        """What a C thread books in (CThread.set_limiter)."""
        return self._c

    @property
    def tat(self) -> list[int]:
        return self._c.tat()

    @property
    def throttled(self) -> int:
        return self._c.counts()[0]

    @property
    def throttled_ns(self) -> int:
        return self._c.counts()[1]


def new_limiter(datapath: str, limits: Limits) -> Limiter | NativeLimiter:
    """The limiter a device's threads share: C for the native datapath, else the reference."""
    return NativeLimiter(limits) if datapath == "native" else Limiter(limits)

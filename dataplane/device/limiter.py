"""Per-device I/O limits: token buckets shared by a device's threads, in C alone.

csrc/device/dp_limiter.h says how a bucket works (GCRA: a rate, a burst allowance as time,
one word of state) and why a request is never refused but told how long to wait.
``Limiter`` is the C limiter that a device's threads share on the C datapath (the
control plane sets it and reads its counts); the Python reference datapath has no
limits.  The tests hold the C buckets to a model in Python (tests/limiter_model.py).

Requests that count: reads, and writes (discard and write-zeroes book as writes of
their bytes, as QEMU's throttle does); a flush or a GET_ID books nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dataplane.device.c import limiter as climiter

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


class Limiter:
    """struct dp_limiter: what the C threads of a device share (``binding`` is theirs)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._c = climiter.CLimiter()
        self.set(limits or Limits())

    def set(self, limits: Limits) -> None:
        """Change every limit live; each bucket starts full again (dp_limiter_set)."""
        self.limits = limits
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

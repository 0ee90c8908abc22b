"""csrc/device/dp_limiter.h: the C limiter a device's threads share on the C datapath.

``CLimiter`` owns one ``struct dp_limiter`` (cffi-allocated, freed with this
object): the control plane sets its buckets live (relaxed atomics, see
dp_limiter_set) and reads its counts; ``handle`` is the pointer the threads book in.
"""

from __future__ import annotations

from typing import Any

from dataplane.device.c import constants, ffi, lib

KINDS: int = lib.DP_LIMITS
Limit = constants("Limit", "DP_LIMIT_", "IOPS READ_IOPS WRITE_IOPS BPS READ_BPS WRITE_BPS")
U64_MAX = (1 << 64) - 1

__all__ = ["KINDS", "CLimiter", "Limit"]


def _u64(value: int, what: str) -> int:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what}={value} is not a u64")
    return value


class CLimiter:
    """A ``struct dp_limiter``, zeroed: no limits until ``set``."""

    def __init__(self) -> None:
        self._c: Any = ffi.new("struct dp_limiter *")

    @property
    def handle(self) -> Any:
        """The ``struct dp_limiter *`` that the threads share (lives as long as this object)."""
        return self._c

    def set(self, kind: int, rate: int, burst_ns: int) -> None:
        """One bucket's rate (units/s, 0: none) and burst (ns); the bucket starts full."""
        if not 0 <= kind < KINDS:
            raise ValueError(f"no limit kind {kind}")
        lib.dp_limiter_set(self._c, kind, _u64(rate, "rate"), _u64(burst_ns, "burst_ns"))

    def admit(self, is_write: bool, nbytes: int, now_ns: int) -> int:
        """dp_limiter_admit: the wait (ns) for a read or write of ``nbytes`` at ``now_ns``."""
        return lib.dp_limiter_admit(
            self._c, int(is_write), _u64(nbytes, "nbytes"), _u64(now_ns, "now_ns")
        )

    def tat(self) -> list[int]:
        return [self._c.bucket[k].tat for k in range(KINDS)]

    def generation(self) -> int:
        """Bumped by every ``set``."""
        return self._c.generation

    def counts(self) -> tuple[int, int]:
        """(requests told to wait, their waits summed in ns)."""
        return self._c.throttled, self._c.throttled_ns


def cost_ns(units: int, rate: int) -> int:
    """dp_limiter_cost_ns (rate != 0)."""
    if rate <= 0:
        raise ValueError("cost_ns needs a rate")
    return lib.dp_limiter_cost_ns(_u64(units, "units"), _u64(rate, "rate"))

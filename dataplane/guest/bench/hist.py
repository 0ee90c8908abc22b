"""Latency percentiles from the C driver's log-linear histogram (csrc/guest/dp_hist.h)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from dataplane.guest.clib import lib
from dataplane.spec import latency

SUB_BITS = lib.DP_HIST_SUB_BITS
BUCKETS = lib.DP_HIST_BUCKETS


def bucket_range(i: int) -> tuple[int, int]:
    """The values [low, high) that bucket ``i`` counts (the inverse of ``dp_hist_index``)."""
    return latency.bucket_range(i, SUB_BITS)


def merge(hists: Iterable[Sequence[int]]) -> list[int]:
    out = [0] * BUCKETS
    for h in hists:
        for i, n in enumerate(h):
            if n:
                out[i] += n
    return out


def percentile(hist: Sequence[int], p: float) -> float | None:
    """The value (bucket midpoint) at percentile ``p`` (0..100); None for an empty histogram."""
    total = sum(hist)
    if not total:
        return None
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            low, high = bucket_range(i)
            return (low + high - 1) / 2
    raise AssertionError("unreachable")  # pragma: no cover


def mean(hist: Sequence[int]) -> float | None:
    total = sum(hist)
    if not total:
        return None
    return sum(n * sum(bucket_range(i)) / 2 for i, n in enumerate(hist) if n) / total


def maximum(hist: Sequence[int]) -> float | None:
    for i in range(len(hist) - 1, -1, -1):
        if hist[i]:
            return float(bucket_range(i)[1] - 1)
    return None

"""csrc/dp_stats.h: the shape of the C counters, and reading them in place."""

from __future__ import annotations

from typing import Any

from dataplane.device.c import ffi, lib

BUCKETS: int = lib.DP_STAT_BUCKETS
KINDS: int = lib.DP_STAT_KINDS
LAT_LAYERS: int = lib.DP_LAT_LAYERS
ENABLED = bool(lib.DP_STATS_ENABLED)  # built with -DDP_STATS=0: the C counters stay 0

__all__ = [
    "BUCKETS",
    "ENABLED",
    "KINDS",
    "LAT_LAYERS",
    "new_queue_counters",
    "queue_counts",
    "thread_hists",
]


def new_queue_counters() -> Any:
    """A zeroed ``struct dp_qstats``: the Python reference counts in the C loop's own struct,
    so the two keep one list of counters."""
    return ffi.new("struct dp_qstats *")


def queue_counts(c: Any) -> tuple[Any, list[int]]:
    """A ``struct dp_qstats``: itself (read as attributes) and its per-kind request counts."""
    return c, list(c.requests)


def thread_hists(h: Any) -> tuple[list[int], list[list[int]]]:
    """A ``struct dp_tstats``: the batch histogram and the latency histograms."""
    return list(h.batch), [list(h.lat[i]) for i in range(LAT_LAYERS)]

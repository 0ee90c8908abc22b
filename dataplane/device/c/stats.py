"""csrc/device/dp_stats.h: the shape of the C counters, and reading them in place."""

from __future__ import annotations

from typing import Any

from dataplane.device.c import ffi, lib

BUCKETS: int = lib.DP_STAT_BUCKETS
KINDS: int = lib.DP_STAT_KINDS
LAT_LAYERS: int = lib.DP_LAT_LAYERS
LAYER_SUB_BITS: int = lib.DP_LAYER_SUB_BITS
LAYER_BUCKETS: int = lib.DP_LAYER_BUCKETS
ENABLED = bool(lib.DP_STATS_ENABLED)  # built with -DDP_STATS=0: the C counters stay 0

__all__ = [
    "BUCKETS",
    "ENABLED",
    "KINDS",
    "LAT_LAYERS",
    "LAYER_BUCKETS",
    "LAYER_SUB_BITS",
    "layer_add",
    "new_queue_counters",
    "queue_counts",
    "queue_layers",
    "thread_hists",
]


def new_queue_counters() -> Any:
    """A zeroed ``struct dp_qstats``: the Python reference counts in the C loop's own struct,
    so the two keep one list of counters."""
    return ffi.new("struct dp_qstats *")


def queue_counts(c: Any) -> tuple[Any, list[int]]:
    """A ``struct dp_qstats``: itself (read as attributes) and its per-kind request counts."""
    return c, list(c.requests)


def layer_add(c: Any, layer: int, ns: int, n: int = 1) -> None:
    """Count ``n`` requests of ``ns`` in layer ``layer`` of a ``struct dp_qstats`` (the C loop's
    own dp_layer_add)."""
    lib.dp_layer_add(ffi.addressof(c.layers.layer[layer]), ns % 2**64, n)


def queue_layers(c: Any) -> tuple[list[tuple[int, list[tuple[int, int]]]], int, int]:
    """A ``struct dp_qstats``'s layers: (sum_ns, sparse [(bucket, count)]) each, and the sums
    of absolute pop and notify times."""
    ls = c.layers
    layers = []
    for i in range(LAT_LAYERS):
        h = ls.layer[i].hist
        layers.append(
            (int(ls.layer[i].sum_ns), [(b, int(h[b])) for b in range(LAYER_BUCKETS) if h[b]])
        )
    return layers, int(ls.pop_at), int(ls.notify_at)


def thread_hists(h: Any) -> tuple[list[int], int]:
    """A ``struct dp_tstats``: the batch histogram and its sum (requests popped)."""
    return list(h.batch), int(h.batch_sum)

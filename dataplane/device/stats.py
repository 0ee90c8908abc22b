"""Per-request stats, shared by both datapaths: counters, histograms, snapshots.

Always on.  Per queue: requests popped by kind, used elements
added, bytes read and written (requests completed OK), IOERR and UNSUPP
statuses, call eventfd writes, the requests in flight, and the latency of
each layer a request crosses in the device (``LAT_LAYERS``, from
dataplane/spec/latency.py: kick_pop, pop_submit, submit_complete,
complete_used, used_notify), as a log-linear histogram (sparse, under
``layers``, with ``count`` and ``sum-ns``).  The layers tile the interval
from the wake of the pass that popped a request to its notify, so a queue's
layer sums add up to the total time its requests spent in the device; its
``layer-clock`` sums of absolute pop and notify times let the bench driver,
which keeps the same sums of its kick and reap times, measure the layers on
the guest's side of the ring (csrc/device/dp_stats.h).  Every completed request
counts once in every layer, when its used element is published; one that
needs no I/O (GET_ID, a status known at parse) counts 0 for pop_submit and
submit_complete.  A request completed on a broken queue is released, not
counted.

Per dataplane thread: a histogram of the batch size per pass (requests popped
in a pass that popped any) with its sum.  Per device (all its queues): each
layer as a log2 histogram (``lat_ns``) with its sum (``lat_sum_ns``), for
Prometheus.  Log2 histograms have ``BUCKETS`` buckets: bucket i counts values v
with ``v.bit_length() == i`` (2**(i-1) <= v < 2**i; bucket 0 is v == 0), the
last bucket also everything above.

The C datapath keeps the same counters in csrc/device/dp_stats.h, written by its
thread only and read by ``stats_snapshot`` from any thread with plain loads:
each counter is whole, but a snapshot is not a consistent cut (a request may
show in ``requests`` and not yet in a histogram, by at most one pass).  Build
with ``DP_EXTRA_CFLAGS=-DDP_STATS=0`` to compile the C counters out (then
``"enabled": false`` and all zeros), to measure what they cost.
"""

from __future__ import annotations

from dataplane.device.c import stats as cstats
from dataplane.spec import latency
from dataplane.spec.kinds import STAT_KINDS
from dataplane.spec.latency import HOST_LAYERS as LAT_LAYERS

BUCKETS = cstats.BUCKETS

assert len(STAT_KINDS) == cstats.KINDS and len(LAT_LAYERS) == cstats.LAT_LAYERS
assert latency.LAYER_SUB_BITS == cstats.LAYER_SUB_BITS


def bucket(v: int) -> int:
    """The log2 histogram bucket of ``v`` (as csrc/device/dp_stats.h's dp_stat_bucket)."""
    return min(max(v, 0).bit_length(), BUCKETS - 1)


def queue_snapshot(index: int, c, requests: list[int], inflight: int) -> dict:
    """One queue's JSON-ready stats from its counters (``c``: a struct dp_qstats)."""
    return {
        "index": index,
        "requests": dict(zip(STAT_KINDS, (int(n) for n in requests), strict=True)),
        "completed": int(c.completed),
        "bytes_read": int(c.bytes_read),
        "bytes_written": int(c.bytes_written),
        "errors": {"ioerr": int(c.ioerr), "unsupp": int(c.unsupp)},
        "notifies": int(c.notifies),
        "notifies_dropped": int(c.notifies_dropped),
        "inflight": int(inflight),
        **layers_snapshot(c),
    }


def layers_snapshot(c) -> dict:
    """A queue's ``layers`` (per layer: count, sum-ns, sparse [bucket, count] pairs) and its
    ``layer-clock`` (the sums of absolute pop and notify times, mod 2**64)."""
    layers, pop_at, notify_at = cstats.queue_layers(c)
    return {
        "layers": {
            latency.key(name): {
                "count": sum(n for _, n in buckets),
                "sum-ns": sum_ns,
                "buckets": [[b, n] for b, n in buckets],
            }
            for name, (sum_ns, buckets) in zip(LAT_LAYERS, layers, strict=True)
        },
        "layer-clock": {"pop-at-ns": pop_at, "notify-at-ns": notify_at},
    }


def snapshot(
    datapath: str, enabled: bool, queues: list[dict], batch: list[int], batch_sum: int
) -> dict:
    """A datapath's stats: its ``queues``, the batch histogram, and each layer over its queues
    as a log2 histogram (``lat_ns``) and a sum (``lat_sum_ns``)."""
    lat, lat_sum = {}, {}
    for name in LAT_LAYERS:
        layer = [q["layers"][latency.key(name)] for q in queues]
        pairs = (tuple(p) for lq in layer for p in lq["buckets"])
        lat[name] = latency.log2_projection(pairs, latency.LAYER_SUB_BITS, BUCKETS)
        lat_sum[name] = sum(lq["sum-ns"] for lq in layer)
    return {
        "datapath": datapath,
        "enabled": enabled,
        "buckets": "log2",  # bucket i: values with bit_length i (see the module docstring)
        "queues": queues,
        "batch_hist": [int(n) for n in batch],
        "batch_sum": int(batch_sum),
        "lat_ns": lat,
        "lat_sum_ns": lat_sum,
    }


def merge_snapshots(snaps: list[dict]) -> dict:
    """Several threads' snapshots as one device's: queues by index, histograms summed."""
    out = {
        "datapath": snaps[0]["datapath"] if snaps else None,
        "enabled": all(s["enabled"] for s in snaps),
        "buckets": "log2",
        "threads": len(snaps),
        "queues": sorted((q for s in snaps for q in s["queues"]), key=lambda q: q["index"]),
        "batch_hist": [0] * BUCKETS,
        "batch_sum": sum(s.get("batch_sum", 0) for s in snaps),
        "lat_ns": {name: [0] * BUCKETS for name in LAT_LAYERS},
        "lat_sum_ns": {
            name: sum(s.get("lat_sum_ns", {}).get(name, 0) for s in snaps) for name in LAT_LAYERS
        },
    }
    for s in snaps:
        for i, n in enumerate(s["batch_hist"]):
            out["batch_hist"][i] += n
        for name in LAT_LAYERS:
            for i, n in enumerate(s["lat_ns"][name]):
                out["lat_ns"][name][i] += n
    return out


def summary(snap: dict) -> str:
    """One log line of a snapshot's per-queue counters (logged when a datapath closes)."""
    parts = []
    for q in snap["queues"]:
        kinds = " ".join(f"{k}={n}" for k, n in q["requests"].items() if n)
        parts.append(
            f"q{q['index']}: {kinds or 'no requests'}; {q['bytes_read']} bytes read, "
            f"{q['bytes_written']} written; {q['errors']['ioerr']} IOERR, "
            f"{q['errors']['unsupp']} UNSUPP"
        )
    return "requests by queue: " + " | ".join(parts)

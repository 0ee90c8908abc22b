"""Per-request stats, shared by both datapaths: counters, histograms, snapshots.

Always on.  Per queue: requests popped by kind, used elements
added, bytes read and written (requests completed OK), IOERR and UNSUPP
statuses, call eventfd writes, and the requests in flight.  Per dataplane
thread: a histogram of the batch size per pass (requests popped in a pass
that popped any), and latency histograms, in ns, for each layer:

- ``kick_pop``: the thread woke (a kick, a completion, a poll hit; the wake
  time stands for the kick) -> its ring's popping began in that pass (one
  clock read per ring per pass, not per request);
- ``pop_submit``: popped -> its batch handed to the engine;
- ``submit_complete``: handed to the engine -> reaped (the host I/O);
- ``complete_notify``: reaped -> used->idx published and the call eventfd
  written (or the notification suppressed) for its pass.

A request that needs no I/O (GET_ID, a status known at parse) counts 0 for
``pop_submit`` and ``submit_complete``, and its ``complete_notify`` runs from
the end of its pop phase.  Every histogram thus counts each completed request
once (``kick_pop`` at pop, the others at completion; a request completed on a
broken queue is released, not counted).  Histograms have ``BUCKETS`` log2
buckets: bucket i counts values v with ``v.bit_length() == i`` (2**(i-1) <= v
< 2**i; bucket 0 is v == 0), the last bucket also everything above.

The C datapath keeps the same counters in csrc/dp_stats.h, written by its
thread only and read by ``stats_snapshot`` from any thread with plain loads:
each counter is whole, but a snapshot is not a consistent cut (a request may
show in ``requests`` and not yet in a histogram, by at most one pass).  Build
with ``DP_EXTRA_CFLAGS=-DDP_STATS=0`` to compile the C counters out (then
``"enabled": false`` and all zeros), to measure what they cost.
"""

from __future__ import annotations

from dataplane.device.c import stats as cstats
from dataplane.spec.kinds import STAT_KINDS

LAT_LAYERS = ("kick_pop", "pop_submit", "submit_complete", "complete_notify")
BUCKETS = cstats.BUCKETS

assert len(STAT_KINDS) == cstats.KINDS and len(LAT_LAYERS) == cstats.LAT_LAYERS


def bucket(v: int) -> int:
    """The log2 histogram bucket of ``v`` (as csrc/dp_stats.h's dp_stat_bucket)."""
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
    }


def snapshot(
    datapath: str, enabled: bool, queues: list[dict], batch: list[int], lat: list[list[int]]
) -> dict:
    """A datapath's stats: ``{"queues": [...], "batch_hist": [...], "lat_ns": {...}}``."""
    return {
        "datapath": datapath,
        "enabled": enabled,
        "buckets": "log2",  # bucket i: values with bit_length i (see the module docstring)
        "queues": queues,
        "batch_hist": [int(n) for n in batch],
        "lat_ns": {name: [int(n) for n in h] for name, h in zip(LAT_LAYERS, lat, strict=True)},
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
        "lat_ns": {name: [0] * BUCKETS for name in LAT_LAYERS},
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

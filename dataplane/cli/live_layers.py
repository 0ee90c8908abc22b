"""``dataplane stat --layers``: where a request's time goes inside the device, live.

Per device and queue, for each layer a request crosses in the device (kick_pop,
pop_submit, submit_complete, complete_used, used_notify: dataplane/spec/latency.py),
its p50 and p99 and its share of the total, read from the per-queue layer histograms
and sums of the stats snapshot (``layers``, device/stats.py).  The table covers the
requests completed between two snapshots, ``--interval`` apart; ``--json`` prints the
same figures as JSON, over the interval when ``--count`` asks for refreshes, else over
everything the server has counted since it started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataplane.serve.mgmt_client import MgmtClient
from dataplane.spec import latency

LAYER_KEYS = tuple(latency.key(n) for n in latency.HOST_LAYERS)

__all__ = ["layer_figures", "read_stats", "render_layers"]


def read_stats(path: Path) -> dict[str, Any]:
    """One ``stats`` response of the management socket ``path`` (``dataplane bench --layers``
    reads ours' with it)."""
    with MgmtClient(path, timeout=10.0) as client:
        return client.call("stats")


def _buckets(layer: dict[str, Any]) -> dict[int, int]:
    return {int(i): int(n) for i, n in layer.get("buckets", [])}


def _queue_figures(cur: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any] | None:
    layers = cur.get("layers")
    if not isinstance(layers, dict):
        return None  # a server that keeps no layer stats
    old = (prev or {}).get("layers", {})
    out: dict[str, Any] = {}
    sums = {}
    count = 0
    for k in LAYER_KEYS:
        now, before = layers.get(k, {}), old.get(k, {})
        b = _buckets(now)
        for i, n in _buckets(before).items():
            b[i] = b.get(i, 0) - n
        n = now.get("count", 0) - before.get("count", 0)
        sums[k] = now.get("sum-ns", 0) - before.get("sum-ns", 0)
        count = max(count, n)
        out[k] = {
            "count": n,
            "mean-ns": sums[k] / n if n else None,
            "p50-ns": latency.percentile(b, 50, latency.LAYER_SUB_BITS),
            "p99-ns": latency.percentile(b, 99, latency.LAYER_SUB_BITS),
        }
    total = sum(sums.values())
    for k in LAYER_KEYS:
        out[k]["share"] = sums[k] / total if total > 0 else None
    return {
        "index": cur.get("index"),
        "requests": count,
        "total-mean-ns": total / count if count else None,
        "layers": out,
    }


def layer_figures(cur: dict[str, Any], prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """The layers of every device and queue in the ``stats`` response ``cur``, over the
    requests completed since ``prev`` (or since the server started)."""
    devices = {}
    for name, stats in cur.get("devices", {}).items():
        before = {q.get("index"): q for q in (prev or {}).get("devices", {}).get(name, {})
                  .get("queues", [])}  # fmt: skip
        queues = []
        for q in stats.get("queues", []):
            f = _queue_figures(q, before.get(q.get("index")) if prev is not None else None)
            if f is not None:
                queues.append(f)
        devices[name] = {"queues": queues}
    return {"time": cur.get("time"), "layers": list(LAYER_KEYS), "devices": devices}


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f}" if ns < 1e6 else f"{ns / 1000:.0f}"


def render_layers(figures: dict[str, Any], over: str) -> str:
    """The table: per device and queue, each layer's p50/p99 in µs and share of the total."""
    width = 19
    head = f"{'device':<12} {'queue':>5} {'requests':>9}  " + " ".join(
        f"{k:<{width}}" for k in (*LAYER_KEYS, "total")
    )
    lines = [
        f"dataplane stat --layers: {len(figures['devices'])} device(s), {over}; each layer: "
        "p50/p99 in \u00b5s and its share of the time in the device",
        head.rstrip(),
    ]
    for name, dev in figures["devices"].items():
        if not dev["queues"]:
            lines.append(f"{name[:12]:<12} {'':>5} {'-':>9}  (no layer stats from this server)")
        for q in dev["queues"]:
            cells = []
            for k in LAYER_KEYS:
                lf = q["layers"][k]
                share = "-" if lf["share"] is None else f"{lf['share'] * 100:.0f}%"
                cells.append(f"{_us(lf['p50-ns']) + '/' + _us(lf['p99-ns']):>13} {share:>4}")
            cells.append(f"mean {_us(q['total-mean-ns'])}")
            lines.append(
                f"{name[:12]:<12} {'q' + str(q['index']):>5} {q['requests']:>9}  "
                + " ".join(f"{c:<{width}}" for c in cells).rstrip()
            )
    return "\n".join(lines)

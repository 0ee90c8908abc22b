"""``dataplane stat SOCKET``: a live, top-like view of a running ``dataplane serve --mgmt``.

It asks the management socket (mgmt.py) for a stats snapshot every ``--interval``
seconds and prints, per device and per queue, the rates between the last two
snapshots: IOPS by request type, MiB/s, and the in-flight and error counts.
``--json`` prints one raw snapshot; ``--prometheus`` prints the Prometheus text that
``serve --metrics`` serves (the ``metrics`` command); ``--layers`` shows where the time
goes inside the device instead (live_layers.py), with ``--json`` as JSON.

The counters come from ``BlkDevice.stats()``; the view reads them by their names
(a request type -- read, write, flush, discard, write_zeroes, get_id -- under a
``requests``/``ops`` part of the name or as the name itself; ``bytes``; ``inflight``;
``error``), so new counters show up in ``--json`` without changing this file.  A device
that logs dirty pages (live migration) gets a line of its own.
Histograms (``hist``, ``latency``, ``batch``) are left to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from dataplane import argtypes
from dataplane.cli import mgmt_socket
from dataplane.cli.device_ops import human_bytes, state_of
from dataplane.cli.live_layers import layer_figures, render_layers
from dataplane.errors import UsageError
from dataplane.serve.mgmt_client import MgmtClient
from dataplane.spec.kinds import STAT_KINDS as TYPES

_TYPE_ALIASES = {
    "in": "read",
    "reads": "read",
    "out": "write",
    "writes": "write",
    "flushes": "flush",
    "discards": "discard",
    "write_zero": "write_zeroes",
    "writezeroes": "write_zeroes",
    "getid": "get_id",
    "id": "get_id",
}
_SKIP = ("hist", "lat_", "latency", "batch", "loop", "threads", "bucket", "percentile", "layer")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stat",
        help="live per-device and per-queue statistics of a running 'dataplane serve --mgmt'",
        description="Show IOPS by type, MiB/s, in-flight and errors per device and queue, "
        "refreshed every --interval seconds, from the management socket of 'dataplane serve'.",
    )
    mgmt_socket.add_mgmt_arguments(p)
    p.add_argument("--device", dest="name", metavar="NAME", help="show only this device")
    every = argtypes.seconds(0.05, 3600)
    p.add_argument(
        "--interval", type=every, default=1.0, metavar="S", help="seconds between refreshes"
    )
    p.add_argument(
        "--count",
        type=argtypes.positive,
        metavar="N",
        help="refresh N times, then exit (default: forever)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one raw snapshot as JSON")
    out.add_argument("--prometheus", action="store_true", help="print it as Prometheus text")
    p.add_argument(
        "--layers",
        action="store_true",
        help="per device and queue, each latency layer's p50/p99 and share of the time in "
        "the device (with --json: as JSON)",
    )
    return p


# -- reading counters by name ----------------------------------------------------------------


def _leaves(value: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, str(k).lower().replace("-", "_")))


def _type_of(part: str) -> str | None:
    for suffix in ("_requests", "_reqs", "_ops", "_count", "_total"):
        part = part.removesuffix(suffix)
    part = _TYPE_ALIASES.get(part, part)
    return part if part in TYPES else None


def summarize(q: dict[str, Any]) -> dict[str, float]:
    """A queue's (or device's) counters: requests per type, bytes, inflight, errors."""
    out: dict[str, float] = {}
    for path, value in _leaves(q):
        if any(s in part for part in path for s in _SKIP):
            continue
        last = path[-1] if path else ""
        if last in ("inflight", "in_flight"):
            out["inflight"] = out.get("inflight", 0) + value
        elif any("error" in part or part in ("ioerr", "unsupp") for part in path):
            out["errors"] = out.get("errors", 0) + value
        elif any("bytes" in part for part in path):
            out["bytes"] = out.get("bytes", 0) + value
        else:
            t = _type_of(last)
            if t is not None:
                out[t] = out.get(t, 0) + value
            elif last in ("requests", "reqs", "ops") and len(path) == 1:
                out["requests"] = out.get("requests", 0) + value
    if "requests" not in out:
        out["requests"] = sum(out.get(t, 0) for t in TYPES)
    return out


def queues_of(stats: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The per-queue stats of a device: ``queues`` as a list or as ``{index: stats}``."""
    qs = stats.get("queues")
    if isinstance(qs, list):
        return {int(q.get("index", i)): q for i, q in enumerate(qs) if isinstance(q, dict)}
    if isinstance(qs, dict):
        out = {}
        for k, v in qs.items():
            if isinstance(v, dict):
                try:
                    out[int(k)] = v
                except ValueError:
                    continue
        return out
    return {}


def queue_requests(stats: dict[str, Any]) -> dict[int, int]:
    """Queue index -> requests counted so far (empty if the device has no per-queue stats)."""
    return {i: int(summarize(q)["requests"]) for i, q in queues_of(stats).items()}


def thread_requests(stats: dict[str, Any]) -> dict[str, int]:
    """Thread name -> requests its C loop processed (native datapath)."""
    return {
        t["name"]: int(t.get("loop", {}).get("requests", 0))
        for t in stats.get("iothreads", [])
        if isinstance(t, dict) and "name" in t
    }


# -- the view ----------------------------------------------------------------------------------


def _rows(stats: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    rows = [("all", summarize({k: v for k, v in stats.items() if k != "queues"}))]
    for i, q in sorted(queues_of(stats).items()):
        rows.append((f"q{i}", summarize(q)))
    if len(rows) == 1:
        # No per-queue counters: each thread's loop counts its requests (native datapath).
        for n, count in enumerate(thread_requests(stats).values()):
            rows.append((f"t{n}", {"requests": count}))
    if len(rows) > 1 and rows[0][1]["requests"] == 0:
        # No device-wide counters: the sum of the queues.
        total: dict[str, float] = {}
        for _, r in rows[1:]:
            for k, v in r.items():
                total[k] = total.get(k, 0) + v
        rows[0] = ("all", total)
    return rows


_HEAD = (
    f"{'device':<12} {'queue':>5} {'IOPS':>9} {'read':>9} {'write':>9} {'flush':>7} "
    f"{'other':>7} {'MiB/s':>8} {'inflight':>8} {'errors':>7} {'thrott/s':>8} {'size':>9} "
    "state"
)


def render(
    prev: dict[str, Any], cur: dict[str, Any], devices: dict[str, dict[str, Any]] | None = None
) -> str:
    """The table of rates between two snapshots; ``devices`` (name -> the ``devices`` entry)
    adds each device's size and state (listening, connected, failed) to its ``all`` row, and
    the reason of a failure below the table."""
    devices = devices or {}
    dt = max(cur["time"] - prev["time"], 1e-6)
    lines = [
        f"dataplane stat: {len(cur['devices'])} device(s), "
        f"{time.strftime('%H:%M:%S', time.localtime(cur['time']))}, over {dt:.2f} s",
        _HEAD,
    ]
    for name, stats in cur["devices"].items():
        before = dict(_rows(prev["devices"].get(name, {})))
        for label, now in _rows(stats):
            old = before.get(label, {})

            def rate(key: str, now=now, old=old) -> float:
                return max(now.get(key, 0) - old.get(key, 0), 0) / dt

            other = sum(rate(t) for t in ("discard", "write_zeroes", "get_id", "other"))
            tail = ""
            if label == "all":
                info = devices.get(name, {})
                throttled = rate_of(stats, prev["devices"].get(name, {}), "throttled", dt)
                size = human_bytes(info["size"]) if "size" in info else "-"
                state = "failed" if stats.get("failed") else state_of(info) if info else "-"
                tail = f" {throttled:>8.0f} {size:>9} {state}"
            lines.append(
                f"{name[:12]:<12} {label:>5} {rate('requests'):>9.0f} {rate('read'):>9.0f} "
                f"{rate('write'):>9.0f} {rate('flush'):>7.0f} {other:>7.0f} "
                f"{rate('bytes') / 2**20:>8.1f} {now.get('inflight', 0):>8.0f} "
                f"{now.get('errors', 0):>7.0f}{tail}"
            )
        lines += _dirty_log_line(name, prev["devices"].get(name, {}), stats, dt)
    for name, stats in cur["devices"].items():
        if stats.get("failed"):
            lines.append(f"{name} failed: {stats['failed']}")
    return "\n".join(lines)


def rate_of(now: dict[str, Any], old: dict[str, Any], key: str, dt: float) -> float:
    """A device-wide counter's rate between two snapshots of the device."""
    return max(float(now.get(key, 0)) - float(old.get(key, 0)), 0.0) / dt


def _dirty_log_line(name: str, prev: dict[str, Any], cur: dict[str, Any], dt: float) -> list[str]:
    """Live migration's dirty logging, for a device that logs or did (C datapath)."""
    pages = cur.get("dirty-pages-logged", 0)
    if not cur.get("dirty-log") and not pages:
        return []
    rate = rate_of(cur, prev, "dirty-pages-logged", dt)
    state = "on" if cur.get("dirty-log") else "off"
    return [f"{name[:12]:<12} dirty log {state}: {rate:.0f} pages/s logged, {pages} in all"]


def main(args: argparse.Namespace) -> int:
    args.socket = mgmt_socket.mgmt_path(args)
    client = mgmt_socket.connect(args.socket)
    try:
        return _main(args, client)
    except (OSError, ConnectionError, ValueError) as e:
        print(f"dataplane: error: {args.socket}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def _devices(client: MgmtClient) -> dict[str, dict[str, Any]]:
    resp = client.request("devices")
    return {d["name"]: d for d in resp.get("devices", [])} if resp["ok"] else {}


def _snap(client: MgmtClient, name: str | None) -> dict[str, Any]:
    fields = {"name": name} if name is not None else {}
    resp = client.request("stats", **fields)
    if not resp["ok"]:
        raise UsageError(str(resp.get("error")))
    return resp


def _main(args: argparse.Namespace, client: MgmtClient) -> int:
    if args.layers:
        return _layers(args, client)
    if args.json:
        print(json.dumps(_snap(client, args.name), indent=2))
        return 0
    if args.prometheus:
        fields = {"name": args.name} if args.name is not None else {}
        resp = client.request("metrics", **fields)
        if not resp["ok"]:
            raise UsageError(str(resp.get("error")))
        sys.stdout.write(resp["text"])
        return 0
    tty = sys.stdout.isatty()
    prev = _snap(client, args.name)
    shown = 0
    while args.count is None or shown < args.count:
        time.sleep(args.interval)
        cur = _snap(client, args.name)
        text = render(prev, cur, _devices(client))
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()
        prev = cur
        shown += 1
    return 0


def _layers(args: argparse.Namespace, client: MgmtClient) -> int:
    if args.prometheus:
        raise UsageError("--layers and --prometheus do not go together: pick one")
    prev = _snap(client, args.name)
    if args.json and args.count is None:
        print(json.dumps(layer_figures(prev), indent=2))
        return 0
    tty = sys.stdout.isatty() and not args.json
    shown = 0
    while args.count is None or shown < args.count:
        time.sleep(args.interval)
        cur = _snap(client, args.name)
        figures = layer_figures(cur, prev)
        if args.json:
            text = json.dumps(figures, indent=2)
        else:
            over = (
                f"{time.strftime('%H:%M:%S', time.localtime(cur['time']))}, over "
                f"{max(cur['time'] - prev['time'], 0):.2f} s"
            )
            text = render_layers(figures, over)
        sys.stdout.write(("\x1b[H\x1b[2J" + text + "\n") if tty else text + "\n\n")
        sys.stdout.flush()
        prev = cur
        shown += 1
    return 0


__all__ = [
    "queue_requests",
    "render",
    "summarize",
    "thread_requests",
]

"""What the management socket and ``/metrics`` report of each device, as JSON-ready dicts."""

from __future__ import annotations

import time
from typing import Any

from dataplane.errors import UsageError
from dataplane.serve.blkdev import BlkDevice
from dataplane.serve.device_keys import spec_of
from dataplane.serve.devices import DeviceSet, Served

__all__ = ["device_info", "device_stats", "metrics_snapshot", "snapshot", "thread_info"]


def thread_info(device: BlkDevice, *, loop: bool = False) -> list[dict[str, Any]]:
    out = []
    for t in device.threads:
        info: dict[str, Any] = {
            "name": t.name,
            "tid": t.native_id,
            "queues": sorted(t.datapath.rings),
            "cpus": list(t.cpus),
        }
        loop_stats = getattr(t.datapath, "stats", None)
        if loop and callable(loop_stats):
            info["loop"] = loop_stats()
        out.append(info)
    return out


def device_info(s: Served) -> dict[str, Any]:
    info = spec_of(s.opts)
    info["engine"] = s.device.engine_name
    info["size"] = s.device.disk.sectors * 512  # bytes: the capacity the guest is offered
    info["image-kind"] = s.device.kind
    info["connected"] = s.server.connected
    info["connections"] = s.server.connections
    info["state"] = "failed" if s.device.failed is not None else "serving"
    if s.device.failed is not None:
        info["error"] = s.device.failed
    info["threads"] = thread_info(s.device)
    info["throttled-ns"] = s.device.limiter.throttled_ns  # time requests waited for limits
    info["dirty-log"] = s.device.dirty_log_on  # live migration: pages written are logged
    info["dirty-pages-logged"] = s.device.dirty_pages_logged()
    return info


def device_stats(s: Served) -> dict[str, Any]:
    """``BlkDevice.stats()`` (per-device and per-queue counters) plus the threads."""
    stats_fn = getattr(s.device, "stats", None)
    stats: dict[str, Any] = dict(stats_fn()) if callable(stats_fn) else {}
    stats["iothreads"] = thread_info(s.device, loop=True)
    return stats


def snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    if name is not None and name not in devices.served:
        raise UsageError(f"no device named {name!r}")
    return {
        "ok": True,
        "time": time.time(),
        "devices": {
            s.opts.name: device_stats(s) for s in devices if name is None or s.opts.name == name
        },
    }


def metrics_snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    """What metrics.py exports: each device's stats and settings, taken on the event loop."""
    snap = snapshot(devices, name)
    for s in devices:
        if s.opts.name in snap["devices"]:
            info = device_info(s)
            snap["devices"][s.opts.name] = {"stats": snap["devices"][s.opts.name], "info": info}
    return snap

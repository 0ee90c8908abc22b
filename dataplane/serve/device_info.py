"""What the management socket and ``/metrics`` report of one device, as JSON-ready dicts
(mgmt.py gathers them for the devices of the process)."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

from dataplane.device.blkdev import BlkDevice, default_serial
from dataplane.device.settings import DEFAULT_POLL_US, REMOTE_POLL_US
from dataplane.serve.device_keys import spec_of
from dataplane.serve.device_options import DeviceOptions
from dataplane.serve.front import DeviceFront
from dataplane.serve.sockets import SOCKET_MODE

__all__ = ["device_info", "device_stats", "thread_info"]


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


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def poll_us_in_effect(opts: DeviceOptions) -> int:
    """The polling window the device runs with: poll-us as given, else its datapath's default
    (a file's native datapath: DEFAULT_POLL_US; a remote disk: REMOTE_POLL_US; python: 0)."""
    if opts.poll_us is not None:
        return opts.poll_us
    if opts.datapath != "native":
        return 0
    return DEFAULT_POLL_US if opts.kind == "file" else REMOTE_POLL_US


def device_info(opts: DeviceOptions, device: BlkDevice, server: DeviceFront) -> dict[str, Any]:
    """A ``devices`` entry: the keys in effect, and the state of the device and its socket."""
    info = spec_of(opts)
    # The values in effect where the user left a key out (spec_of has None there).
    info["serial"] = opts.serial if opts.serial is not None else default_serial(opts.image)
    info["poll-us"] = poll_us_in_effect(opts)
    if isinstance(opts.socket, Path):
        if info.get("socket-mode") is None:
            info["socket-mode"] = f"{SOCKET_MODE:04o}"  # what claim_socket_path gives it
        for key, name in (("socket-owner", _user_name), ("socket-group", _group_name)):
            if info.get(key) is None:  # the process's own: say whose
                info[key] = name(os.geteuid() if key == "socket-owner" else os.getegid())
    info["engine"] = device.engine_name
    info["size"] = device.disk.sectors * 512  # bytes: the capacity the guest is offered
    info["image-kind"] = device.kind
    info["connected"] = server.connected
    info["connections"] = server.connections
    info["state"] = "failed" if device.failed is not None else "serving"
    if device.failed is not None:
        info["error"] = device.failed
    info["threads"] = thread_info(device)
    info["throttled-ns"] = device.limiter.throttled_ns  # time requests waited for limits
    info["dirty-log"] = device.dirty_log_on  # live migration: pages written are logged
    info["dirty-pages-logged"] = device.dirty_pages_logged()
    return info


def device_stats(device: BlkDevice) -> dict[str, Any]:
    """``BlkDevice.stats()`` (per-device and per-queue counters) plus the threads."""
    stats_fn = getattr(device, "stats", None)
    stats: dict[str, Any] = dict(stats_fn()) if callable(stats_fn) else {}
    stats["iothreads"] = thread_info(device, loop=True)
    return stats

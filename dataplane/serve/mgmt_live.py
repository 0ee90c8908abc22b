"""The management commands that change a serving device live: ``set-limits`` (and ``resize``).

Each takes the request object and answers a response object, or raises
UsageError with the one line the client is shown (mgmt.py).
"""

from __future__ import annotations

from typing import Any

from dataplane.errors import UsageError
from dataplane.serve.device_info import device_info
from dataplane.serve.devices import DeviceSet, Served
from dataplane.serve.limit_keys import with_limits

__all__ = ["set_limits"]


def _served(devices: DeviceSet, req: dict[str, Any], cmd: str) -> Served:
    name = req.get("name")
    if not isinstance(name, str):
        raise UsageError(f'{cmd} needs "name"')
    served = devices.served.get(name)
    if served is None:
        raise UsageError(f"no device named {name!r}")
    return served


def set_limits(devices: DeviceSet, req: dict[str, Any]) -> dict[str, Any]:
    """``{"cmd": "set-limits", "name": NAME, "limits": {KEY: VALUE...}}``: the limit keys
    given change at once (the others stay); answers the device as ``devices`` shows it."""
    served = _served(devices, req, "set-limits")
    keys = req.get("limits")
    if not isinstance(keys, dict):
        raise UsageError('set-limits needs "limits": {"iops-limit": N, ...}')
    opts = with_limits(served.opts, keys, f"set-limits {served.opts.name}")
    served.device.set_limits(opts)
    served.opts = opts
    return {"ok": True, "device": device_info(served)}

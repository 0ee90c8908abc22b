"""The management commands that change a serving device live: ``set-limits`` (and ``resize``).

Each takes the request object and answers a response object, or raises
UsageError with the one line the client is shown (mgmt.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dataplane.argtypes import SIZE_EXAMPLE, parse_size
from dataplane.device.limiter import Limits
from dataplane.errors import UsageError
from dataplane.serve.backend_channel import BackendChannelError
from dataplane.serve.device_info import device_info
from dataplane.serve.device_keys import LIMIT_KEYS, by_name
from dataplane.serve.device_options import DeviceOptions
from dataplane.serve.devices import DeviceSet, Served

__all__ = ["resize", "set_limits"]


def _served(devices: DeviceSet, req: dict[str, Any], cmd: str) -> Served:
    name = req.get("name")
    if not isinstance(name, str):
        raise UsageError(f'{cmd} needs "name"')
    return devices.lookup(name)


def with_limits(opts: DeviceOptions, keys: Mapping[str, Any], where: str) -> DeviceOptions:
    """``opts`` with the limit keys in ``keys`` changed, checked (UsageError names the key)."""
    changes: dict[str, int] = {}
    table = by_name()
    for raw, value in keys.items():
        key = table.get(str(raw).strip().replace("_", "-"))
        if key is None or not key.live:
            raise UsageError(f"{where}: {raw!r} is not a limit key (keys: {', '.join(LIMIT_KEYS)})")
        if opts.datapath != "native":
            raise UsageError(
                f"{where}: {key.name} needs the C datapath (datapath=native); the "
                f"{opts.datapath} datapath is a teaching reference without it"
            )
        try:
            changes[key.name] = key.parse(key.name, value)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    if not changes:
        raise UsageError(f"{where}: name at least one limit ({', '.join(LIMIT_KEYS)})")
    try:
        limits = Limits.from_keys({**opts.limits.keys(), **changes})
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    return replace(opts, limits=limits)


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


async def resize(devices: DeviceSet, req: dict[str, Any]) -> dict[str, Any]:
    """``{"cmd": "resize", "name": NAME}`` (the image file was grown: read its size again) or
    ``{..., "size": BYTES}`` (grow it to that); shrinking is refused.  The threads and the
    config space take the new capacity, and a connected frontend is told over the backend
    channel (CONFIG_CHANGE_MSG; QEMU then reads the config space and interrupts the guest).
    Answers the device with ``size`` and ``told``: true, or why the frontend was not told."""
    served = _served(devices, req, "resize")
    size = req.get("size")
    if size is not None:
        try:
            size = parse_size(size)  # type: ignore[arg-type]
        except ValueError:
            raise UsageError(
                f"resize: size {size!r} is not a number of bytes ({SIZE_EXAMPLE})"
            ) from None
    device = served.device
    before = device.disk.sectors
    sectors = await asyncio.to_thread(device.resize, size)
    told: bool | str = True
    session = served.server.session
    if sectors == before:
        told = "the size did not change"
    elif session is None:
        told = "no frontend is connected (it reads the new size when it connects)"
    else:
        try:
            await session.config_changed()
        except BackendChannelError as e:
            told = str(e)
    why = "the frontend was told" if told is True else f"the frontend was not told: {told}"
    devices.log.info("%s: %d sectors; %s", device.name, sectors, why)
    return {"ok": True, "device": {**device_info(served), "told": told}}

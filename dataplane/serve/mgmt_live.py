"""The management commands that change a serving device live: ``set-limits`` (and ``resize``).

Each takes the device a request names (mgmt.py looks it up) and the request, changes the
device, or raises UsageError with the one line the client is shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dataplane.argtypes import SIZE_EXAMPLE, parse_size
from dataplane.device.blkdev import BlkDevice
from dataplane.device.settings import Limits
from dataplane.errors import UsageError
from dataplane.serve.device_keys import LIMIT_KEYS, by_name
from dataplane.serve.device_options import DeviceOptions
from dataplane.serve.front import DeviceFront

__all__ = ["resize", "set_limits"]


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


def set_limits(opts: DeviceOptions, device: BlkDevice, req: dict[str, Any]) -> DeviceOptions:
    """``{"cmd": "set-limits", "name": NAME, "limits": {KEY: VALUE...}}``: the limit keys
    given change at once (the others stay); the device's options after."""
    keys = req.get("limits")
    if not isinstance(keys, dict):
        raise UsageError('set-limits needs "limits": {"iops-limit": N, ...}')
    opts = with_limits(opts, keys, f"set-limits {opts.name}")
    device.set_limits(opts)
    return opts


async def resize(device: BlkDevice, server: DeviceFront, req: dict[str, Any]) -> bool | str:
    """``{"cmd": "resize", "name": NAME}`` (the image file was grown: read its size again) or
    ``{..., "size": BYTES}`` (grow it to that); shrinking is refused.  The threads and the
    config space take the new capacity, and a connected frontend is told over the backend
    channel (CONFIG_CHANGE_MSG; QEMU then reads the config space and interrupts the guest).
    ``told``: true, or why the frontend was not told."""
    size = req.get("size")
    if size is not None:
        try:
            size = parse_size(size)  # type: ignore[arg-type]
        except ValueError:
            raise UsageError(
                f"resize: size {size!r} is not a number of bytes ({SIZE_EXAMPLE})"
            ) from None
    before = device.disk.sectors
    sectors = await asyncio.to_thread(device.resize, size)
    told = "the size did not change" if sectors == before else await server.config_changed()
    why = "the frontend was told" if told is True else f"the frontend was not told: {told}"
    device.log.info("%s: %d sectors; %s", device.name, sectors, why)
    return told

"""csrc/device/dp_engine.h: ``struct dp_engine``, what the C loop submits to (local or remote)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dataplane.device.c import ffi, lib
from dataplane.device.c.io import CQueue, why_unavailable
from dataplane.errors import EngineUnavailable, TargetUnavailable
from dataplane.spec.choices import IO_URING, LINUX_AIO, NULL, THREADS

# The local engines by their --aio names, and the remote ones.
KINDS: dict[str, int] = {
    IO_URING: lib.DP_ENGINE_URING,
    LINUX_AIO: lib.DP_ENGINE_AIO,
    THREADS: lib.DP_ENGINE_THREADS,
    NULL: lib.DP_ENGINE_NULL,
}
REMOTE_KINDS: dict[str, int] = {"nbd": lib.DP_ENGINE_NBD, "rbd": lib.DP_ENGINE_RBD}
# What a remote target offers (struct dp_remote_info flags), as RemoteInfo names it.
REMOTE_FLAGS: dict[str, int] = {
    name: getattr(lib, "DP_REMOTE_" + name.upper())
    for name in ("read_only", "can_flush", "can_trim", "can_zero", "can_fua", "can_multi_conn")
}
NBD_RECONNECT_MS_DEFAULT: int = lib.DP_NBD_RECONNECT_MS_DEFAULT
REMOTE_OPEN_TIMEOUT_MS: int = lib.DP_REMOTE_OPEN_TIMEOUT_MS

__all__ = [
    "KINDS",
    "NBD_RECONNECT_MS_DEFAULT",
    "REMOTE_FLAGS",
    "REMOTE_KINDS",
    "REMOTE_OPEN_TIMEOUT_MS",
    "EngineHandle",
    "open_local",
    "open_remote",
]


class EngineHandle(CQueue, prefix="dp_engine", what="engine submit"):
    """One ``struct dp_engine``, named by its kind (a KINDS or REMOTE_KINDS key).  ``handle``
    is what the C thread takes (dp_thread_new): the C datapath drives a local engine
    (engines/local.py) and a remote one (engines/remote.py) alike.

    ``submit`` and ``reap`` are for tools and tests that drive an engine
    directly; the C datapath never calls them (its loop is C).
    """

    def __init__(self, name: str, ptr: Any, queue_depth: int) -> None:
        super().__init__(ptr, queue_depth)
        self.name = name
        self._info: Any = None

    def ready(self) -> bool:
        """Completions wait to be reaped (no syscall)."""
        return bool(lib.dp_engine_ready(self._ptr))

    def remote_info(self) -> dict[str, int]:
        """struct dp_remote_info as a dict (a remote engine only), read now."""
        if self._info is None:
            self._info = ffi.new("struct dp_remote_info *")
        lib.dp_engine_remote_info(self._ptr, self._info)
        c = self._info
        fields = ("size", "flags", "block_min", "block_opt", "block_max", "reconnects")
        return {"connected": c.connected, **{name: getattr(c, name) for name in fields}}


def open_local(name: str, fd: int, queue_depth: int, uring_flags: int = 0) -> Any:
    """Engine ``name`` (a KINDS key) on ``fd``, for ``EngineHandle``; EngineUnavailable if not."""
    if queue_depth < 1:
        raise ValueError(f"queue depth {queue_depth} must be at least 1")
    err = ffi.new("int *")
    handle = lib.dp_engine_open(KINDS[name], fd, queue_depth, uring_flags, err)
    if handle == ffi.NULL:
        raise EngineUnavailable(why_unavailable(name, queue_depth, -err[0]))
    return handle


def open_remote(
    kind: str, target: str, params: Mapping[str, str | os.PathLike[str] | int | None],
    queue_depth: int,
) -> Any:  # fmt: skip
    """A remote engine (a REMOTE_KINDS key) on ``target``, for ``EngineHandle``; or
    TargetUnavailable saying why not.

    ``params`` are struct dp_remote_params fields; strings and paths are copied
    for the call, None is NULL.  Blocks while the engine connects.
    """
    keep: list[Any] = []
    fields: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            fields[key] = ffi.NULL
        elif isinstance(value, int):
            fields[key] = value
        else:
            keep.append(ffi.new("char[]", os.fsencode(value)))
            fields[key] = keep[-1]
    c_params = ffi.new("struct dp_remote_params *", fields)
    msg = ffi.new("char[]", lib.DP_REMOTE_MSG_SIZE)
    err = ffi.new("int *")
    handle = lib.dp_engine_open_remote(
        REMOTE_KINDS[kind], c_params, queue_depth, msg, len(msg), err
    )
    if handle == ffi.NULL:
        reason = ffi.string(msg).decode(errors="replace") or os.strerror(-err[0])
        raise TargetUnavailable(f"{target}: {' '.join(reason.split())}")
    return handle

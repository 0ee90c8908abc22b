"""csrc/dp_engine.h: ``struct dp_engine``, what the C loop submits to (local or remote)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dataplane.device.c import ffi, lib
from dataplane.device.c.aio import why_unavailable as aio_why
from dataplane.device.c.io import IoBatch
from dataplane.device.c.uring import why_unavailable as uring_why
from dataplane.errors import EngineUnavailable, TargetUnavailable

if TYPE_CHECKING:
    from dataplane.device.engines.base import IoRequest

# The local engines by their --aio names.
KINDS: dict[str, int] = {
    "io_uring": lib.DP_ENGINE_URING,
    "native": lib.DP_ENGINE_AIO,
    "threads": lib.DP_ENGINE_THREADS,
    "null": lib.DP_ENGINE_NULL,
}
REMOTE_KINDS: dict[str, int] = {"nbd": lib.DP_ENGINE_NBD, "rbd": lib.DP_ENGINE_RBD}
# What a remote target offers (struct dp_remote_info flags).
REMOTE_FLAGS: dict[str, int] = {
    "read_only": lib.DP_REMOTE_READ_ONLY,
    "can_flush": lib.DP_REMOTE_CAN_FLUSH,
    "can_trim": lib.DP_REMOTE_CAN_TRIM,
    "can_zero": lib.DP_REMOTE_CAN_ZERO,
    "can_fua": lib.DP_REMOTE_CAN_FUA,
    "can_multi_conn": lib.DP_REMOTE_CAN_MULTI_CONN,
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


class EngineHandle:
    """One ``struct dp_engine``.  ``handle`` is what the C thread takes (dp_thread_new).

    ``submit`` and ``reap`` are for tools and tests that drive an engine
    directly; the native datapath never calls them (its loop is C).
    """

    def __init__(self, handle: Any, queue_depth: int, what: str) -> None:
        self.handle: Any = handle
        self.queue_depth = queue_depth
        self._what = what
        self._batch: IoBatch | None = None
        self._info: Any = None

    @property
    def completion_fd(self) -> int:
        return lib.dp_engine_completion_fd(self.handle)

    def ready(self) -> bool:
        """Completions wait to be reaped (no syscall)."""
        return bool(lib.dp_engine_ready(self.handle))

    def _requests(self) -> IoBatch:
        if self._batch is None:
            self._batch = IoBatch(self.queue_depth)
        return self._batch

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        self._requests().submit(lib.dp_engine_submit, self.handle, reqs, f"{self._what} submit")

    def reap(self) -> list[tuple[int, int]]:
        return self._requests().reap(lib.dp_engine_reap, self.handle)

    def remote_info(self) -> dict[str, int]:
        """struct dp_remote_info as a dict (a remote engine only), read now."""
        if self._info is None:
            self._info = ffi.new("struct dp_remote_info *")
        lib.dp_engine_remote_info(self.handle, self._info)
        c = self._info
        return {
            "size": c.size,
            "flags": c.flags,
            "block_min": c.block_min,
            "block_opt": c.block_opt,
            "block_max": c.block_max,
            "reconnects": c.reconnects,
            "connected": c.connected,
        }

    def close(self) -> None:
        if self.handle != ffi.NULL:
            lib.dp_engine_close(self.handle)
            self.handle = ffi.NULL


def open_local(name: str, fd: int, queue_depth: int, uring_flags: int = 0) -> EngineHandle:
    """Engine ``name`` (a KINDS key) on ``fd``; EngineUnavailable saying why not."""
    if queue_depth < 1:
        raise ValueError(f"queue depth {queue_depth} must be at least 1")
    err = ffi.new("int *")
    handle = lib.dp_engine_open(KINDS[name], fd, queue_depth, uring_flags, err)
    if handle == ffi.NULL:
        e = -err[0]
        if name == "io_uring":
            why = uring_why(e)
        elif name == "native":
            why = aio_why(queue_depth, e)
        else:
            why = f"{name} engine: {os.strerror(e)}"
        raise EngineUnavailable(why)
    return EngineHandle(handle, queue_depth, name)


def open_remote(
    kind: str, target: str, params: Mapping[str, str | os.PathLike[str] | int | None],
    queue_depth: int,
) -> EngineHandle:  # fmt: skip
    """A remote engine (a REMOTE_KINDS key) on ``target``; TargetUnavailable saying why not.

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
    return EngineHandle(handle, queue_depth, kind)

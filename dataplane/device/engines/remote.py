"""The remote engines of the native data path: NBD (libnbd) and Ceph RBD (librbd).

Both are ``struct dp_engine`` (csrc/dp_engine.c) opened on a target instead of an
image fd (``dp_engine_open_remote``), and the native data path drives them as it
drives a ``CEngine``: ``name``, ``handle`` and ``queue_depth`` are all it uses.
``submit`` and ``reap`` are here for tests and tools that drive an engine directly.

Targets:

- NBD: ``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH`` (libnbd
  parses them; TLS forms ``nbds://`` too).  ``reconnect_s`` is how long requests
  wait for a dropped server before they fail with IOERR.
- RBD: ``rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]`` with ``conf``, ``user`` and ``keyring``
  (QEMU's ``conf``, ``id`` and ``keyring``; the device keys ``ceph-conf``,
  ``ceph-user``, ``ceph-keyring``).  A snapshot is served read-only.

``info`` says what the target offers (capacity, read-only, flush, trim, zero, FUA,
multi-conn, block sizes): the device's config space follows it.  Opening blocks while
the engine connects (up to ``timeout_s``); a target that cannot be opened raises
``TargetUnavailable`` with one line that names it and says why.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dataplane.clib import ffi, lib
from dataplane.device.engines.base import IoRequest
from dataplane.device.engines.uring import NativeRequests, check_submit
from dataplane.errors import TargetUnavailable, UsageError
from dataplane.spec.targets import RbdSpec, check_nbd_uri, image_kind, parse_rbd_spec

DEFAULT_RECONNECT_S = lib.DP_NBD_RECONNECT_MS_DEFAULT / 1000
DEFAULT_TIMEOUT_S = lib.DP_REMOTE_OPEN_TIMEOUT_MS / 1000
MAX_SECONDS = 3600.0
SECTOR_SIZE = 512


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """What the target offers, as the engine found it (csrc/dp_remote.h)."""

    size: int
    read_only: bool
    can_flush: bool
    can_trim: bool
    can_zero: bool
    can_fua: bool
    can_multi_conn: bool
    block_min: int
    block_opt: int
    block_max: int  # 0: no limit
    reconnects: int
    connected: bool

    @property
    def sectors(self) -> int:
        """The capacity in 512-byte sectors (a partial last sector is not offered)."""
        return self.size // SECTOR_SIZE

    @classmethod
    def from_c(cls, c: Any) -> RemoteInfo:
        f = c.flags
        return cls(
            size=c.size,
            read_only=bool(f & lib.DP_REMOTE_READ_ONLY),
            can_flush=bool(f & lib.DP_REMOTE_CAN_FLUSH),
            can_trim=bool(f & lib.DP_REMOTE_CAN_TRIM),
            can_zero=bool(f & lib.DP_REMOTE_CAN_ZERO),
            can_fua=bool(f & lib.DP_REMOTE_CAN_FUA),
            can_multi_conn=bool(f & lib.DP_REMOTE_CAN_MULTI_CONN),
            block_min=c.block_min,
            block_opt=c.block_opt,
            block_max=c.block_max,
            reconnects=c.reconnects,
            connected=bool(c.connected),
        )


class RemoteEngine:
    """One remote ``struct dp_engine``; close it only with nothing in flight."""

    def __init__(self, name: str, handle: Any, queue_depth: int, target: str) -> None:
        self.name = name
        self.handle: Any = handle
        self.queue_depth = queue_depth
        self.target = target
        self._reqs = NativeRequests(queue_depth)
        self._info = ffi.new("struct dp_remote_info *")

    @property
    def info(self) -> RemoteInfo:
        """Read now: ``reconnects`` and ``connected`` follow the connection."""
        lib.dp_engine_remote_info(self.handle, self._info)
        return RemoteInfo.from_c(self._info)

    @property
    def completion_fd(self) -> int:
        """Readable while completions wait or the engine has socket or timer work to do."""
        return lib.dp_engine_completion_fd(self.handle)

    def ready(self) -> bool:
        """Completions wait to be reaped (no syscall)."""
        return bool(lib.dp_engine_ready(self.handle))

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        """Start every request; at most ``queue_depth`` may be outstanding."""
        if not reqs:
            return
        ios = self._reqs.prepare(reqs)
        ret = lib.dp_engine_submit(self.handle, ios, len(reqs))
        if ret < 0:
            self._reqs.forget(reqs)
        check_submit(ret, f"{self.name} submit")

    def reap(self) -> list[tuple[int, int]]:
        """``(token, result)`` of finished requests, without blocking (drives the engine)."""
        n = lib.dp_engine_reap(self.handle, self._reqs.cqes, self.queue_depth)
        return self._reqs.finish(n)

    def close(self) -> None:
        if self.handle != ffi.NULL:
            lib.dp_engine_close(self.handle)
            self.handle = ffi.NULL


def _seconds(name: str, value: float, *, zero_ok: bool) -> int:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UsageError(f"{name}={value!r} is not a number of seconds")
    if not (0 <= value <= MAX_SECONDS) or (value == 0 and not zero_ok):
        low = "0" if zero_ok else "more than 0"
        raise UsageError(f"{name}={value} must be from {low} to {MAX_SECONDS:g} seconds")
    return round(value * 1000)


def _depth(queue_depth: int) -> int:
    if not isinstance(queue_depth, int) or queue_depth < 1:
        raise UsageError(f"queue depth {queue_depth!r} must be a positive integer")
    return queue_depth


def _open(kind: int, name: str, target: str, params: Any, queue_depth: int) -> RemoteEngine:
    msg = ffi.new("char[]", lib.DP_REMOTE_MSG_SIZE)
    err = ffi.new("int *")
    handle = lib.dp_engine_open_remote(kind, params, queue_depth, msg, len(msg), err)
    if handle == ffi.NULL:
        reason = ffi.string(msg).decode(errors="replace") or os.strerror(-err[0])
        raise TargetUnavailable(f"{target}: {' '.join(reason.split())}")
    return RemoteEngine(name, handle, queue_depth, target)


def open_nbd(
    uri: str,
    queue_depth: int,
    *,
    reconnect_s: float = DEFAULT_RECONNECT_S,
    read_only: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RemoteEngine:
    """Connect to the NBD export ``uri`` (one connection: one per dataplane thread)."""
    try:
        check_nbd_uri(uri)
    except ValueError as e:
        raise UsageError(str(e)) from None
    keep = [ffi.new("char[]", uri.encode())]
    params = ffi.new(
        "struct dp_remote_params *",
        {
            "uri": keep[0],
            "reconnect_ms": _seconds("reconnect-s", reconnect_s, zero_ok=True),
            "timeout_ms": _seconds("timeout", timeout_s, zero_ok=False),
            "read_only": int(read_only),
        },
    )
    return _open(lib.DP_ENGINE_NBD, "nbd", uri, params, _depth(queue_depth))


def open_rbd(
    spec: str | RbdSpec,
    queue_depth: int,
    *,
    conf: str | os.PathLike[str] | None = None,
    user: str | None = None,
    keyring: str | os.PathLike[str] | None = None,
    read_only: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RemoteEngine:
    """Open the RBD image ``spec`` (``rbd:POOL/IMAGE[@SNAP]``); a snapshot is read-only."""
    try:
        rbd = spec if isinstance(spec, RbdSpec) else parse_rbd_spec(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for key, path in (("ceph-conf", conf), ("ceph-keyring", keyring)):
        if path is not None and not os.path.isfile(path):
            raise TargetUnavailable(f"{rbd}: {key}={os.fspath(path)} is not a readable file")
    if user is not None:
        user = user.removeprefix("client.")
        if not user or not re.fullmatch(r"[A-Za-z0-9_.-]+", user):
            raise UsageError(f"ceph-user={user!r} is not a Ceph client id (e.g. admin)")
    keep: list[Any] = []

    def c_str(value: str | os.PathLike[str] | None) -> Any:
        if value is None:
            return ffi.NULL
        keep.append(ffi.new("char[]", os.fsencode(value)))
        return keep[-1]

    params = ffi.new(
        "struct dp_remote_params *",
        {
            "pool": c_str(rbd.pool),
            "ns": c_str(rbd.namespace),
            "image": c_str(rbd.image),
            "snap": c_str(rbd.snap),
            "conf": c_str(conf),
            "user": c_str(user),
            "keyring": c_str(keyring),
            "timeout_ms": _seconds("timeout", timeout_s, zero_ok=False),
            "read_only": int(read_only),
        },
    )
    return _open(lib.DP_ENGINE_RBD, "rbd", str(rbd), params, _depth(queue_depth))


def check_iothreads(info: RemoteInfo, iothreads: int, target: str) -> None:
    """Refuse ``iothreads`` > 1 where one connection per thread is not safe."""
    if iothreads <= 1 or info.can_multi_conn:
        return
    if image_kind(target) == "rbd":
        why = "an RBD image is served through one handle (two would take its lock from each other)"
    else:
        why = (
            "the NBD server does not advertise multi-conn (data consistent across "
            "connections), as qemu-nbd does with --shared=N for N > 1"
        )
    raise UsageError(
        f"{target}: iothreads={iothreads} needs one connection per thread, but {why}: "
        "use iothreads=1"
    )

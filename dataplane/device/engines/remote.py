"""The remote engines of the C datapath: NBD (libnbd) and Ceph RBD (librbd).

Both are ``struct dp_engine`` (csrc/device/dp_engine.c) opened on a target instead of an
image fd (``dp_engine_open_remote``), and the C datapath drives them as it
drives a ``LocalEngine``: ``name``, ``handle`` and ``queue_depth`` are all it uses.
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
from dataclasses import dataclass
from typing import Any

from dataplane.device.c.engine import (
    NBD_RECONNECT_MS_DEFAULT,
    REMOTE_FLAGS,
    REMOTE_OPEN_TIMEOUT_MS,
    EngineHandle,
    open_remote,
)
from dataplane.errors import TargetUnavailable, UsageError
from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.targets import RbdSpec, check_nbd_uri, image_kind, parse_rbd_spec

DEFAULT_RECONNECT_S = NBD_RECONNECT_MS_DEFAULT / 1000
DEFAULT_TIMEOUT_S = REMOTE_OPEN_TIMEOUT_MS / 1000
MAX_SECONDS = 3600.0
# No polling on a remote disk unless asked for: a remote engine's completions arrive on its
# socket or eventfd, which the polling loop does not look at (it sees only completions already
# reaped), so every reply would wait out the window (4 KiB randread at QD1 over NBD: 4k IOPS
# polling, 55k not; bench/RESULTS.md).  A file's default is DEFAULT_POLL_US
# (datapath/factory.py says why).
REMOTE_POLL_US = 0


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """What the target offers, as the engine found it (csrc/device/dp_remote.h)."""

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
    def from_c(cls, c: dict[str, int]) -> RemoteInfo:
        """From ``EngineHandle.remote_info()`` (struct dp_remote_info)."""
        flags = {name: bool(c["flags"] & bit) for name, bit in REMOTE_FLAGS.items()}
        return cls(
            size=c["size"],
            block_min=c["block_min"],
            block_opt=c["block_opt"],
            block_max=c["block_max"],
            reconnects=c["reconnects"],
            connected=bool(c["connected"]),
            **flags,
        )


class RemoteEngine(EngineHandle):
    """One remote ``struct dp_engine``; close it only with nothing in flight.

    The C datapath drives it as it drives a ``LocalEngine`` (``handle``);
    ``submit`` and ``reap`` are for tests and tools that drive it directly.
    """

    def __init__(self, name: str, handle: Any, queue_depth: int, target: str) -> None:
        super().__init__(name, handle, queue_depth)
        self.target = target

    @property
    def info(self) -> RemoteInfo:
        """Read now: ``reconnects`` and ``connected`` follow the connection."""
        return RemoteInfo.from_c(self.remote_info())


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


def _open(kind: str, target: str, params: dict[str, Any], queue_depth: int) -> RemoteEngine:
    handle = open_remote(kind, target, params, queue_depth)
    return RemoteEngine(kind, handle, queue_depth, target)


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
    params = {
        "uri": uri,
        "reconnect_ms": _seconds("reconnect-s", reconnect_s, zero_ok=True),
        "timeout_ms": _seconds("timeout", timeout_s, zero_ok=False),
        "read_only": int(read_only),
    }
    return _open("nbd", uri, params, _depth(queue_depth))


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
    params = {
        "pool": rbd.pool,
        "ns": rbd.namespace,
        "image": rbd.image,
        "snap": rbd.snap,
        "conf": conf,
        "user": user,
        "keyring": keyring,
        "timeout_ms": _seconds("timeout", timeout_s, zero_ok=False),
        "read_only": int(read_only),
    }
    return _open("rbd", str(rbd), params, _depth(queue_depth))


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

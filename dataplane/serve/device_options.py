"""What a user chooses for one device: the options behind ``--device``, TOML and the flags;
the names the devices of one process take and what no two of them may share.

device_keys.py is the table of the keys that set them (its defaults are these),
device_checks.py checks them; the device wing's ``BlkDevice`` is built from them (they are
its ``DeviceSettings``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from dataplane.device.settings import DEFAULT_BOUNCE_BYTES, DEFAULT_RECONNECT_S, Limits, TestDelay
from dataplane.errors import UsageError
from dataplane.serve.activation import InheritedSocket
from dataplane.serve.socket_access import SocketAccess
from dataplane.spec.targets import image_kind

# The kinds of image (spec/targets.py image_kind) as a message names them.
KIND_TEXT = {"file": "an image file", "nbd": "an NBD export", "rbd": "an RBD image"}
DEFAULT_QUEUE_SIZE = 256
MAX_QUEUES = 64
DEFAULT_BOUNCE_MIB = DEFAULT_BOUNCE_BYTES >> 20


@dataclass(slots=True)
class DeviceOptions:
    """What a user chooses for one device (the ``serve`` flags)."""

    image: Path | str  # an image file, or a remote disk's target (image_kind: nbd, rbd)
    aio: str = "io_uring"
    cache: str = "none"
    num_queues: int = 1
    queue_size: int = DEFAULT_QUEUE_SIZE
    read_only: bool = False
    serial: str | None = None
    datapath: str = "native"
    poll_us: int | None = None  # None: the datapath's default (datapath.factory.DEFAULT_POLL_US)
    name: str = ""  # "" until named (assign_names): vblk<N>
    # Where the server listens (not used by BlkDevice itself): a path, or an inherited
    # listening fd (activation.InheritedSocket: socket=fd:N, systemd socket activation).
    socket: Path | InheritedSocket | None = None
    socket_mode: int | None = None  # socket-mode=, -owner=, -group=: see socket_access.py
    socket_owner: str | None = None
    socket_group: str | None = None
    iothreads: int = 1  # dataplane threads; queue i runs on thread i % iothreads
    cpus: tuple[int, ...] = ()  # thread n is pinned to cpus[n % len(cpus)]; () = not pinned
    record: Path | None = None  # --record: the request trace file
    trace_requests: int = 0  # --trace-requests: narrate the first N requests
    bounce_mib: int = DEFAULT_BOUNCE_MIB  # bounce memory per dataplane thread
    reconnect_s: float = DEFAULT_RECONNECT_S  # NBD: how long requests wait for the server
    ceph_conf: Path | None = None  # RBD: ceph.conf, the client id and its keyring
    ceph_user: str | None = None
    ceph_keyring: Path | None = None
    limits: Limits = Limits()  # the I/O limit keys
    test_delay: TestDelay | None = None  # test hooks only: every Nth completion held back
    incoming: bool = False  # a live migration's destination: writes wait for the rings

    @property
    def kind(self) -> str:
        """What ``image`` names: "file", "nbd" or "rbd"."""
        return image_kind(self.image)

    def socket_access(self) -> SocketAccess:
        """What ``socket-mode``, ``socket-owner`` and ``socket-group`` ask for the socket file."""
        return SocketAccess(self.socket_mode, self.socket_owner, self.socket_group)


def assign_names(devices: list[DeviceOptions], taken: Iterable[str] = ()) -> list[DeviceOptions]:
    """Give every unnamed device the first free ``vblk<N>``."""
    used = set(taken) | {d.name for d in devices if d.name}
    out = []
    n = 0
    for d in devices:
        if not d.name:
            while f"vblk{n}" in used:
                n += 1
            d = replace(d, name=f"vblk{n}")
            used.add(d.name)
        out.append(d)
    return out


def _image_key(image: Path | str) -> str:
    """Two devices name the same disk when this is the same (a remote target: its text)."""
    if isinstance(image, str):
        return image
    try:
        return str(image.resolve())
    except OSError:
        return os.path.abspath(image)


def _socket_key(socket: Path | InheritedSocket) -> str:
    return str(socket) if isinstance(socket, InheritedSocket) else os.path.abspath(socket)


def check_unique(devices: Iterable[DeviceOptions], existing: Iterable[DeviceOptions] = ()) -> None:
    """No two devices share a name, a socket or an image."""
    seen: dict[tuple[str, str], str] = {}
    served = {d.name for d in existing}
    for d in [*existing, *devices]:
        assert d.socket is not None
        for what, key in (
            ("name", d.name),
            ("socket", _socket_key(d.socket)),
            ("image", _image_key(d.image)),
        ):
            if not key:
                continue
            other = seen.get((what, key))
            if other is not None and what == "name" and key in served:
                raise UsageError(f"a device named {key!r} is served already: choose another name=")
            if other is not None and what == "name":
                raise UsageError(f"two devices are named {key!r}: give each its own name=")
            if other is not None:
                raise UsageError(
                    f"device {d.name!r} has the same {what} as device {other!r}: {key}"
                )
            seen[(what, key)] = d.name

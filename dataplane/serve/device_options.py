"""What a user chooses for one device: the options behind ``--device``, TOML and the flags.

device_keys.py is the table of the keys that set them (its defaults are these),
device_checks.py checks them; blkdev.py builds a device from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dataplane.device.blk import DEFAULT_BOUNCE_BYTES
from dataplane.device.engines.delay import TestDelay
from dataplane.device.engines.remote import DEFAULT_RECONNECT_S
from dataplane.device.limiter import Limits
from dataplane.serve.activation import InheritedSocket
from dataplane.spec.targets import image_kind, parse_rbd_spec

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
    name: str = ""  # "" until named (config.assign_names): vblk<N>
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


def default_serial(image: Path | str) -> str:
    """The file, export or RBD image name, cut to the 20 bytes a virtio-blk ID holds."""
    kind = image_kind(image)
    if kind == "nbd":
        name = urlsplit(str(image)).path.lstrip("/")
    elif kind == "rbd":
        name = parse_rbd_spec(str(image)).image
    else:
        name = Path(image).name
    return name.encode()[:20].decode(errors="ignore") or "dataplane"

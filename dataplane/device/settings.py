"""What a device is built from: the settings ``BlkDevice`` reads (blkdev.py), and the
vocabulary of the device keys that set them (engines, datapaths, limits, defaults).

With blkdev.py, one of the two modules the serving floor may import of the device wing
(tests/test_layers.py): this one is light, for the floor's key table and options, which
need the words and not the device.  The serving floor's ``DeviceOptions``
(dataplane/serve/device_options.py, made from the device keys) is a ``DeviceSettings``;
the device wing names here only what it reads, so that it never imports the floor above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from dataplane.device.datapath.base import DATAPATHS
from dataplane.device.disk import DEFAULT_BOUNCE_BYTES, MIN_BLOCK
from dataplane.device.engines.delay import TestDelay, parse_test_delay
from dataplane.device.engines.remote import DEFAULT_RECONNECT_S, REMOTE_POLL_US
from dataplane.device.engines.remote import MAX_SECONDS as MAX_RECONNECT_S
from dataplane.device.limiter import BURST_KEY, Limits
from dataplane.device.limiter import KEYS as LIMIT_RATE_KEYS
from dataplane.spec.choices import DEFAULT_POLL_US
from dataplane.spec.ring import MAX_QUEUE_SIZE

__all__ = [
    "BURST_KEY",
    "DATAPATHS",
    "DEFAULT_BOUNCE_BYTES",
    "DEFAULT_POLL_US",
    "DEFAULT_RECONNECT_S",
    "LIMIT_RATE_KEYS",
    "MAX_RECONNECT_S",
    "MIN_BLOCK",
    "REMOTE_POLL_US",
    "DeviceSettings",
    "Limits",
    "TestDelay",
    "check_queue_size",
    "parse_test_delay",
]


class DeviceSettings(Protocol):
    """The settings of one device (each is a device key; see the README's key table)."""

    image: Path | str  # an image file, or a remote disk's target
    aio: str
    cache: str
    num_queues: int
    queue_size: int
    read_only: bool
    serial: str | None
    datapath: str
    poll_us: int | None
    iothreads: int
    cpus: tuple[int, ...]
    record: Path | None
    trace_requests: int
    bounce_mib: int
    reconnect_s: float
    ceph_conf: Path | None
    ceph_user: str | None
    ceph_keyring: Path | None
    limits: Limits
    test_delay: TestDelay | None
    incoming: bool

    @property
    def kind(self) -> str:
        """What ``image`` names: "file", "nbd" or "rbd"."""
        ...


def check_queue_size(n: int) -> bool:
    """Whether ``n`` can be a ring's size: a power of two from 2 to MAX_QUEUE_SIZE."""
    return 2 <= n <= MAX_QUEUE_SIZE and n & (n - 1) == 0

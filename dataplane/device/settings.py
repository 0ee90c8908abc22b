"""What a device is built from: the settings ``BlkDevice`` reads (blkdev.py).

The serving floor's ``DeviceOptions`` (dataplane/serve/device_options.py, made from the
device keys) is one; the device wing names here only what it reads, so that it never
imports the floor above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dataplane.device.engines.delay import TestDelay
    from dataplane.device.limiter import Limits

__all__ = ["DeviceSettings"]


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

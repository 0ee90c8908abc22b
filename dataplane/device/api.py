"""The device wing's public API: all that the serving floor (dataplane/serve/) may import
of it.  tests/test_layers.py holds the floor to this module.

- **A device's lifetime**: ``BlkDevice`` (built from ``DeviceSettings``: opened and started;
  ``resize``, ``set_limits``; ``close``), its image opened ahead (``open_device_image``,
  ``Image``) and the defaults it fills in (``default_serial``, the polling windows).
- **What a vhost-user session hands a device**: guest memory (``GuestMemory``,
  ``MAX_MEM_SLOTS``), the inflight area (``InflightArea``), the dirty log (``DirtyLog``), a
  ring's set-up (``RingSetup``), and the checks on the frontend's eventfds.
- **What the process sets up once**: the SIGBUS containment's wake-up fd, and its own
  confinement (another user, the seccomp allow-list; each device's threads load theirs
  with ``BlkDevice.confine``).
- **The vocabulary of the device keys**: engines, datapaths, limits, bounce memory, a remote
  disk's reconnect time, the test delay; and the stats' histogram buckets.
"""

from __future__ import annotations

from dataplane.device.blk import DEFAULT_BOUNCE_BYTES
from dataplane.device.blkdev import BlkDevice, check_queue_size, default_serial, open_device_image
from dataplane.device.bounce import MIN_BLOCK
from dataplane.device.c.sigbus import set_wake_fd as set_sigbus_wake_fd
from dataplane.device.datapath.base import DATAPATHS, RingSetup
from dataplane.device.datapath.factory import DEFAULT_POLL_US, REMOTE_POLL_US
from dataplane.device.dirty_log import DirtyLog
from dataplane.device.engines import ENGINES
from dataplane.device.engines.delay import TestDelay, parse_test_delay
from dataplane.device.engines.remote import DEFAULT_RECONNECT_S
from dataplane.device.engines.remote import MAX_SECONDS as MAX_RECONNECT_S
from dataplane.device.eventfd import check_eventfd
from dataplane.device.eventfd import drain as drain_eventfd
from dataplane.device.image import Image
from dataplane.device.inflight import InflightArea
from dataplane.device.limiter import BURST_KEY, Limits
from dataplane.device.limiter import KEYS as LIMIT_RATE_KEYS
from dataplane.device.memory import MAX_MEM_SLOTS, GuestMemory
from dataplane.device.sandbox import confine as confine_process
from dataplane.device.settings import DeviceSettings
from dataplane.device.stats import BUCKETS

__all__ = [
    "BUCKETS",
    "BURST_KEY",
    "DATAPATHS",
    "DEFAULT_BOUNCE_BYTES",
    "DEFAULT_POLL_US",
    "DEFAULT_RECONNECT_S",
    "ENGINES",
    "LIMIT_RATE_KEYS",
    "MAX_MEM_SLOTS",
    "MAX_RECONNECT_S",
    "MIN_BLOCK",
    "REMOTE_POLL_US",
    "BlkDevice",
    "DeviceSettings",
    "DirtyLog",
    "GuestMemory",
    "Image",
    "InflightArea",
    "Limits",
    "RingSetup",
    "TestDelay",
    "check_eventfd",
    "check_queue_size",
    "confine_process",
    "default_serial",
    "drain_eventfd",
    "open_device_image",
    "parse_test_delay",
    "set_sigbus_wake_fd",
]

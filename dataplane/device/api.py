"""The device wing's public API: with settings.py (what a device is configured with, the
vocabulary of the device keys), all that the serving floor (dataplane/serve/) may import of
the wing.  tests/test_layers.py holds the floor to these two modules.

- **A device's lifetime**: ``BlkDevice`` (built from ``DeviceSettings``: opened and started;
  ``resize``, ``set_limits``; ``close``), its image opened ahead (``open_device_image``,
  ``Image``) and the serial it takes by default (``default_serial``).
- **What a vhost-user session hands a device**: guest memory (``GuestMemory``,
  ``MAX_MEM_SLOTS``), the inflight area (``InflightArea``), the dirty log (``DirtyLog``), a
  ring's set-up (``RingSetup``), and the checks on the frontend's eventfds; the commands
  themselves are ``BlkDevice``'s (``start_ring``, ``set_memory``, ...).
- **What the process sets up once**: the SIGBUS containment's wake-up fd, and its own
  confinement (another user, the seccomp allow-list; each device's threads load theirs
  with ``BlkDevice.confine``).
- **What the stats hold**: the histograms' buckets.
"""

from __future__ import annotations

from dataplane.device.blkdev import BlkDevice, default_serial, open_device_image
from dataplane.device.c.sigbus import set_wake_fd as set_sigbus_wake_fd
from dataplane.device.datapath.base import RingSetup
from dataplane.device.dirty_log import DirtyLog
from dataplane.device.eventfd import check_eventfd
from dataplane.device.eventfd import drain as drain_eventfd
from dataplane.device.image import Image
from dataplane.device.inflight import InflightArea
from dataplane.device.memory import MAX_MEM_SLOTS, GuestMemory
from dataplane.device.sandbox import confine as confine_process
from dataplane.device.stats import BUCKETS

__all__ = [
    "BUCKETS",
    "MAX_MEM_SLOTS",
    "BlkDevice",
    "DirtyLog",
    "GuestMemory",
    "Image",
    "InflightArea",
    "RingSetup",
    "check_eventfd",
    "confine_process",
    "default_serial",
    "drain_eventfd",
    "open_device_image",
    "set_sigbus_wake_fd",
]

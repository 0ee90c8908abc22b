"""Values of ``dataplane serve`` that ``dataplane bench`` passes on to it, written here once.

Both read them from here: serve's table of device keys (serve/device_keys.py: ``aio=``,
``cache=``, ``poll-us=``'s default) and the bench's flags.  The device wing gives them
their meaning (dataplane/device/engines, image.py, datapath/factory.py).
"""

from __future__ import annotations

# The engines by their --aio names (the device's classes and C kinds are keyed by these).
IO_URING = "io_uring"
LINUX_AIO = "native"  # QEMU's spelling: aio=native
THREADS = "threads"
NULL = "null"
ENGINE_NAMES = (IO_URING, LINUX_AIO, THREADS, NULL)
CACHE_MODES = ("none", "writeback")
# serve's polling window on a file's native datapath (device/datapath/factory.py says why),
# which the bench's header names.
DEFAULT_POLL_US = 64

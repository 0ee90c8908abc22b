"""Values of ``dataplane serve`` that ``dataplane bench`` passes on to it, written here once.

Both read them from here: serve's table of device keys (serve/device_keys.py: ``aio=``,
``cache=``, ``poll-us=``'s default) and the bench's flags.  The device wing gives them
their meaning (dataplane/device/engines, image.py, datapath/factory.py).
"""

from __future__ import annotations

ENGINE_NAMES = ("io_uring", "native", "threads", "null")
CACHE_MODES = ("none", "writeback")
# serve's polling window on a file's native datapath (device/datapath/factory.py says why),
# which the bench's header names.
DEFAULT_POLL_US = 64

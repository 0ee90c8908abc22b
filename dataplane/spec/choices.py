"""Values of ``dataplane serve`` that ``dataplane bench`` passes on to it.

The device wing owns what they mean (dataplane/device/engines, image.py);
tests/spec/test_spec.py checks that it knows exactly these.
"""

from __future__ import annotations

ENGINE_NAMES = ("io_uring", "native", "threads", "null")
CACHE_MODES = ("none", "writeback")
# serve's polling window on a file's native datapath (device/datapath/factory.py says why),
# which the bench's header names.
DEFAULT_POLL_US = 64

"""The I/O limit keys of a device: its token buckets (device/limiter.py), set and changed live.

=================  ===========================================================================
key                value
=================  ===========================================================================
iops-limit         requests per second, reads and writes together (0: no limit, the default)
read-iops-limit    read requests per second
write-iops-limit   write requests per second (discard and write-zeroes count as writes)
bps-limit          bytes per second, read and written together
read-bps-limit     bytes read per second
write-bps-limit    bytes written per second (discard and write-zeroes: the bytes they cover)
limit-burst-ms     the burst allowance: an idle device lets this many milliseconds' worth of
                   each limit through at once before requests wait (0 to 60000, default 100:
                   ``iops-limit=5000`` lets 500 requests through at once).  QEMU's throttle
                   calls the same ``iops-total-max`` (here: rate x burst)
=================  ===========================================================================

A request over a limit waits (popping from its ring waits with it); it never
fails.  Flushes and GET_ID count against no limit.  ``set-limits`` on the
management socket changes the keys it is given and leaves the others as they are.
"""

from __future__ import annotations

from dataplane.device.limiter import BURST_KEY, KEYS

LIMIT_KEYS = (*KEYS, BURST_KEY)
# key -> the name its parsed value goes by (a serve flag's dest, a device_keys.KEYS field)
# until device_keys.options_of gathers them into DeviceOptions.limits: iops-limit -> iops_limit
LIMIT_FIELDS = {key: key.replace("-", "_") for key in LIMIT_KEYS}

# A line for each key, as --help shows it.
LIMIT_TEXT = {
    "iops-limit": "I/O limit: requests per second, reads and writes (0: none, the default)",
    "read-iops-limit": "I/O limit: read requests per second",
    "write-iops-limit": "I/O limit: write requests per second (discards count)",
    "bps-limit": "I/O limit: bytes per second, read and written",
    "read-bps-limit": "I/O limit: bytes read per second",
    "write-bps-limit": "I/O limit: bytes written per second",
    BURST_KEY: "burst allowance of the I/O limits: ms of each rate let through at once (100)",
}

__all__ = ["LIMIT_FIELDS", "LIMIT_KEYS", "LIMIT_TEXT"]

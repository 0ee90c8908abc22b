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

from dataplane.argtypes import SIZE_EXAMPLE, parse_size
from dataplane.device.settings import BURST_KEY
from dataplane.device.settings import LIMIT_RATE_KEYS as KEYS

LIMIT_KEYS = (*KEYS, BURST_KEY)
# The byte rates, which take a size suffix (bps-limit=10M) as every size does (argtypes.parse_size).
BYTE_KEYS = tuple(k for k in KEYS if "bps" in k)
# key -> the name its parsed value goes by (a serve flag's dest, a device_keys.KEYS field)
# until device_keys.options_of gathers them into DeviceOptions.limits: iops-limit -> iops_limit
LIMIT_FIELDS = {key: key.replace("-", "_") for key in LIMIT_KEYS}

# A line for each key, as --help shows it.
LIMIT_TEXT = {
    "iops-limit": "I/O limit: requests per second, reads and writes (0: none, the default)",
    "read-iops-limit": "I/O limit: read requests per second",
    "write-iops-limit": "I/O limit: write requests per second (discards count)",
    "bps-limit": "I/O limit: bytes per second, read and written (a suffix: 10M)",
    "read-bps-limit": "I/O limit: bytes read per second",
    "write-bps-limit": "I/O limit: bytes written per second",
    BURST_KEY: "burst allowance of the I/O limits: ms of each rate let through at once (100)",
}

# The value each key's --help names.
LIMIT_METAVARS = {
    k: "SIZE" if k in BYTE_KEYS else "MS" if k == BURST_KEY else "N" for k in LIMIT_KEYS
}


def parse_limit(key: str, value: object) -> int:
    """A limit key's value: requests per second, milliseconds, or bytes per second with an
    optional suffix (``10M``: 10 MiB/s); ValueError as ``key=value ...``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{key}={value!r} is not an integer")
    if key in BYTE_KEYS:
        try:
            return parse_size(value)
        except ValueError:
            raise ValueError(
                f"{key}={value!r} is not a number of bytes per second ({SIZE_EXAMPLE})"
            ) from None
    try:
        return value if isinstance(value, int) else int(value, 0)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not an integer") from None


__all__ = ["BYTE_KEYS", "LIMIT_FIELDS", "LIMIT_KEYS", "LIMIT_METAVARS", "LIMIT_TEXT", "parse_limit"]

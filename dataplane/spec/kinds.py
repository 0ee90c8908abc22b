"""The one table of request kinds: stats counters, trace letters, narration names.

Its order is the order of csrc/device/dp_stats.h's ``enum dp_stat_kind``; the kinds
with a trace letter come first, in the order of csrc/guest/dp_driver.h's ``enum
dp_drv_kind`` (tests/spec/test_spec.py checks both against the C values).
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.spec import blk


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # stats and bench name
    virtio_type: int | None  # VIRTIO_BLK_T_*, None for "other"
    letter: str | None  # the trace format's letter; None: not recorded


TABLE = (
    Kind("read", blk.VIRTIO_BLK_T_IN, "R"),
    Kind("write", blk.VIRTIO_BLK_T_OUT, "W"),
    Kind("flush", blk.VIRTIO_BLK_T_FLUSH, "F"),
    Kind("discard", blk.VIRTIO_BLK_T_DISCARD, "D"),
    Kind("write_zeroes", blk.VIRTIO_BLK_T_WRITE_ZEROES, "Z"),
    Kind("get_id", blk.VIRTIO_BLK_T_GET_ID, None),
    Kind("other", None, None),
)

STAT_KINDS = tuple(k.name for k in TABLE)
KIND_OTHER = STAT_KINDS.index("other")
# The kinds a trace holds and the bench's driver issues (enum dp_drv_kind).
TRACE_KINDS = tuple(k.name for k in TABLE if k.letter is not None)
LETTERS = "".join(k.letter for k in TABLE if k.letter is not None)
# The kinds whose length is data moved (reads and writes), by index.
DATA_KINDS = (STAT_KINDS.index("read"), STAT_KINDS.index("write"))

_KIND_OF_TYPE = {k.virtio_type: i for i, k in enumerate(TABLE) if k.virtio_type is not None}


def kind_of(virtio_type: int) -> int:
    """The TABLE index of a virtio-blk request type (``KIND_OTHER`` for unknown types)."""
    return _KIND_OF_TYPE.get(virtio_type, KIND_OTHER)


def trace_kind_of(virtio_type: int) -> int | None:
    """The TRACE_KINDS index of a type, or None for a type a trace does not hold."""
    k = _KIND_OF_TYPE.get(virtio_type)
    return k if k is not None and TABLE[k].letter is not None else None

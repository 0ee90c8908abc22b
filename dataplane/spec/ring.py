"""The split virtqueue on the wire (virtio 1.2, section 2.7), as both sides lay it out.

Descriptor table: ``num`` descriptors of 16 bytes (addr, len, flags, next).
Avail ring: flags, idx, ring[num] of u16 heads, used_event.  Used ring:
flags, idx, ring[num] of {u32 id, u32 len}, avail_event.  All little-endian.
csrc/spec/dp_virtio.h holds the same layout for C.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

# Feature bits of the ring and of the transport that a virtio-blk driver negotiates.
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len
DESC_SIZE = DESC.size
USED_ELEM_SIZE = USED_ELEM.size
MAX_QUEUE_SIZE = 32768

# Byte offsets inside the avail ring ...
AVAIL_FLAGS = 0
AVAIL_IDX = 2
# ... and inside the used ring.
USED_FLAGS = 0
USED_IDX = 2


def avail_ring_slot(num: int, i: int) -> int:
    """Offset of ``avail->ring[i % num]``."""
    return 4 + 2 * (i % num)


def used_event_offset(num: int) -> int:
    """Offset of used_event, after the avail ring's ``num`` heads."""
    return 4 + 2 * num


def used_ring_slot(num: int, i: int) -> int:
    """Offset of ``used->ring[i % num]``."""
    return 4 + USED_ELEM_SIZE * (i % num)


def avail_event_offset(num: int) -> int:
    """Offset of avail_event, after the used ring's ``num`` elements."""
    return 4 + USED_ELEM_SIZE * num


def desc_table_size(num: int) -> int:
    return DESC_SIZE * num


def avail_ring_size(num: int) -> int:
    """flags, idx, ring[num], used_event."""
    return used_event_offset(num) + 2


def used_ring_size(num: int) -> int:
    """flags, idx, ring[num] of {id, len}, avail_event."""
    return avail_event_offset(num) + 2


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """True if ``event_idx`` lies in ``[old, new_idx)``, modulo 2**16 (Linux's vring_need_event)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old) & 0xFFFF)


@dataclass(frozen=True, slots=True)
class RingAddrs:
    """Guest-physical addresses of the three ring parts."""

    desc: int
    avail: int
    used: int

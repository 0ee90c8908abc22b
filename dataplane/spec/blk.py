"""virtio-blk on the wire (virtio 1.2, section 5.2): requests, statuses, features, config.

A request is a chain: the 16-byte header (``HEADER``: type, reserved, sector),
the data buffers (for DISCARD and WRITE_ZEROES, ``DWZ_SEGMENT``s), and one
device-writable status byte.  csrc/spec/dp_virtio.h holds the same values for C.
"""

from __future__ import annotations

import struct

SECTOR_SIZE = 512

# Request types.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
TYPE_NAMES = {
    VIRTIO_BLK_T_IN: "IN",
    VIRTIO_BLK_T_OUT: "OUT",
    VIRTIO_BLK_T_FLUSH: "FLUSH",
    VIRTIO_BLK_T_GET_ID: "GET_ID",
    VIRTIO_BLK_T_DISCARD: "DISCARD",
    VIRTIO_BLK_T_WRITE_ZEROES: "WRITE_ZEROES",
}

# Status byte values.
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
STATUS_NAMES = {VIRTIO_BLK_S_OK: "OK", VIRTIO_BLK_S_IOERR: "IOERR", VIRTIO_BLK_S_UNSUPP: "UNSUPP"}

VIRTIO_BLK_ID_BYTES = 20
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

# Feature bits.
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

HEADER = struct.Struct("<IIQ")  # type, reserved (ioprio), sector
DWZ_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags

# struct virtio_blk_config: capacity, size_max, seg_max, geometry (cylinders, heads,
# sectors), blk_size, topology (physical_block_exp, alignment_offset, min_io_size,
# opt_io_size), writeback, unused0, num_queues, max_discard_sectors,
# max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors,
# max_write_zeroes_seg, write_zeroes_may_unmap, unused1[3].
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
CAPACITY = struct.Struct("<Q")  # the config space's first field, in 512-byte sectors
CONFIG_WRITEBACK_OFFSET = 32

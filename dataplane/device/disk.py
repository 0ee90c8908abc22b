"""The disk as the guest sees it (virtio 1.2, section 5.2): the feature bits the device
offers and its config space (``Disk``).

What request handling needs to know about the device (its size, whether it is read-only,
its limits) is read from here too: ``Disk`` is what both datapaths are built with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dataplane.spec.blk import (
    CONFIG,
    CONFIG_WRITEBACK_OFFSET,
    SECTOR_SIZE,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
)
from dataplane.spec.ring import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
)

# The smallest block of the C datapath's bounce arena (csrc/device/dp_bounce.h's
# DP_BOUNCE_MIN_SHIFT), under which the config space's size_max never goes.
MIN_BLOCK = 4096
SIZE_MAX = 1 << 20  # size_max where nothing bounces; with bounce memory, what it can hold
MAX_INDIRECT = 1024  # the longest indirect table accepted (QEMU's VIRTQUEUE_MAX_SIZE)
DEFAULT_BOUNCE_BYTES = 32 << 20  # per dataplane thread: the bounce-mib device key
MAX_DISCARD_SECTORS = 0x3FFFFF
CONFIG_SPACE_SIZE = 256


ALL_CAN = {"flush": True, "discard": True, "write_zeroes": True}  # what an image file can do


def offered_features(*, read_only: bool, num_queues: int, can: Mapping[str, bool] = ALL_CAN) -> int:
    """The device's feature bits; ``can``: which of flush, discard and write_zeroes the
    backing can do (a remote disk says; a file can do all three)."""
    flush, discard, write_zeroes = can["flush"], can["discard"], can["write_zeroes"]
    bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
    ]
    if flush:  # without FLUSH the device is write-through: no cache for the guest to toggle
        bits += [VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE]
    if num_queues > 1:
        bits.append(VIRTIO_BLK_F_MQ)
    if read_only:
        bits.append(VIRTIO_BLK_F_RO)
    else:
        bits += [VIRTIO_BLK_F_DISCARD] if discard else []
        bits += [VIRTIO_BLK_F_WRITE_ZEROES] if write_zeroes else []
    return sum(1 << b for b in bits)


@dataclass(slots=True)
class Disk:
    """What request handling needs to know about the device it serves."""

    sectors: int
    read_only: bool = False
    serial: bytes = b""
    align: int = 1  # O_DIRECT buffer alignment, 1 for the page cache
    writeback: bool = True  # the guest-visible write cache; off means write-through
    num_queues: int = 1
    queue_size: int = 256
    blk_size: int = SECTOR_SIZE
    bounce_bytes: int = DEFAULT_BOUNCE_BYTES  # the C datapath's bounce memory per thread

    @property
    def seg_max(self) -> int:
        return self.queue_size - 2

    @property
    def max_indirect(self) -> int:
        """Entries an indirect table may have: past seg_max + 2 a request fails, past this the
        ring breaks."""
        return max(self.queue_size, MAX_INDIRECT)

    @property
    def bounce_max(self) -> int:
        """The largest bounce block: the largest power of two within the budget."""
        return 1 << (self.bounce_bytes.bit_length() - 1)

    @property
    def size_max(self) -> int:
        """Bytes per segment: with bounce memory, seg_max of them fit one bounce block."""
        if self.align <= 1:
            return SIZE_MAX
        fit = self.bounce_max // self.seg_max
        return min(SIZE_MAX, max(MIN_BLOCK, 1 << (fit.bit_length() - 1)))

    def config_space(self) -> bytes:
        """The virtio_blk_config bytes, zero-padded to the largest size a frontend may ask for."""
        phys_exp = (self.blk_size // SECTOR_SIZE).bit_length() - 1
        raw = CONFIG.pack(
            self.sectors,
            self.size_max,
            self.seg_max,
            0, 0, 0,  # geometry: none
            self.blk_size,
            phys_exp, 0, 1, 0,  # topology: physical exponent, alignment, min_io, opt_io
            int(self.writeback),
            0,
            self.num_queues,
            MAX_DISCARD_SECTORS, 1, self.blk_size // SECTOR_SIZE,
            MAX_DISCARD_SECTORS, 1,
            1,  # write_zeroes_may_unmap
        )  # fmt: skip
        return raw.ljust(CONFIG_SPACE_SIZE, b"\0")

    def write_config(self, offset: int, data: bytes) -> bool:
        """Apply a driver write to config space.  Only ``writeback`` is writable.

        This is the guest-visible value only: each datapath keeps its own copy,
        changed through its thread's command queue (``Datapath.set_writeback``).
        """
        if offset == CONFIG_WRITEBACK_OFFSET and len(data) == 1:
            self.writeback = bool(data[0])
            return True
        return False

/*
 * The virtio wire: split-ring layouts (virtio 1.2, section 2.7) and the
 * virtio-blk request constants (section 5.2), shared by the device side
 * (dp_vq, dp_blk, dp_stats, dp_narr) and the guest side (dp_drv_ring,
 * dp_driver, dp_limit): both extensions include it, and nothing else but
 * the barriers and the clocks (dp_cpu.h) is shared between them
 * (tests/test_layers.py reads the includes).  The Python twin is dataplane/spec/;
 * tests/spec/test_spec.py holds the two together.
 */
#ifndef DP_VIRTIO_H
#define DP_VIRTIO_H

#include <stdint.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtio 1.x rings are little-endian");

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

#define VRING_DESC_SIZE 16u

struct vring_desc_le {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* Byte offsets inside the avail ring (flags, idx, ring[num], used_event)... */
#define VRING_AVAIL_IDX 2u
#define VRING_AVAIL_RING(i) (4u + 2u * (i))
#define VRING_USED_EVENT(num) (4u + 2u * (num))
/* ... and inside the used ring (flags, idx, ring[num] of {id, len}, avail_event). */
#define VRING_USED_IDX 2u
#define VRING_USED_RING(i) (4u + 8u * (i))
#define VRING_AVAIL_EVENT(num) (4u + 8u * (num))

/* True if event_idx lies in [old, new_idx), modulo 2^16 (Linux's vring_need_event). */
static inline int vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP 1u
#define VIRTIO_BLK_HEADER_SIZE 16u
#define VIRTIO_BLK_DWZ_SEGMENT_SIZE 16u
#define VIRTIO_BLK_SECTOR_SIZE 512u

#endif

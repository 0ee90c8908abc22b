/*
 * One split virtqueue, driver side: what a guest's virtio_ring does
 * (Linux's virtqueue_add_split, virtqueue_kick_prepare, virtqueue_get_buf).
 *
 * The C twin of dataplane/guest/ring.py's DriverRing, operation for
 * operation, byte for byte (tests/guest/test_ring.py holds the two
 * together).  The bench's workload loop (dp_driver.c) runs on it; Python
 * calls it through dataplane/guest/c_ring.py, which checks the arguments.
 * It keeps no free list: which descriptors a chain uses is the caller's
 * choice (the Python ring's free list, or the workload's fixed slots).
 */
#ifndef DP_DRV_RING_H
#define DP_DRV_RING_H

#include <stdint.h>
#include <string.h>

#include "dp_barrier.h"
#include "dp_virtio.h"

struct dp_drv_ring {
    /* Guest RAM: where it is mapped here, and its guest-physical base. */
    uintptr_t ram_host;
    uint64_t ram_gpa;
    uint64_t ram_size;
    struct vring_desc_le *desc;
    uint8_t *avail; /* flags, idx, ring[num], used_event */
    uint8_t *used;  /* flags, idx, ring[num] of {id, len}, avail_event */
    uint32_t num;
    uint32_t event_idx;
    uint16_t avail_idx;     /* entries added to the avail ring, published or not */
    uint16_t last_used_idx; /* used entries harvested */
    uint32_t pad;
};

/* One buffer of a chain: guest address, length, device-writable or not. */
struct dp_drv_buf {
    uint64_t gpa;
    uint32_t len;
    uint32_t writable;
};

/*
 * Lay the ring over guest RAM, resuming at the indices the ring holds.
 * 0, -EINVAL (num not a power of two up to 32768) or -ERANGE (a ring part
 * is not inside RAM).
 */
int dp_drv_ring_init(struct dp_drv_ring *r, uintptr_t ram_host, uint64_t ram_gpa,
                     uint64_t ram_size, uint64_t desc_gpa, uint64_t avail_gpa, uint64_t used_gpa,
                     uint32_t num, uint32_t event_idx);

/* The host address of gpa, which the caller has checked to be inside RAM. */
static inline void *dp_drv_ring_host(const struct dp_drv_ring *r, uint64_t gpa)
{
    return (void *)(r->ram_host + (uintptr_t)(gpa - r->ram_gpa));
}

static inline void dp_drv_ring_write_desc(struct dp_drv_ring *r, uint16_t i, uint64_t addr,
                                          uint32_t len, uint16_t flags, uint16_t next)
{
    r->desc[i] = (struct vring_desc_le){addr, len, flags, next};
}

static inline uint16_t dp_drv_buf_flags(const struct dp_drv_buf *b, int last)
{
    return (uint16_t)((b->writable ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT));
}

/* A direct chain: bufs[k] in descriptor ids[k], linked to ids[k + 1]. */
static inline void dp_drv_ring_add_chain(struct dp_drv_ring *r, const uint16_t *ids,
                                         const struct dp_drv_buf *bufs, unsigned n)
{
    for (unsigned k = 0; k < n; k++) {
        int last = k + 1 == n;

        dp_drv_ring_write_desc(r, ids[k], bufs[k].gpa, bufs[k].len,
                               dp_drv_buf_flags(&bufs[k], last), last ? 0 : ids[k + 1]);
    }
}

/* An indirect chain: bufs as a table at table_gpa, and descriptor head pointing to it. */
static inline void dp_drv_ring_add_indirect(struct dp_drv_ring *r, uint16_t head,
                                            uint64_t table_gpa, const struct dp_drv_buf *bufs,
                                            unsigned n)
{
    struct vring_desc_le *table = dp_drv_ring_host(r, table_gpa);

    for (unsigned k = 0; k < n; k++) {
        int last = k + 1 == n;

        table[k] = (struct vring_desc_le){bufs[k].gpa, bufs[k].len,
                                          dp_drv_buf_flags(&bufs[k], last),
                                          (uint16_t)(last ? 0 : k + 1)};
    }
    dp_drv_ring_write_desc(r, head, table_gpa, VRING_DESC_SIZE * n, VRING_DESC_F_INDIRECT, 0);
}

/* Put head in avail->ring[avail_idx % num]; the device sees it at the next publish. */
static inline void dp_drv_ring_add_avail(struct dp_drv_ring *r, uint16_t head)
{
    *(volatile uint16_t *)(r->avail + VRING_AVAIL_RING(r->avail_idx % r->num)) = head;
    r->avail_idx++;
}

/* Store avail->idx: the ring entries and descriptors must be visible before the index. */
static inline void dp_drv_ring_store_avail_idx(struct dp_drv_ring *r, uint16_t idx)
{
    dp_used_idx_release((uintptr_t)(r->avail + VRING_AVAIL_IDX), idx);
}

static inline void dp_drv_ring_publish(struct dp_drv_ring *r)
{
    dp_drv_ring_store_avail_idx(r, r->avail_idx);
}

static inline void dp_drv_ring_set_avail_flags(struct dp_drv_ring *r, uint16_t flags)
{
    *(volatile uint16_t *)(r->avail) = flags;
}

static inline void dp_drv_ring_set_used_event(struct dp_drv_ring *r, uint16_t idx)
{
    *(volatile uint16_t *)(r->avail + VRING_USED_EVENT(r->num)) = idx;
}

static inline uint16_t dp_drv_ring_used_flags(const struct dp_drv_ring *r)
{
    return *(volatile uint16_t *)r->used;
}

static inline uint16_t dp_drv_ring_avail_event(const struct dp_drv_ring *r)
{
    return *(volatile uint16_t *)(r->used + VRING_AVAIL_EVENT(r->num));
}

/*
 * Whether the device asked to be kicked for the entries published since old
 * (virtqueue_kick_prepare).  Publishing avail->idx, then reading avail_event
 * or used->flags: the missed-kick race needs the full fence (dp_smp_mb says why).
 */
static inline int dp_drv_ring_needs_kick(const struct dp_drv_ring *r, uint16_t old)
{
    dp_smp_mb();
    if (r->event_idx)
        return vring_need_event(dp_drv_ring_avail_event(r), r->avail_idx, old);
    return !(dp_drv_ring_used_flags(r) & VRING_USED_F_NO_NOTIFY);
}

/*
 * used->idx, with acquire: the same ordering as the device's avail side, as
 * the used elements and status bytes must be read after the index that
 * published them.
 */
static inline uint16_t dp_drv_ring_used_idx(const struct dp_drv_ring *r)
{
    return dp_avail_idx_acquire((uintptr_t)(r->used + VRING_USED_IDX));
}

/* The next used element before end (a used_idx read): 1 with *id and *len, or 0. */
static inline int dp_drv_ring_get_used(struct dp_drv_ring *r, uint16_t end, uint32_t *id,
                                       uint32_t *len)
{
    uint32_t elem[2];

    if (r->last_used_idx == end)
        return 0;
    memcpy(elem, r->used + VRING_USED_RING(r->last_used_idx % r->num), sizeof(elem));
    *id = elem[0];
    *len = elem[1];
    r->last_used_idx++;
    return 1;
}

#endif

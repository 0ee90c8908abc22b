/*
 * The bench driver's request slots (internal to dp_driver.c and dp_drv_slot.c).
 *
 * Every slot owns a fixed area in guest RAM: a DP_DRV_META_SIZE meta block
 * (header, status byte, discard segment, indirect table) and a data buffer.
 * A slot's chain is its indirect table (head: the slot number) or three ring
 * descriptors (head: three times the slot number).
 */
#ifndef DP_DRV_SLOT_H
#define DP_DRV_SLOT_H

#include <stdint.h>

#include "dp_driver.h"
#include "dp_drv_ring.h"
#include "dp_virtio.h"

#define SECTOR VIRTIO_BLK_SECTOR_SIZE

/* Offsets inside a slot's meta block. */
#define META_HDR 0
#define META_STATUS 16
#define META_SEG 32
#define META_TABLE 64

struct slot {
    uint64_t submit_ns; /* its batch began to be filled (the publish layer starts) */
    uint64_t kick_ns;   /* avail->idx published, just before the kick (or its suppression) */
    uint64_t sector;
    uint64_t block; /* verify: index into gen_map */
    uint32_t len;
    uint32_t kind;
    uint32_t gen;
    uint32_t busy;
    /* The chain as last written: descriptors are rewritten only when it changes. */
    uint32_t chain_kind;
    uint32_t chain_len;
};

#define NO_CHAIN UINT32_MAX

struct drv {
    struct dp_drv_queue *q;
    struct dp_drv_ring ring;
    struct slot *slots;
    uint32_t *free; /* stack of free slot numbers */
    uint32_t nfree;
    uint32_t inflight;
    uint16_t published_idx;  /* avail->idx as last published */
    uint64_t rng;
    uint64_t seq_next;       /* next block of a sequential workload */
    uint64_t op_next;        /* next trace op */
    uint64_t issued;
    uint32_t gen;            /* verify: generation of the last write */
    uint32_t batch[1024];    /* slots filled since the last publish (bounded by iodepth) */
    uint32_t nbatch;
};

static inline void *gpa_host(const struct dp_drv_queue *q, uint64_t gpa)
{
    return (void *)(q->ram_host + (uintptr_t)(gpa - q->ram_gpa));
}

static inline uint64_t slot_gpa(const struct dp_drv_queue *q, uint32_t s, unsigned off)
{
    return q->meta_gpa + (uint64_t)s * DP_DRV_META_SIZE + off;
}

static inline uint64_t data_gpa(const struct dp_drv_queue *q, uint32_t s)
{
    return q->data_gpa + (uint64_t)s * q->buf_stride + q->buf_offset;
}

static inline uint16_t slot_head(const struct drv *d, uint32_t s)
{
    return (uint16_t)(d->q->indirect ? s : 3 * s);
}

/* Fill free slot s with the next request of the workload and write it to guest RAM. */
void dp_drv_fill_slot(struct drv *d, uint32_t s);
/* Slot s completed (seen in the used ring at now): count it, verify a read, free the slot. */
void dp_drv_complete(struct drv *d, uint32_t s, uint64_t now);

#endif

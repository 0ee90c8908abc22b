#include "dp_drv_slot.h"

#include <string.h>

#include "dp_rand.h"

static const uint32_t blk_type[DP_DRV_NKINDS] = {
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
};

uint32_t dp_drv_blk_type(uint32_t kind)
{
    return kind < DP_DRV_NKINDS ? blk_type[kind] : UINT32_MAX;
}

/* Write slot s's chain: through its indirect table, or in three ring descriptors. */
static void write_chain(struct drv *d, uint32_t s)
{
    struct dp_drv_queue *q = d->q;
    struct slot *sl = &d->slots[s];
    struct dp_drv_buf chain[3];
    uint16_t head = slot_head(d, s);
    unsigned n = 0;

    sl->chain_kind = sl->kind;
    sl->chain_len = sl->len;
    chain[n++] = (struct dp_drv_buf){slot_gpa(q, s, META_HDR), VIRTIO_BLK_HEADER_SIZE, 0};
    switch (sl->kind) {
    case DP_DRV_READ:
        chain[n++] = (struct dp_drv_buf){data_gpa(q, s), sl->len, 1};
        break;
    case DP_DRV_WRITE:
        chain[n++] = (struct dp_drv_buf){data_gpa(q, s), sl->len, 0};
        break;
    case DP_DRV_DISCARD:
    case DP_DRV_WRITE_ZEROES:
        chain[n++] = (struct dp_drv_buf){slot_gpa(q, s, META_SEG), VIRTIO_BLK_DWZ_SEGMENT_SIZE, 0};
        break;
    default:
        break;
    }
    chain[n++] = (struct dp_drv_buf){slot_gpa(q, s, META_STATUS), 1, 1};
    if (q->indirect) {
        dp_drv_ring_add_indirect(&d->ring, head, slot_gpa(q, s, META_TABLE), chain, n);
    } else {
        const uint16_t ids[3] = {head, (uint16_t)(head + 1), (uint16_t)(head + 2)};

        dp_drv_ring_add_chain(&d->ring, ids, chain, n);
    }
}

/*
 * Write slot s's request: its header and status byte always, its descriptors
 * (the indirect table, or three ring descriptors) only when the kind or the
 * length changed since the slot's last request, as their contents are
 * otherwise the same.  Stores the device would only read again cost it a
 * cache miss each.
 */
static void write_request(struct drv *d, uint32_t s)
{
    struct dp_drv_queue *q = d->q;
    struct slot *sl = &d->slots[s];
    uint8_t *hdr = gpa_host(q, slot_gpa(q, s, META_HDR));

    if (sl->chain_kind != sl->kind) {
        memcpy(hdr, &blk_type[sl->kind], 4);
        memset(hdr + 4, 0, 4);
    }
    memcpy(hdr + 8, &sl->sector, 8);
    *(volatile uint8_t *)gpa_host(q, slot_gpa(q, s, META_STATUS)) = (uint8_t)q->status_init;
    if (sl->kind == DP_DRV_DISCARD || sl->kind == DP_DRV_WRITE_ZEROES) {
        uint8_t *seg = gpa_host(q, slot_gpa(q, s, META_SEG));
        uint32_t sectors = sl->len / SECTOR, flags = 0;

        memcpy(seg, &sl->sector, 8);
        memcpy(seg + 8, &sectors, 4);
        memcpy(seg + 12, &flags, 4);
    }
    if (sl->chain_kind != sl->kind || sl->chain_len != sl->len)
        write_chain(d, s);
}


static uint64_t rand_below(struct drv *d, uint64_t n)
{
    return dp_rand_below(&d->rng, n);
}

/* --- choosing the next request -------------------------------------------- */

/* A block with no request in flight (verify mode only tracks that). */
static uint64_t pick_block(struct drv *d)
{
    const struct dp_drv_queue *q = d->q;
    uint64_t b;

    if (q->pattern == DP_DRV_SEQ) {
        b = d->seq_next;
        if (q->gen_map)
            while (q->gen_map[b] & DP_DRV_INFLIGHT)
                b = (b + 1) % q->nblocks;
        d->seq_next = (b + 1) % q->nblocks;
        return b;
    }
    b = rand_below(d, q->nblocks);
    if (q->gen_map)
        for (unsigned tries = 0; q->gen_map[b] & DP_DRV_INFLIGHT; tries++)
            b = tries < 16 ? rand_below(d, q->nblocks) : (b + 1) % q->nblocks;
    return b;
}

static void stamp_buffer(struct drv *d, uint32_t s)
{
    const struct dp_drv_queue *q = d->q;
    struct slot *sl = &d->slots[s];
    uintptr_t buf = (uintptr_t)gpa_host(q, data_gpa(q, s));
    uint64_t gen = ((uint64_t)q->verify_nonce << 32) | sl->gen;

    for (uint32_t i = 0; i < sl->len / SECTOR; i++)
        dp_drv_stamp(buf + (uintptr_t)i * SECTOR, sl->sector + i, gen);
}

/* Fill one free slot with the next request of the workload. */
void dp_drv_fill_slot(struct drv *d, uint32_t s)
{
    struct dp_drv_queue *q = d->q;
    struct slot *sl = &d->slots[s];

    if (q->ops) {
        const struct dp_drv_op *op = &q->ops[d->op_next++];

        sl->kind = op->kind;
        sl->sector = op->sector;
        sl->len = op->len;
    } else {
        uint64_t b = pick_block(d);
        int read = q->rwmixread >= 100 ||
                   (q->rwmixread > 0 && rand_below(d, 100) < q->rwmixread);

        sl->kind = read ? DP_DRV_READ : DP_DRV_WRITE;
        sl->block = b;
        sl->sector = q->start_sector + b * (q->bs / SECTOR);
        sl->len = q->bs;
        if (q->gen_map) {
            if (read) {
                sl->gen = q->gen_map[b];
            } else {
                if (++d->gen & DP_DRV_INFLIGHT)
                    d->gen = 1;
                sl->gen = d->gen;
                stamp_buffer(d, s);
            }
            q->gen_map[b] = sl->gen | DP_DRV_INFLIGHT;
        }
    }
    write_request(d, s);
    sl->busy = 1;
    d->issued++;
}


/* --- completions ----------------------------------------------------------- */

static void verify_read(struct drv *d, struct slot *sl, uint32_t s)
{
    struct dp_drv_queue *q = d->q;
    struct dp_drv_stats *st = &q->stats;
    uintptr_t buf = (uintptr_t)gpa_host(q, data_gpa(q, s));
    uint64_t gen = sl->gen ? ((uint64_t)q->verify_nonce << 32) | sl->gen : 0;

    for (uint32_t i = 0; i < sl->len / SECTOR; i++) {
        uint64_t fs, fg;
        uint32_t why = dp_drv_check(buf + (uintptr_t)i * SECTOR, sl->sector + i, gen, &fs, &fg);

        if (why == DP_VERIFY_OK)
            continue;
        if (!st->verify_errors++) {
            st->verify_reason = why;
            st->verify_sector = sl->sector + i;
            st->verify_expected_gen = gen;
            st->verify_found_gen = fg;
            st->verify_found_sector = fs;
        }
        __atomic_store_n(&q->stop, 1, __ATOMIC_RELAXED);
        return;
    }
}

void dp_drv_complete(struct drv *d, uint32_t s, uint64_t now)
{
    struct slot *sl = &d->slots[s];
    struct dp_drv_queue *q = d->q;
    struct dp_drv_stats *st = &q->stats;
    uint8_t status = *(volatile uint8_t *)gpa_host(q, slot_gpa(q, s, META_STATUS));

    st->ios++;
    st->ios_by_kind[sl->kind]++;
    st->bytes_by_kind[sl->kind] += sl->len;
    st->hist[dp_hist_index(now - sl->submit_ns)]++;
    st->lat_sum += now - sl->submit_ns;
    st->publish_sum += sl->kick_ns - sl->submit_ns;
    st->kick_at += sl->kick_ns; /* wraps: only differences of these sums mean anything */
    st->reap_at += now;
    if (status != VIRTIO_BLK_S_OK) {
        if (!st->io_errors++) {
            st->error_sector = sl->sector;
            st->error_status = status;
            st->error_kind = sl->kind;
        }
    } else if (q->gen_map && sl->kind == DP_DRV_READ) {
        verify_read(d, sl, s);
    }
    /* A failed write leaves the block's contents unknown; a failed read changes nothing. */
    if (q->gen_map && !q->ops)
        q->gen_map[sl->block] = status == VIRTIO_BLK_S_OK || sl->kind == DP_DRV_READ ? sl->gen : 0;
    sl->busy = 0;
    d->free[d->nfree++] = s;
    d->inflight--;
}

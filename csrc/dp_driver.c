#define _GNU_SOURCE
#include "dp_driver.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp_barrier.h"
#include "dp_cpu.h"
#include "dp_virtio.h"

#define SECTOR VIRTIO_BLK_SECTOR_SIZE
#define STAMP_MAGIC 0x3148434e45425044ull /* "DPBENCH1" */
#define POLL_MS 100
#define SPIN_ITERATIONS 256
#define NO_SLOT UINT32_MAX

/* Offsets inside a slot's meta block. */
#define META_HDR 0
#define META_STATUS 16
#define META_SEG 32
#define META_TABLE 64

struct slot {
    uint64_t submit_ns;
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
    struct vring_desc_le *desc;
    uint8_t *avail; /* flags, idx, ring[num], used_event */
    uint8_t *used;  /* flags, idx, ring[num] of {id, len}, avail_event */
    struct slot *slots;
    uint32_t *free; /* stack of free slot numbers */
    uint32_t nfree;
    uint32_t inflight;
    uint16_t avail_idx;      /* our shadow of avail->idx */
    uint16_t published_idx;  /* avail->idx as last published */
    uint16_t last_used_idx;
    uint64_t rng;
    uint64_t seq_next;       /* next block of a sequential workload */
    uint64_t op_next;        /* next trace op */
    uint64_t issued;
    uint32_t gen;            /* verify: generation of the last write */
    uint32_t batch[1024];    /* slots filled since the last publish (bounded by iodepth) */
    uint32_t nbatch;
};

static void *gpa_host(const struct dp_drv_queue *q, uint64_t gpa)
{
    return (void *)(q->ram_host + (uintptr_t)(gpa - q->ram_gpa));
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform value in [0, n): Lemire's multiply-high (bias is negligible here). */
static uint64_t rand_below(struct drv *d, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix64(&d->rng) * n) >> 64);
}

unsigned dp_hist_index(uint64_t v)
{
    const unsigned sub = 1u << DP_HIST_SUB_BITS;
    unsigned msb, shift;

    if (v < sub)
        return (unsigned)v;
    msb = 63 - (unsigned)__builtin_clzll(v);
    shift = msb - DP_HIST_SUB_BITS;
    return ((shift + 1) << DP_HIST_SUB_BITS) + (unsigned)((v >> shift) & (sub - 1));
}

/* --- verify stamps ------------------------------------------------------ */

/*
 * A stamped sector: magic, sector, generation, checksum, then 60 words of
 * payload derived from (sector, generation).  The checksum covers every word
 * but itself, so a torn or shifted sector fails it.
 */
static uint64_t stamp_sum(const uint64_t *w)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (unsigned i = 0; i < SECTOR / 8; i++) {
        if (i == 3)
            continue;
        h = (h ^ w[i]) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    return h;
}

/* Built in a local and copied: guest buffers may sit at any address (--buf-align). */
void dp_drv_stamp(uintptr_t buf, uint64_t sector, uint64_t gen)
{
    uint64_t w[SECTOR / 8];
    uint64_t s = sector * 0x2545f4914f6cdd1dull ^ gen;

    w[0] = STAMP_MAGIC;
    w[1] = sector;
    w[2] = gen;
    for (unsigned i = 4; i < SECTOR / 8; i++)
        w[i] = splitmix64(&s);
    w[3] = stamp_sum(w);
    memcpy((void *)buf, w, sizeof(w));
}

uint32_t dp_drv_check(uintptr_t buf, uint64_t sector, uint64_t gen, uint64_t *found_sector,
                      uint64_t *found_gen)
{
    uint64_t w[SECTOR / 8];

    memcpy(w, (const void *)buf, sizeof(w));
    *found_sector = w[1];
    *found_gen = w[2];
    if (w[0] != STAMP_MAGIC)
        return gen ? DP_VERIFY_NO_STAMP : DP_VERIFY_OK;
    if (w[1] != sector)
        return DP_VERIFY_SECTOR;
    if (gen && w[2] != gen)
        return DP_VERIFY_GEN;
    if (w[3] != stamp_sum(w))
        return DP_VERIFY_CHECKSUM;
    return DP_VERIFY_OK;
}

/* --- the ring ------------------------------------------------------------- */

static volatile uint16_t *avail_ring(struct drv *d, uint16_t i)
{
    return (volatile uint16_t *)(d->avail + VRING_AVAIL_RING(i % d->q->num));
}

static volatile uint16_t *used_event(struct drv *d)
{
    return (volatile uint16_t *)(d->avail + VRING_USED_EVENT(d->q->num));
}

static volatile uint16_t *avail_event(struct drv *d)
{
    return (volatile uint16_t *)(d->used + VRING_AVAIL_EVENT(d->q->num));
}

static uint16_t used_idx_acquire(struct drv *d)
{
    /* Same ordering as the device's avail side: the used element and the
     * status byte must be read after the index that published them. */
    return dp_avail_idx_acquire((uintptr_t)(d->used + VRING_USED_IDX));
}

static uint64_t slot_gpa(const struct dp_drv_queue *q, uint32_t s, unsigned off)
{
    return q->meta_gpa + (uint64_t)s * DP_DRV_META_SIZE + off;
}

static uint64_t data_gpa(const struct dp_drv_queue *q, uint32_t s)
{
    return q->data_gpa + (uint64_t)s * q->buf_stride + q->buf_offset;
}

static uint16_t slot_head(const struct drv *d, uint32_t s)
{
    return (uint16_t)(d->q->indirect ? s : 3 * s);
}

static const uint32_t blk_type[DP_DRV_NKINDS] = {
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
};

/* Write slot s's descriptors (its indirect table, or three ring descriptors). */
static void write_chain(struct drv *d, uint32_t s)
{
    struct dp_drv_queue *q = d->q;
    struct slot *sl = &d->slots[s];
    struct vring_desc_le chain[3];
    unsigned n = 0;

    sl->chain_kind = sl->kind;
    sl->chain_len = sl->len;
    chain[n++] = (struct vring_desc_le){slot_gpa(q, s, META_HDR), 16, 0, 0};
    switch (sl->kind) {
    case DP_DRV_READ:
        chain[n++] = (struct vring_desc_le){data_gpa(q, s), sl->len, VRING_DESC_F_WRITE, 0};
        break;
    case DP_DRV_WRITE:
        chain[n++] = (struct vring_desc_le){data_gpa(q, s), sl->len, 0, 0};
        break;
    case DP_DRV_DISCARD:
    case DP_DRV_WRITE_ZEROES:
        chain[n++] = (struct vring_desc_le){slot_gpa(q, s, META_SEG), 16, 0, 0};
        break;
    default:
        break;
    }
    chain[n++] = (struct vring_desc_le){slot_gpa(q, s, META_STATUS), 1, VRING_DESC_F_WRITE, 0};

    if (q->indirect) {
        struct vring_desc_le *table = gpa_host(q, slot_gpa(q, s, META_TABLE));

        for (unsigned i = 0; i < n; i++) {
            chain[i].flags |= i + 1 < n ? VRING_DESC_F_NEXT : 0;
            chain[i].next = (uint16_t)(i + 1 < n ? i + 1 : 0);
            table[i] = chain[i];
        }
        d->desc[s] = (struct vring_desc_le){slot_gpa(q, s, META_TABLE), 16 * n,
                                         VRING_DESC_F_INDIRECT, 0};
    } else {
        uint16_t head = slot_head(d, s);

        for (unsigned i = 0; i < n; i++) {
            chain[i].flags |= i + 1 < n ? VRING_DESC_F_NEXT : 0;
            chain[i].next = (uint16_t)(i + 1 < n ? head + i + 1 : 0);
            d->desc[head + i] = chain[i];
        }
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

/* --- choosing the next request -------------------------------------------- */

static int can_issue(struct drv *d, int stopping)
{
    const struct dp_drv_queue *q = d->q;

    if (stopping || !d->nfree)
        return 0;
    if (q->max_ios && d->issued >= q->max_ios)
        return 0;
    if (q->ops && d->op_next >= q->nops)
        return 0;
    return 1;
}

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
static void fill_slot(struct drv *d, uint32_t s)
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

/* Fill free slots into the avail ring, without publishing avail->idx yet. */
static void fill(struct drv *d, int stopping, uint64_t now)
{
    const struct dp_drv_queue *q = d->q;

    while (can_issue(d, stopping)) {
        uint32_t s;

        if (q->ops && q->timed && q->ops[d->op_next].t_ns > now - q->stats.start_ns)
            break;
        s = d->free[--d->nfree];
        fill_slot(d, s);
        *avail_ring(d, d->avail_idx) = slot_head(d, s);
        d->avail_idx++;
        d->batch[d->nbatch++] = s;
        d->inflight++;
    }
}

/* Publish the filled batch (submitted at now) and kick if the device asked for it. */
static int publish(struct drv *d, uint64_t now)
{
    struct dp_drv_queue *q = d->q;
    uint16_t old = d->published_idx;
    int kick;

    if (d->avail_idx == old)
        return 0;
    for (uint32_t i = 0; i < d->nbatch; i++)
        d->slots[d->batch[i]].submit_ns = now;
    d->nbatch = 0;
    /* The ring entries and descriptors must be visible before the index. */
    dp_used_idx_release((uintptr_t)(d->avail + 2), d->avail_idx);
    d->published_idx = d->avail_idx;
    /* Publishing avail->idx, then reading avail_event / used->flags: the
     * missed-kick race needs the full fence (dp_smp_mb says why). */
    dp_smp_mb();
    if (q->event_idx)
        kick = vring_need_event(*avail_event(d), d->avail_idx, old);
    else
        kick = !(*(volatile uint16_t *)d->used & VRING_USED_F_NO_NOTIFY);
    if (kick) {
        uint64_t one = 1;

        if (write(q->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            return -errno;
        q->stats.kicks++;
    }
    return 0;
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

static void complete(struct drv *d, struct slot *sl, uint32_t s, uint64_t now)
{
    struct dp_drv_queue *q = d->q;
    struct dp_drv_stats *st = &q->stats;
    uint8_t status = *(volatile uint8_t *)gpa_host(q, slot_gpa(q, s, META_STATUS));

    st->ios++;
    st->ios_by_kind[sl->kind]++;
    st->bytes_by_kind[sl->kind] += sl->len;
    st->hist[dp_hist_index(now - sl->submit_ns)]++;
    if (status != 0) {
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
        q->gen_map[sl->block] = status == 0 || sl->kind == DP_DRV_READ ? sl->gen : 0;
    sl->busy = 0;
    d->free[d->nfree++] = s;
    d->inflight--;
}

/*
 * Harvest the used ring.  Returns the number completed (with *now, the clock
 * when they were seen), or DP_DRV_E_BAD_USED.
 */
static int harvest(struct drv *d, uint64_t *now_out)
{
    struct dp_drv_queue *q = d->q;
    uint16_t end = used_idx_acquire(d);
    uint64_t now;
    int n = 0;

    if (end == d->last_used_idx)
        return 0;
    *now_out = now = dp_now_ns();
    while (d->last_used_idx != end) {
        const uint8_t *elem = d->used + 4 + 8u * (d->last_used_idx % q->num);
        uint32_t id, s;

        memcpy(&id, elem, 4);
        s = q->indirect ? id : id / 3;
        if (s >= q->iodepth || slot_head(d, s) != id || !d->slots[s].busy) {
            q->stats.bad_used_id = id;
            return DP_DRV_E_BAD_USED;
        }
        complete(d, &d->slots[s], s, now);
        d->last_used_idx++;
        n++;
    }
    return n;
}

/* Ask for a call when the next used entry appears (EVENT_IDX), then re-check. */
static int arm_and_check(struct drv *d)
{
    if (d->q->event_idx)
        *used_event(d) = d->last_used_idx;
    /* Writing used_event, then reading used->idx: without the fence the device may
     * miss our new used_event while we miss its new used->idx (a lost call). */
    dp_smp_mb();
    return used_idx_acquire(d) != d->last_used_idx;
}

/*
 * --notify poll: ask for no call, as a polling guest driver does, and busy-poll
 * the used ring instead.  With EVENT_IDX, used_event one behind our used index
 * lies outside every window the device tests (until the index wraps 2^16
 * requests later and costs one call nobody waits for); without it, the flag.
 */
static void suppress_calls(struct drv *d)
{
    if (d->q->event_idx)
        *used_event(d) = (uint16_t)(d->last_used_idx - 1);
    else
        *(volatile uint16_t *)d->avail = VRING_AVAIL_F_NO_INTERRUPT;
}

/*
 * --notify poll: spin on used->idx alone for a while, the clock and the
 * workload's limits being looked at only between spins.  1: it moved.
 */
static int spin(struct drv *d)
{
    for (unsigned i = 0; i < SPIN_ITERATIONS; i++) {
        if (*(volatile uint16_t *)(d->used + VRING_USED_IDX) != d->last_used_idx)
            return 1;
        dp_cpu_relax();
    }
    return 0;
}

static int wait_call(struct drv *d, int timeout_ms)
{
    struct pollfd pfd = {.fd = d->q->call_fd, .events = POLLIN};
    uint64_t v;
    int r = poll(&pfd, 1, timeout_ms);

    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if (r > 0) {
        if (read(d->q->call_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
            return -errno;
        d->q->stats.wakeups++;
    }
    return 0;
}

static int next_timeout_ms(struct drv *d, int stopping, uint64_t now)
{
    const struct dp_drv_queue *q = d->q;
    uint64_t due, ms;

    if (!q->ops || !q->timed || !can_issue(d, stopping))
        return POLL_MS;
    due = q->stats.start_ns + q->ops[d->op_next].t_ns;
    if (due <= now)
        return 0;
    ms = (due - now + 999999) / 1000000;
    return ms < POLL_MS ? (int)ms : POLL_MS;
}

static int setup(struct drv *d, struct dp_drv_queue *q)
{
    memset(d, 0, sizeof(*d));
    d->q = q;
    if (!q->num || q->num & (q->num - 1) || !q->iodepth ||
        q->iodepth > sizeof(d->batch) / sizeof(d->batch[0]) ||
        (q->indirect ? q->iodepth : 3 * q->iodepth) > q->num)
        return DP_DRV_E_CONFIG;
    if (q->buf_offset >= q->buf_stride)
        return DP_DRV_E_CONFIG;
    if (!q->ops && (!q->nblocks || !q->bs || q->bs % SECTOR ||
                    q->bs > q->buf_stride - q->buf_offset))
        return DP_DRV_E_CONFIG;
    for (uint64_t i = 0; q->ops && i < q->nops; i++) {
        const struct dp_drv_op *op = &q->ops[i];

        if (op->kind >= DP_DRV_NKINDS || op->len % SECTOR ||
            ((op->kind == DP_DRV_READ || op->kind == DP_DRV_WRITE) &&
             op->len > q->buf_stride - q->buf_offset))
            return DP_DRV_E_CONFIG;
    }
    d->desc = gpa_host(q, q->desc_gpa);
    d->avail = gpa_host(q, q->avail_gpa);
    d->used = gpa_host(q, q->used_gpa);
    d->slots = calloc(q->iodepth, sizeof(*d->slots));
    d->free = calloc(q->iodepth, sizeof(*d->free));
    if (!d->slots || !d->free) {
        free(d->slots);
        free(d->free);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < q->iodepth; i++) {
        d->free[i] = q->iodepth - 1 - i;
        d->slots[i].chain_kind = NO_CHAIN;
    }
    d->nfree = q->iodepth;
    d->rng = q->seed;
    d->avail_idx = d->published_idx = *(volatile uint16_t *)(d->avail + VRING_AVAIL_IDX);
    d->last_used_idx = *(volatile uint16_t *)(d->used + VRING_USED_IDX);
    if (q->notify_poll)
        suppress_calls(d);
    return 0;
}

int dp_drv_run(struct dp_drv_queue *q)
{
    struct drv d;
    struct dp_drv_stats *st = &q->stats;
    uint64_t cpu0, now, last_progress;
    int stopping = 0, ret;

    ret = setup(&d, q);
    if (ret)
        return ret;
    cpu0 = dp_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    st->start_ns = last_progress = now = dp_now_ns();
    /* Without EVENT_IDX, leave avail->flags 0: we always want the call. */
    fill(&d, stopping, now);
    ret = publish(&d, now);
    while (ret == 0) {
        int n = harvest(&d, &now);

        if (n < 0) {
            ret = n;
            break;
        }
        if (n) {
            last_progress = now;
        } else {
            if (q->notify_poll && spin(&d))
                continue;
            now = dp_now_ns();
        }
        if (__atomic_load_n(&q->stop, __ATOMIC_RELAXED) > 1) {
            ret = DP_DRV_E_ABORTED;
            break;
        }
        if (!stopping && (__atomic_load_n(&q->stop, __ATOMIC_RELAXED) ||
                          (q->runtime_ns && now - st->start_ns >= q->runtime_ns) ||
                          (q->max_ios && d.issued >= q->max_ios) ||
                          (q->ops && d.op_next >= q->nops)))
            stopping = 1;
        if (stopping && !d.inflight)
            break;
        fill(&d, stopping, now);
        ret = publish(&d, now);
        if (ret || n)
            continue;
        if (d.inflight && now - last_progress > q->stall_ns && q->stall_ns) {
            ret = DP_DRV_E_STALL;
            break;
        }
        if (q->notify_poll)
            continue;
        if (arm_and_check(&d))
            continue;
        ret = wait_call(&d, next_timeout_ms(&d, stopping, now));
    }
    st->end_ns = dp_now_ns();
    st->cpu_ns = dp_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    free(d.slots);
    free(d.free);
    return ret;
}

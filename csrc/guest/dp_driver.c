#define _GNU_SOURCE
#include "dp_driver.h"
#include "dp_drv_slot.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp_barrier.h"
#include "dp_cpu.h"
#include "dp_drv_ring.h"
#include "dp_virtio.h"

#define POLL_MS 100
#define SPIN_ITERATIONS 256

void dp_drv_prefault(uintptr_t addr, uint64_t len)
{
    memset((void *)addr, 0, len);
}

/* --- issuing ---------------------------------------------------------------- */

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

/* Fill free slots into the avail ring, without publishing avail->idx yet. */
static void fill(struct drv *d, int stopping, uint64_t now)
{
    const struct dp_drv_queue *q = d->q;

    while (can_issue(d, stopping)) {
        uint32_t s;

        if (q->ops && q->timed && q->ops[d->op_next].t_ns > now - q->stats.start_ns)
            break;
        s = d->free[--d->nfree];
        dp_drv_fill_slot(d, s);
        dp_drv_ring_add_avail(&d->ring, slot_head(d, s));
        d->batch[d->nbatch++] = s;
        d->inflight++;
    }
}

/* Publish the filled batch (submitted at now) and kick if the device asked for it. */
static int publish(struct drv *d, uint64_t now)
{
    struct dp_drv_queue *q = d->q;
    uint16_t old = d->published_idx;
    uint64_t kick_ns;
    int kick;

    if (d->ring.avail_idx == old)
        return 0;
    dp_drv_ring_publish(&d->ring);
    /* One clock read per batch, after avail->idx is out: the device may pop from here on. */
    kick_ns = dp_now_ns();
    for (uint32_t i = 0; i < d->nbatch; i++) {
        d->slots[d->batch[i]].submit_ns = now;
        d->slots[d->batch[i]].kick_ns = kick_ns;
    }
    d->nbatch = 0;
    d->published_idx = d->ring.avail_idx;
    kick = dp_drv_ring_needs_kick(&d->ring, old);
    if (kick) {
        uint64_t one = 1;

        if (write(q->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            return -errno;
        q->stats.kicks++;
    }
    return 0;
}

/* --- completions ----------------------------------------------------------- */

/*
 * Harvest the used ring.  Returns the number completed (with *now, the clock
 * when they were seen), or DP_DRV_E_BAD_USED.
 */
static int harvest(struct drv *d, uint64_t *now_out)
{
    struct dp_drv_queue *q = d->q;
    uint16_t end = dp_drv_ring_used_idx(&d->ring);
    uint64_t now;
    uint32_t id, len, s;
    int n = 0;

    if (end == d->ring.last_used_idx)
        return 0;
    *now_out = now = dp_now_ns();
    while (dp_drv_ring_get_used(&d->ring, end, &id, &len)) {
        s = q->indirect ? id : id / 3;
        if (s >= q->iodepth || slot_head(d, s) != id || !d->slots[s].busy) {
            q->stats.bad_used_id = id;
            return DP_DRV_E_BAD_USED;
        }
        dp_drv_complete(d, s, now);
        n++;
    }
    return n;
}

/* Ask for a call when the next used entry appears (EVENT_IDX), then re-check. */
static int arm_and_check(struct drv *d)
{
    if (d->q->event_idx)
        dp_drv_ring_set_used_event(&d->ring, d->ring.last_used_idx);
    /* Writing used_event, then reading used->idx: without the fence the device may
     * miss our new used_event while we miss its new used->idx (a lost call). */
    dp_smp_mb();
    return dp_drv_ring_used_idx(&d->ring) != d->ring.last_used_idx;
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
        dp_drv_ring_set_used_event(&d->ring, (uint16_t)(d->ring.last_used_idx - 1));
    else
        dp_drv_ring_set_avail_flags(&d->ring, VRING_AVAIL_F_NO_INTERRUPT);
}

/*
 * --notify poll: spin on used->idx alone for a while, the clock and the
 * workload's limits being looked at only between spins.  1: it moved.
 */
static int spin(struct drv *d)
{
    for (unsigned i = 0; i < SPIN_ITERATIONS; i++) {
        if (dp_drv_ring_used_idx(&d->ring) != d->ring.last_used_idx)
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
    if (dp_drv_ring_init(&d->ring, q->ram_host, q->ram_gpa, q->ram_size, q->desc_gpa,
                         q->avail_gpa, q->used_gpa, q->num, q->event_idx))
        return DP_DRV_E_CONFIG;
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
    d->published_idx = d->ring.avail_idx;
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


#define _GNU_SOURCE
#include "dp_thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "dp_fdio.h"
#include "dp_loop.h"

/*
 * A dataplane thread's life and the control plane's side of it: Python calls
 * these between runs (dp_thread_run, in dp_loop.c), on the thread itself.
 */


static void reset_queue(struct dp_queue *q)
{
    free(q->resubmit);
    memset(q, 0, sizeof(*q));
    q->kick_fd = q->call_fd = q->err_fd = -1;
}

struct dp_thread *dp_thread_new(int ctl_fd, struct dp_engine *eng, unsigned nqueues,
                                unsigned queue_depth, int *err)
{
    struct dp_thread *t = calloc(1, sizeof(*t));
    struct epoll_event ev = {.events = EPOLLIN};

    if (!t) {
        *err = -ENOMEM;
        return NULL;
    }
    t->ctl_fd = ctl_fd;
    t->eng = eng;
    t->nqueues = nqueues;
    t->depth = queue_depth ? queue_depth : 1;
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->queues = calloc(nqueues ? nqueues : 1, sizeof(*t->queues));
    t->batch = calloc(t->depth, sizeof(*t->batch));
    t->cqes = calloc(t->depth, sizeof(*t->cqes));
    t->qstats = calloc(nqueues ? nqueues : 1, sizeof(*t->qstats));
    if (t->epfd < 0 || !t->queues || !t->batch || !t->cqes || !t->qstats) {
        *err = t->epfd < 0 ? -errno : -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < nqueues; i++)
        reset_queue(&t->queues[i]);
    ev.data.u64 = dp_loop_ev_data(EV_CTL, 0);
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, ctl_fd, &ev) < 0) {
        *err = -errno;
        goto fail;
    }
    if (dp_engine_completion_fd(eng) >= 0) {
        ev.data.u64 = dp_loop_ev_data(EV_ENGINE, 0);
        if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, dp_engine_completion_fd(eng), &ev) < 0) {
            *err = -errno;
            goto fail;
        }
    }
    t->disk.align = 1;
    t->disk.writeback = 1;
    t->disk.seg_max = t->disk.size_max = UINT32_MAX;
    *err = 0;
    return t;

fail:
    dp_thread_free(t);
    return NULL;
}

void dp_thread_free(struct dp_thread *t)
{
    if (!t)
        return;
    if (t->epfd >= 0)
        close(t->epfd);
    dp_chain_free(&t->chain);
    if (t->bounce_wait)
        dp_blk_release(&t->rc, t->bounce_wait);
    if (t->limit_wait)
        dp_blk_release(&t->rc, t->limit_wait);
    dp_req_cache_clear(&t->rc);
    dp_bounce_free(t->rc.bounce);
    free(t->mem.regions);
    for (unsigned i = 0; t->queues && i < t->nqueues; i++)
        free(t->queues[i].resubmit);
    free(t->queues);
    free(t->batch);
    free(t->cqes);
    free(t->qstats);
    dp_recbuf_free(t->rec); /* flushes what is left */
    dp_narr_free(&t->narr);
    free(t);
}

/* -- set-up, from Python between runs --------------------------------------- */

void dp_thread_set_disk(struct dp_thread *t, uint64_t sectors, uint32_t align, int read_only,
                        int writeback, const uint8_t *serial, uint32_t seg_max, uint32_t size_max)
{
    t->disk.sectors = sectors;
    t->disk.align = align ? align : 1;
    t->disk.seg_max = seg_max;
    t->disk.size_max = size_max;
    t->disk.read_only = (uint8_t)!!read_only;
    memcpy(t->disk.serial, serial, sizeof(t->disk.serial));
    dp_thread_set_writeback(t, writeback);
}

void dp_thread_set_writeback(struct dp_thread *t, int writeback)
{
    __atomic_store_n(&t->disk.writeback, (uint8_t)!!writeback, __ATOMIC_RELAXED);
}

int dp_thread_set_memory(struct dp_thread *t, const struct dp_mem_region *r, unsigned n)
{
    struct dp_mem_region *copy = NULL;

    if (n) {
        copy = calloc(n, sizeof(*copy));
        if (!copy)
            return -ENOMEM;
        memcpy(copy, r, n * sizeof(*copy));
    }
    free(t->mem.regions);
    t->mem.regions = copy;
    t->mem.nregions = n;
    return dp_engine_set_memory(t->eng, copy, n);
}

int dp_thread_set_bounce(struct dp_thread *t, uint64_t budget)
{
    int err = 0;
    struct dp_bounce *b = budget ? dp_bounce_new(budget, &err) : NULL;

    if (budget && !b)
        return err;
    dp_bounce_free(t->rc.bounce);
    t->rc.bounce = b;
    return 0;
}

void dp_thread_set_capacity(struct dp_thread *t, uint64_t sectors)
{
    t->disk.sectors = sectors;
}

void dp_thread_set_limiter(struct dp_thread *t, struct dp_limiter *l)
{
    t->limiter = l;
}

void dp_thread_set_poll(struct dp_thread *t, uint64_t max_ns)
{
    t->poll_max_ns = max_ns;
    t->stats.poll_window_ns = 0;
}

void dp_thread_set_paused(struct dp_thread *t, int paused)
{
    t->paused = paused;
}

void dp_thread_set_log(struct dp_thread *t, uintptr_t base, uint64_t pages)
{
    t->log.base = (uint8_t *)base;
    t->log.pages = base ? pages : 0;
    t->rc.log = base != 0;
}

void dp_thread_set_log_used(struct dp_thread *t, unsigned index, uint64_t gpa, int on)
{
    struct dp_queue *q = &t->queues[index];

    q->log_used = (uint8_t)!!on;
    q->log_used_gpa = gpa;
}

int dp_thread_set_kick_fd(struct dp_thread *t, unsigned index, int fd)
{
    struct dp_queue *q = &t->queues[index];
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = dp_loop_ev_data(EV_KICK, index)};

    if (q->kick_fd >= 0)
        epoll_ctl(t->epfd, EPOLL_CTL_DEL, q->kick_fd, NULL);
    q->kick_fd = -1;
    if (fd >= 0) {
        if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return -errno;
        q->kick_fd = fd;
    }
    return 0;
}

void dp_thread_set_call_fd(struct dp_thread *t, unsigned index, int fd)
{
    t->queues[index].call_fd = fd;
}

int dp_thread_signal_call(struct dp_thread *t, unsigned index)
{
    /* SET_VRING_CALL installed a call fd: signal it once, as libvhost-user does, so that a
     * guest never waits for a completion whose interrupt went to the fd it replaced (across
     * a reconnect).  dp_fdio: a full or blocking fd never blocks the thread. */
    int fd = t->queues[index].call_fd, ret;

    if (fd < 0)
        return 0;
    ret = dp_fdio_signal(fd);
    return ret == DP_FDIO_FULL ? -EAGAIN : ret;
}

void dp_thread_set_err_fd(struct dp_thread *t, unsigned index, int fd)
{
    t->queues[index].err_fd = fd;
}

void dp_thread_attach(struct dp_thread *t, unsigned index, uint32_t num, uintptr_t desc,
                      uintptr_t avail, uintptr_t used, uint16_t last_avail_idx, int event_idx,
                      int indirect, uint32_t max_indirect)
{
    struct dp_queue *q = &t->queues[index];

    dp_vq_init(&q->vq, num, desc, avail, used, last_avail_idx, event_idx, indirect, max_indirect);
    q->vq.events_ctx = &t->narr; /* the ring's steps go to the narrative, while told */
    q->attached = 1;
}

void dp_thread_unattach(struct dp_thread *t, unsigned index)
{
    t->queues[index].attached = 0;
}

const uint16_t *dp_thread_resubmit_heads(const struct dp_thread *t, unsigned index)
{
    return t->queues[index].resubmit;
}

int dp_thread_start_inflight(struct dp_thread *t, unsigned index, uintptr_t region,
                             uint32_t desc_num, struct dp_inflight_recovery *out)
{
    struct dp_queue *q = &t->queues[index];
    uint16_t *heads;
    int ret;

    if (!q->attached)
        return -EINVAL;
    heads = calloc(q->vq.num, sizeof(*heads));
    if (!heads)
        return -DP_INFLIGHT_ENOMEM;
    dp_inflight_attach(&q->infl, region, desc_num);
    ret = dp_inflight_recover(&q->infl, q->vq.used_idx, q->vq.num, heads, out);
    if (ret < 0) {
        free(heads);
        dp_inflight_attach(&q->infl, 0, 0);
        return ret;
    }
    free(q->resubmit);
    q->resubmit = heads;
    q->nresubmit = out->nheads;
    q->resubmitted = 0;
    if (!out->fresh)
        q->vq.last_avail_idx = q->vq.shadow_avail_idx = out->last_avail_idx;
    q->pending = 1;
    return 0;
}

void dp_thread_break(struct dp_thread *t, unsigned index)
{
    struct dp_queue *q = &t->queues[index];

    q->broken = 1;
    q->pending = 0;
    if (q->err_fd >= 0)
        (void)dp_fdio_signal(q->err_fd);
}

void dp_thread_kick(struct dp_thread *t, unsigned index)
{
    t->queues[index].pending = 1;
}

void dp_thread_stop_ring(struct dp_thread *t, unsigned index)
{
    t->queues[index].stopping = 1;
    t->queues[index].pending = 0;
}

void dp_thread_reset_ring(struct dp_thread *t, unsigned index)
{
    dp_thread_set_kick_fd(t, index, -1);
    reset_queue(&t->queues[index]);
}

int dp_thread_last_avail_idx(const struct dp_thread *t, unsigned index)
{
    const struct dp_queue *q = &t->queues[index];

    return q->attached ? q->vq.last_avail_idx : -1;
}

int dp_thread_call_full(const struct dp_thread *t, unsigned index)
{
    return t->queues[index].call_full;
}

int dp_thread_is_broken(const struct dp_thread *t, unsigned index)
{
    return t->queues[index].broken;
}

int dp_thread_queue_inflight(const struct dp_thread *t, unsigned index)
{
    return t->queues[index].inflight;
}

unsigned dp_thread_inflight(const struct dp_thread *t)
{
    /* A held request was popped and parsed (for the old memory table, the old log...). */
    return t->inflight_io + !!t->bounce_wait + !!t->limit_wait;
}

int dp_thread_take_broken(struct dp_thread *t, unsigned index, char *msg, unsigned msglen)
{
    struct dp_queue *q = &t->queues[index];
    int code = q->newly_broken;

    if (code && msglen)
        snprintf(msg, msglen, "%s", q->err_msg);
    q->newly_broken = 0;
    return code;
}

const struct dp_thread_stats *dp_thread_stats(const struct dp_thread *t)
{
    return &t->stats;
}

const struct dp_qstats *dp_thread_qstats(const struct dp_thread *t, unsigned index)
{
    return &t->qstats[index];
}

const struct dp_tstats *dp_thread_tstats(const struct dp_thread *t)
{
    return &t->tstats;
}

int dp_thread_set_record(struct dp_thread *t, struct dp_rec *rec)
{
    dp_recbuf_free(t->rec);
    t->rec = rec ? dp_recbuf_new(rec) : NULL;
    return rec && !t->rec ? -ENOMEM : 0;
}

void dp_thread_set_trace(struct dp_thread *t, struct dp_budget *b)
{
    t->trace = b;
}

const char *dp_thread_narrative(const struct dp_thread *t, size_t *len)
{
    *len = t->narr.out.len;
    return t->narr.out.buf ? t->narr.out.buf : "";
}

void dp_thread_narrative_clear(struct dp_thread *t)
{
    t->narr.out.len = 0;
}

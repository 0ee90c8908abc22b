#define _GNU_SOURCE
#include "dp_loop.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "dp_cpu.h"
#include "dp_fdio.h"
#include "dp_loop_narr.h"

/* -- the pass: reap, pop, submit, notify ------------------------------------- */

static int can_pop(const struct dp_thread *t)
{
    return !t->paused && t->inflight_io < t->depth && !t->bounce_wait && !t->limit_wait;
}


/* A guest error: the queue takes no more requests and touches no more guest memory. */
static void break_queue(struct dp_thread *t, struct dp_queue *q, int code, const char *msg)
{
    q->broken = 1;
    q->pending = 0;
    q->newly_broken = code;
    snprintf(q->err_msg, sizeof(q->err_msg), "%s", msg);
    t->broke = 1;
    if (q->err_fd >= 0)
        (void)dp_fdio_signal(q->err_fd); /* a full err eventfd: the log line says it anyway */
}


/* -- dirty logging (dp_log.h) ---------------------------------------------------- */

/*
 * Mark [gpa, gpa+len) in the dirty log (the caller fenced after writing it: dp_log_fence).
 * A page past the log breaks every queue of the thread (DP_GERR_DIRTY_LOG): what the
 * device can no longer log, it must no longer write.
 */
static void log_pages(struct dp_thread *t, uint64_t gpa, uint64_t len)
{
    char msg[DP_ERRMSG_SIZE];
    int64_t n = dp_log_mark(&t->log, gpa, len);

    if (n >= 0) {
        t->stats.dirty_pages += (uint64_t)n;
        return;
    }
    snprintf(msg, sizeof(msg),
             "dirty log: guest address %#" PRIx64 "+%" PRIu64 " is past the log's %" PRIu64
             " pages (SET_LOG_BASE)", gpa, len, t->log.pages);
    /* Every later mark fails too: the thread writes no guest memory it cannot log. */
    t->log.pages = 0;
    for (unsigned i = 0; i < t->nqueues; i++) {
        struct dp_queue *q = &t->queues[i];

        if (q->attached && !q->broken)
            break_queue(t, q, DP_GERR_DIRTY_LOG, msg);
    }
}

/* The whole used ring of q, if it is logged (VHOST_VRING_F_LOG), after writing it. */
static void log_used_ring(struct dp_thread *t, struct dp_queue *q)
{
    uint32_t size = VRING_AVAIL_EVENT(q->vq.num) + (q->vq.event_idx ? 2u : 0u);

    if (!q->log_used)
        return;
    dp_log_fence(); /* the ring's bytes before their bits: the lost dirty page race */
    log_pages(t, q->log_used_gpa, size);
}

/* A device-writable piece at host address host: its guest-physical pages. */
static void log_host(struct dp_thread *t, uintptr_t host, uint64_t len)
{
    while (len) {
        const struct dp_mem_region *r = dp_mem_find_host(&t->mem, host);
        uint64_t off, n;

        if (!r) { /* not guest memory: cannot be, but never unlogged */
            log_pages(t, UINT64_MAX, 2);
            return;
        }
        off = host - r->host;
        n = len < r->size - off ? len : r->size - off;
        log_pages(t, r->gpa + off, n);
        host += n;
        len -= n;
    }
}

/*
 * The pages a completed request wrote: its data (recorded at parse: dp_req.logv) and its
 * status byte, after both are written and before its used element can be published (the
 * used ring itself is logged after used->idx: log_used_ring).  0 if the queue broke.
 */
static int log_request(struct dp_thread *t, struct dp_queue *q, const struct dp_req *req)
{
    dp_log_fence(); /* the request's bytes before their bits: the lost dirty page race */
    for (uint32_t i = 0; i < req->nlog; i++)
        log_host(t, req->logv[i].base, req->logv[i].len);
    log_host(t, req->status_at, 1);
    return !q->broken;
}


/* Signal the call eventfd; a full one drops this notification (counted, reported once). */
static void signal_call(struct dp_thread *t, unsigned index)
{
    struct dp_queue *q = &t->queues[index];

    if (dp_fdio_signal(q->call_fd) == 0) {
        t->stats.notifies++;
        if (DP_STATS)
            t->qstats[index].notifies++;
        return;
    }
    t->qstats[index].notifies_dropped++;
    if (!q->call_full) {
        q->call_full = 1;
        t->dropped = 1;
    }
}


/* A completion of this pass on q, reaped at t_reap (its used element is published at its end). */
static void done_at(struct dp_queue *q, uint64_t t_reap)
{
    for (uint32_t i = 0; i < q->ndone; i++)
        if (q->done[i].t_reap == t_reap) {
            q->done[i].n++;
            return;
        }
    if (q->ndone == DP_DONE_TIMES) {
        q->done[DP_DONE_TIMES - 1].n++; /* not reached: a pass reaps at three times at most */
        return;
    }
    q->done[q->ndone].t_reap = t_reap;
    q->done[q->ndone++].n = 1;
}


/* Counters of one completed request (its status byte is written). */
static void account_complete(struct dp_thread *t, unsigned index, const struct dp_req *req,
                             int has_result)
{
    struct dp_qstats *qs = &t->qstats[index];
    struct dp_layer *l = qs->layers.layer;
    /* No I/O: complete when parsed; pop->submit and submit->complete are 0. */
    uint64_t t_submit = has_result ? req->t_submit : req->t_pop;
    uint64_t t_reap = has_result ? t->t_reap : req->t_pop;

    qs->completed++;
    if (req->status == VIRTIO_BLK_S_OK && req->has_io) {
        if (req->io.op == DP_OP_READ)
            qs->bytes_read += req->io.length;
        else if (req->io.op == DP_OP_WRITE)
            qs->bytes_written += req->io.length;
    } else if (req->status == VIRTIO_BLK_S_IOERR) {
        qs->ioerr++;
    } else if (req->status == VIRTIO_BLK_S_UNSUPP) {
        qs->unsupp++;
    }
    dp_layer_add(&l[DP_LAT_KICK_POP], req->t_pop - req->t_wake, 1);
    dp_layer_add(&l[DP_LAT_POP_SUBMIT], t_submit - req->t_pop, 1);
    dp_layer_add(&l[DP_LAT_SUBMIT_COMPLETE], t_reap - t_submit, 1);
    qs->layers.pop_at += req->t_pop; /* wraps: only differences of these sums mean anything */
    done_at(&t->queues[index], t_reap);
    if (has_result)
        t->done_reaped++;
    else
        t->done_now++;
}


/*
 * A queue's completions of this pass, at its notify(): complete -> used at a
 * clock read just before its used->idx is published ...
 */
static void account_used(struct dp_thread *t, unsigned index)
{
    const struct dp_queue *q = &t->queues[index];

    t->t_used = dp_now_ns();
    for (uint32_t k = 0; k < q->ndone; k++)
        dp_layer_add(&t->qstats[index].layers.layer[DP_LAT_COMPLETE_USED],
                     t->t_used - q->done[k].t_reap, q->done[k].n);
}


/*
 * ... and used -> notify at one once it has decided, just before the call
 * eventfd is written: the guest may be woken, and reap, while the write is
 * still returning here, so the write belongs to notify -> reap.  (A later
 * queue of the pass counts the earlier queues' writes in complete -> used.)
 */
static void account_notified(struct dp_thread *t, unsigned index)
{
    struct dp_queue *q = &t->queues[index];
    struct dp_qlayers *l = &t->qstats[index].layers;
    uint64_t t_notify = dp_now_ns(), n = 0;

    for (uint32_t k = 0; k < q->ndone; k++)
        n += q->done[k].n;
    q->ndone = 0;
    dp_layer_add(&l->layer[DP_LAT_USED_NOTIFY], t_notify - t->t_used, n);
    l->notify_at += t_notify * n; /* wraps, as pop_at */
}


static void finish(struct dp_thread *t, unsigned index, struct dp_req *req, int64_t result,
                   int has_result)
{
    struct dp_queue *q = &t->queues[index];

    q->inflight--;
    q->touched = 1;
    if (!q->broken && q->attached) {
        uint16_t at = q->vq.used_idx;

        dp_blk_complete(req, result, has_result);
        /* Dirty logging: one predictable branch per request while it is off. */
        if (t->log.base && !log_request(t, q, req))
            goto release; /* the log is too small: the queue broke, nothing more is written */
        dp_vq_add_used(&q->vq, req->head, req->used_len);
        /* Linked into the last batch before used->idx goes out (dp_inflight.h). */
        dp_inflight_pre_put(&q->infl, req->head);
        q->needs_notify = 1;
        if (DP_STATS)
            account_complete(t, index, req, has_result);
        if (req->trace_seq) {
            dp_loop_narrate_complete(t, index, req, result, has_result, at);
            q->trace_flush = 1;
        }
    } else if (req->trace_seq) {
        dp_loop_narrate_released(t, index, req);
    }
release:
    dp_blk_release(&t->rc, req);
}


static void add_to_batch(struct dp_thread *t, struct dp_req *req)
{
    t->batch[t->nbatch++] = &req->io;
    t->batch_traced += req->trace_seq != 0;
    t->inflight_io++;
}


/* To the engine, unless it waits for bounce memory (then popping waits with it). */
static void start_io(struct dp_thread *t, struct dp_req *req)
{
    if (req->bounce_len && dp_blk_bounce(&t->rc, req) < 0) {
        t->bounce_wait = req;
        t->stats.bounce_waits++;
    } else {
        add_to_batch(t, req);
    }
}


/*
 * Book the request with the device's limiter at the time this pass woke (no
 * clock read of its own); 1 if it must wait: it is held, and popping with it.
 */
static int throttle(struct dp_thread *t, struct dp_req *req)
{
    uint8_t op = req->io.op;
    uint64_t wait;

    if (!t->limiter || op == DP_OP_FLUSH)
        return 0;
    /* Discard and write-zeroes book as writes of their bytes, as QEMU's throttle does. */
    wait = dp_limiter_admit(t->limiter, op != DP_OP_READ, req->io.length, t->t_wake);
    if (!wait)
        return 0;
    t->limit_wait = req;
    t->limit_until = t->t_wake + wait;
    t->limit_gen = __atomic_load_n(&t->limiter->generation, __ATOMIC_RELAXED);
    t->stats.limit_waits++;
    return 1;
}


/*
 * The next chain: first the heads the inflight area says were in flight when
 * the last backend died, oldest first, then the avail ring.  Marked in flight
 * before its request starts.  1, 0 (empty) or -enum dp_gerr.
 */
static int next_chain(struct dp_thread *t, struct dp_queue *q)
{
    int ret;

    if (q->resubmitted < q->nresubmit)
        ret = dp_vq_map_desc(&q->vq, &t->mem, &t->chain, q->resubmit[q->resubmitted++]);
    else
        ret = dp_vq_pop(&q->vq, &t->mem, &t->chain);
    if (ret > 0)
        dp_inflight_get(&q->infl, t->chain.head);
    return ret;
}


static void pop_queue(struct dp_thread *t, unsigned index)
{
    struct dp_queue *q = &t->queues[index];
    uint32_t budget;

    if (!q->attached || q->broken || q->stopping) {
        q->pending = 0;
        return;
    }
    /* A driver that takes interrupts gets small batches: it sleeps, and wakes sooner. */
    budget = q->irq_driver ? DP_BATCH_WAKE : DP_BATCH_MAX;
    if (budget > q->vq.num)
        budget = q->vq.num;
    /*
     * One clock read per ring per pass, not per request: a batch pops in a few
     * microseconds, and clock_gettime costs tens of ns in a VM.  Every request
     * of the batch carries the time its ring's popping began.
     */
    uint64_t t_pop = 0;
    while (budget) {
        struct dp_req *req;
        char msg[DP_ERRMSG_SIZE];
        int ret;

        if (!can_pop(t))
            return; /* the engine is full, or a request waits for bounce memory: stay pending */

        uint32_t seq = 0;

        q->vq.events = t->trace ? &dp_loop_ring_narrator : NULL;
        ret = next_chain(t, q);
        q->vq.events = NULL;
        if (t->narr.scratch.len)
            seq = dp_loop_narrate_pop(t, index); /* the pop was narrated: number it */
        if (ret == 0) {
            /* Empty: kicks come back on only before the thread sleeps (prepare_to_sleep). */
            q->pending = 0;
            return;
        }
        if (ret < 0) {
            break_queue(t, q, -ret, q->vq.err);
            return;
        }
        budget--;
        t->stats.requests++;
        if (TIMING(t) && !t_pop)
            t_pop = dp_now_ns();
        ret = dp_blk_parse(&t->disk, &t->chain, &t->rc, &req, msg, sizeof(msg));
        if (ret < 0) {
            break_queue(t, q, -ret, msg);
            return;
        }
        if (!q->kicks_off) {
            /* A request in hand: no kicks while we work (a bad ring gets no write at all). */
            dp_vq_disable_notification(&q->vq);
            q->kicks_off = 1;
            if (t->log.base)
                log_used_ring(t, q); /* used->flags, without EVENT_IDX */
        }
        req->t_wake = t->t_wake;
        req->t_pop = t_pop;
        req->trace_seq = seq;
        t->npopped++;
        if (DP_STATS)
            t->qstats[index].requests[dp_stat_kind_of(req->type)]++;
        if (t->rec && req->has_io)
            dp_recbuf_add(t->rec, t_pop, index, req->io.op, req->io.offset / SECTOR_SIZE,
                          req->io.length);
        if (seq)
            dp_loop_narrate_parsed(t, index, req);
        q->inflight++;
        req->queue = index;
        if (!req->has_io) {
            finish(t, index, req, 0, 0);
        } else if (throttle(t, req)) {
            return; /* stays pending: popping goes on once the limiter lets it go */
        } else {
            start_io(t, req);
            if (t->bounce_wait)
                return; /* stays pending: popping goes on once the request got its memory */
        }
    }
    /* Budget spent: stay pending so other queues get a turn first. */
}


static void notify(struct dp_thread *t, unsigned index)
{
    struct dp_queue *q = &t->queues[index];
    int need;

    if (!q->needs_notify || !q->attached || q->broken)
        return;
    q->needs_notify = 0;
    if (DP_STATS && q->ndone)
        account_used(t, index);
    dp_vq_flush_used(&q->vq);
    /*
     * The used ring's bits follow the used->idx store, as Linux's vhost logs it: a bit set
     * before the store could be taken by QEMU, with the page copied without the new
     * used->idx, and the destination would resume behind what the guest was told.
     */
    if (t->log.base)
        log_used_ring(t, q);
    /* Only after used->idx is published (a release store): the "lost request" race. */
    dp_inflight_post_put(&q->infl, q->vq.used_idx);
    q->vq.events = q->trace_flush ? &dp_loop_ring_narrator : NULL;
    need = dp_vq_should_notify(&q->vq);
    if (DP_STATS && q->ndone)
        account_notified(t, index);
    /* Interrupt-driven (a notify was due within the last few): see pop_queue. */
    q->irq_driver = need ? IRQ_DRIVER_PASSES : q->irq_driver ? q->irq_driver - 1 : 0;
    if (need && q->call_fd >= 0)
        signal_call(t, index);
    if (q->vq.events) {
        dp_loop_narrate_notify(t, index, need);
        q->vq.events = NULL;
    }
    q->trace_flush = 0;
}


static int reap(struct dp_thread *t)
{
    int n = dp_engine_reap(t->eng, t->cqes, t->depth);

    for (int i = 0; i < n; i++) {
        struct dp_req *req = (struct dp_req *)(uintptr_t)t->cqes[i].token;

        t->inflight_io--;
        finish(t, req->queue, req, t->cqes[i].res, 1);
    }
    return n;
}


/* The request that waits for bounce memory: into the batch once it has some. */
static void resume_bounce_wait(struct dp_thread *t)
{
    struct dp_req *req = t->bounce_wait;
    const struct dp_queue *q;

    if (!req)
        return;
    q = &t->queues[req->queue];
    if (q->broken || !q->attached) {
        t->bounce_wait = NULL;
        finish(t, req->queue, req, 0, 0); /* releases it without touching guest memory */
    } else if (dp_blk_bounce(&t->rc, req) == 0) {
        t->bounce_wait = NULL;
        t->stats.bounce_peak = dp_bounce_peak(t->rc.bounce);
        add_to_batch(t, req);
    }
}


/*
 * The request the limiter holds: on its way once its wait is over (at this pass's
 * time), or at once when the limits changed since (set-limits: its wait was booked
 * under the old ones).
 */
static void resume_limit_wait(struct dp_thread *t)
{
    struct dp_req *req = t->limit_wait;
    const struct dp_queue *q;

    if (!req)
        return;
    q = &t->queues[req->queue];
    if (q->broken || !q->attached) {
        t->limit_wait = NULL;
        finish(t, req->queue, req, 0, 0); /* releases it without touching guest memory */
    } else if (t->t_wake >= t->limit_until ||
               __atomic_load_n(&t->limiter->generation, __ATOMIC_RELAXED) != t->limit_gen) {
        t->limit_wait = NULL;
        start_io(t, req);
    }
}


/* wait_ms cut so that the blocking wait ends when the held request may go (epoll's ms, rounded up). */
static int limit_wait_ms(const struct dp_thread *t, int wait_ms, uint64_t now)
{
    uint64_t left, ms;

    if (!t->limit_wait || !wait_ms)
        return wait_ms;
    left = t->limit_until > now ? t->limit_until - now : 0;
    ms = (left + 999999) / 1000000;
    if (ms > INT_MAX)
        ms = INT_MAX;
    if (wait_ms < 0 || ms < (uint64_t)wait_ms)
        return (int)ms;
    return wait_ms;
}

static int any_pending(const struct dp_thread *t)
{
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].pending)
            return 1;
    return 0;
}


int dp_thread_busy(const struct dp_thread *t)
{
    return t->inflight_io || t->bounce_wait || t->limit_wait ||
           (any_pending(t) && can_pop(t));
}


static int idle_reached(const struct dp_thread *t)
{
    if (t->paused && !t->inflight_io && !t->bounce_wait && !t->limit_wait)
        return 1;
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].stopping && !t->queues[i].inflight)
            return 1;
    return 0;
}


static void account_batch(struct dp_thread *t)
{
    t->t_submit = dp_now_ns();
    if (t->npopped) {
        t->tstats.batch[dp_stat_bucket(t->npopped)]++;
        t->tstats.batch_sum += t->npopped;
    }
    for (unsigned i = 0; i < t->nbatch; i++)
        ((struct dp_req *)(uintptr_t)t->batch[i]->token)->t_submit = t->t_submit;
}


/* Submit the batch; completions the engine made at once are reaped in the same pass. */
static int submit(struct dp_thread *t)
{
    int ret;

    t->stats.submits++;
    ret = dp_engine_submit(t->eng, t->batch, t->nbatch);
    if (ret < 0)
        return ret; /* a host failure, not guest input: as the reference, fatal */
    if (t->batch_traced)
        dp_loop_narrate_submitted(t);
    if (!dp_engine_ready(t->eng))
        return 0;
    /* What the submit call did itself (io_uring on the page cache) is host I/O: one clock read. */
    t->t_reap = TIMING(t) ? dp_now_ns() : t->t_submit;
    return reap(t);
}


/* -- waiting: adaptive polling, the kicks, the one blocking wait ------------------ */

static void drain(int fd)
{
    eventfd_t v;
    (void)eventfd_read(fd, &v); /* EAGAIN when already clear */
}


/*
 * A kick fd that hung up or failed can never wake the queue again, and
 * level-triggered epoll would report it on every wait: stop watching it and
 * break the queue.  Its fd stays open until the control plane detaches it.
 */
static void kick_failed(struct dp_thread *t, unsigned index, const char *why)
{
    struct dp_queue *q = &t->queues[index];

    epoll_ctl(t->epfd, EPOLL_CTL_DEL, q->kick_fd, NULL);
    q->kick_fd = -1;
    if (!q->broken)
        break_queue(t, q, DP_GERR_KICK_FD, why);
}


static void kick_event(struct dp_thread *t, unsigned index, uint32_t events)
{
    int ret;

    if (events & (EPOLLHUP | EPOLLERR)) {
        kick_failed(t, index, events & EPOLLERR ? "kick fd reported EPOLLERR"
                                                : "kick fd reported EPOLLHUP");
        return;
    }
    ret = dp_fdio_drain(t->queues[index].kick_fd);
    if (ret < 0)
        kick_failed(t, index, "kick fd cannot be read");
    else
        t->queues[index].pending = 1;
}

/* Anything to do without waiting: an avail ring moved (marked pending), or completions wait. */
static int poll_once(struct dp_thread *t)
{
    int found = dp_engine_ready(t->eng);

    if (can_pop(t))
        for (unsigned i = 0; i < t->nqueues; i++) {
            struct dp_queue *q = &t->queues[i];

            if (q->attached && !q->broken && !q->stopping && dp_vq_peek(&q->vq)) {
                q->pending = 1;
                found = 1;
            }
        }
    return found;
}


/*
 * Before a blocking wait: kicks back on for every ring that had them off (a
 * last look at each: work published meanwhile would send no kick), and the
 * engine's completion fd re-armed.  1: work found, do not block.
 */
static int prepare_to_sleep(struct dp_thread *t)
{
    int found = 0;

    for (unsigned i = 0; i < t->nqueues; i++) {
        struct dp_queue *q = &t->queues[i];
        int ret;

        if (!q->kicks_off)
            continue;
        q->kicks_off = 0;
        if (!q->attached || q->broken)
            continue;
        ret = dp_vq_enable_notification(&q->vq);
        if (t->log.base)
            log_used_ring(t, q); /* avail_event, or used->flags */
        if (ret < 0) {
            break_queue(t, q, -ret, q->vq.err);
            found = 1;
        } else if (ret > 0 && !q->stopping) {
            q->pending = 1;
            found |= can_pop(t);
        }
    }
    if (dp_engine_prepare_wait(t->eng))
        found = 1;
    return found;
}


/*
 * QEMU's adaptive polling (util/aio-posix.c): block_ns is how long it took
 * from the start of polling until there was something to do.  Work found
 * inside the window leaves it alone; a wait longer than poll_max_ns means
 * polling is wasted, so it stops; anything between doubles the window.
 */
static void adjust_poll_window(struct dp_thread *t, uint64_t block_ns)
{
    uint64_t *w = &t->stats.poll_window_ns, grown;

    if (block_ns <= *w)
        return;
    if (block_ns > t->poll_max_ns) {
        *w = 0;
    } else if (*w < t->poll_max_ns && block_ns < t->poll_max_ns) {
        grown = *w ? *w * 2 : POLL_NS_START;
        *w = grown < t->poll_max_ns ? grown : t->poll_max_ns;
    }
}


/* Poll for up to the window from *now (advanced to when polling ended); 1: work found. */
static int poll_window(struct dp_thread *t, uint64_t *now)
{
    uint64_t window = t->stats.poll_window_ns, start = *now;
    int found = 0;

    if (!window)
        return 0;
    while (!found && *now - start < window) {
        found = poll_once(t);
        if (!found) {
            /*
             * With requests at the engine, the thread that finishes them (an io_uring
             * io-wq worker, the pool's) may need this very CPU: yield it rather than
             * spin.  (With the page cache on tmpfs, punted to io-wq, polling on 2 CPUs
             * otherwise halved what a polling guest got.)
             */
            if (t->inflight_io)
                sched_yield();
            else
                dp_cpu_relax();
        }
        *now = dp_now_ns();
    }
    t->stats.poll_ns += *now - start;
    if (found)
        t->stats.poll_hits++;
    else
        t->stats.poll_misses++;
    return found;
}

/*
 * Wait for work: none at all when there is work in hand (wait_ms 0), else
 * poll for the adaptive window, else block in epoll_wait.  *now: the clock
 * when it returns; *flags gets DP_RUN_CTL / DP_RUN_TIMEOUT, *completions 1
 * if the engine's fd fired.  0 or -errno.
 */
static int wait_for_work(struct dp_thread *t, int wait_ms, uint64_t *now, int *flags,
                         int *completions)
{
    struct epoll_event ev[MAX_EVENTS];
    uint64_t start = *now;
    int polling = wait_ms && t->poll_max_ns, n;

    if (polling && poll_window(t, now))
        wait_ms = 0;
    if (wait_ms == 0 && *now - t->last_fd_check < FD_CHECK_NS) {
        if (polling)
            adjust_poll_window(t, *now - start);
        t->stats.busy_passes++;
        return 0;
    }
    if (wait_ms && prepare_to_sleep(t))
        wait_ms = 0;
    if (wait_ms)
        t->stats.waits++;
    n = epoll_wait(t->epfd, ev, MAX_EVENTS, wait_ms);
    *now = t->last_fd_check = dp_now_ns();
    if (polling)
        adjust_poll_window(t, *now - start);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n == 0 && wait_ms > 0)
        *flags |= DP_RUN_TIMEOUT;
    for (int i = 0; i < n; i++) {
        int kind = (int)(ev[i].data.u64 >> 32);
        unsigned index = (unsigned)ev[i].data.u64;

        if (kind == EV_CTL) {
            drain(t->ctl_fd);
            *flags |= DP_RUN_CTL;
        } else if (kind == EV_KICK && index < t->nqueues && t->queues[index].kick_fd >= 0) {
            kick_event(t, index, ev[i].events);
        } else if (kind == EV_ENGINE) {
            *completions = 1;
        }
    }
    return 0;
}

/* One pass of dataplane/device/datapath/python.py PythonDatapath.run; returns DP_RUN_* bits or -errno. */
static int pass(struct dp_thread *t, int wait_ms)
{
    int flags = 0, completions = 0, ret, reaped = 0;
    uint64_t now = dp_now_ns();

    t->stats.passes++;
    if ((any_pending(t) && can_pop(t)) || t->bounce_wait || dp_engine_ready(t->eng))
        wait_ms = 0;
    wait_ms = limit_wait_ms(t, wait_ms, now);
    ret = wait_for_work(t, wait_ms, &now, &flags, &completions);
    if (ret < 0)
        return ret;
    /* Rings with kicks off say nothing on their fds: look at them all. */
    poll_once(t);
    t->t_wake = t->t_reap = now;
    t->done_reaped = t->done_now = 0;
    /*
     * The reference reaps every pass; here only when the completion fd fired
     * or completions are known to wait, which saves the engine's work on
     * passes that only a kick woke.
     */
    if (completions || dp_engine_ready(t->eng))
        reaped = reap(t);
    t->nbatch = 0;
    t->npopped = 0;
    t->batch_traced = 0;
    resume_bounce_wait(t); /* even paused: it holds guest memory, and must finish */
    resume_limit_wait(t);  /* likewise */
    if (!t->paused)
        for (unsigned i = 0; i < t->nqueues; i++)
            if (t->queues[i].pending)
                pop_queue(t, i);
    if (DP_STATS && (t->npopped || t->nbatch))
        account_batch(t);
    if (t->nbatch) {
        ret = submit(t);
        if (ret < 0)
            return ret;
        reaped += ret;
    }
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].touched) {
            t->queues[i].touched = 0;
            notify(t, i);
        }
    for (unsigned i = 0; DP_STATS && i < t->nqueues; i++)
        t->queues[i].ndone = 0; /* a queue that broke in this pass publishes nothing */
    if (t->rec && dp_recbuf_pending(t->rec))
        dp_recbuf_flush(t->rec); /* once per pass; a failure stops recording (dp_rec_error) */
    if (t->narr.out.len)
        flags |= DP_RUN_TRACE;
    if (t->broke) {
        t->broke = 0;
        flags |= DP_RUN_BROKEN;
    }
    if (t->dropped) {
        t->dropped = 0;
        flags |= DP_RUN_DROPPED;
    }
    if (reaped > 0 && idle_reached(t))
        flags |= DP_RUN_IDLE;
    return flags;
}


int dp_thread_run(struct dp_thread *t, int timeout_ms)
{
    uint64_t deadline = timeout_ms > 0 ? dp_now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;

    if (!t->started) {
        int ret = dp_engine_start(t->eng);
        if (ret < 0)
            return ret;
        t->started = 1;
    }
    for (;;) {
        int wait_ms = timeout_ms, flags;

        if (timeout_ms > 0) {
            uint64_t now = dp_now_ns();
            wait_ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        }
        flags = pass(t, wait_ms);
        if (flags < 0 ||
            (flags & (DP_RUN_CTL | DP_RUN_BROKEN | DP_RUN_IDLE | DP_RUN_TRACE | DP_RUN_DROPPED)))
            return flags;
        if (timeout_ms == 0 || (timeout_ms > 0 && dp_now_ns() >= deadline))
            return flags | DP_RUN_TIMEOUT;
    }
}

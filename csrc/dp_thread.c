#define _GNU_SOURCE
#include "dp_thread.h"

#include <errno.h>
#include <sched.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "dp_blk.h"
#include "dp_cpu.h"
#include "dp_fdio.h"
#include "dp_vq.h"

#define MAX_EVENTS 64
#define SECTOR_SIZE 512u
#define POLL_NS_START 4000 /* QEMU's first adaptive polling window */
/*
 * A pass with work in hand makes no syscall: it peeks at the rings and asks
 * the engine without one.  It still looks at the fds (the control eventfd
 * above all) once this often, which bounds how long a command waits.
 */
#define FD_CHECK_NS 50000
#define IRQ_DRIVER_PASSES 8

enum { EV_CTL = 0, EV_ENGINE = 1, EV_KICK = 2 };

struct dp_queue {
    struct dp_vq vq;
    int kick_fd;
    int call_fd;
    int err_fd;
    uint8_t attached; /* vq is usable (the reference's "q.vq is not None") */
    uint8_t broken;
    uint8_t stopping;
    uint8_t pending;
    uint8_t needs_notify;
    uint8_t touched;
    uint8_t kicks_off;    /* kicks disabled while we work on the ring (dp_vq_disable_notification) */
    uint8_t irq_driver;   /* notifies ago that one was due, counting down: the driver sleeps */
    uint8_t trace_flush;  /* a traced request completed: narrate the next notify */
    uint8_t call_full;    /* a notification was dropped on a full call eventfd (logged once) */
    int newly_broken; /* enum dp_gerr, until Python takes it */
    int32_t inflight;
    char err_msg[DP_ERRMSG_SIZE];
};

struct dp_thread {
    int epfd;
    int ctl_fd;
    struct dp_engine *eng;
    int started;
    struct dp_disk disk;
    struct dp_mem mem;
    unsigned nqueues;
    struct dp_queue *queues;
    unsigned depth;
    unsigned inflight_io; /* requests at the engine */
    unsigned nbatch;
    int paused;
    int broke;            /* a queue broke during this run */
    int dropped;          /* a queue dropped its first notification during this run */
    struct dp_io **batch;
    struct dp_cqe *cqes;
    struct dp_chain chain;
    struct dp_req_cache rc;
    struct dp_req *bounce_wait; /* popped, waiting for bounce memory; popping waits with it */
    uint64_t last_fd_check;     /* when epoll_wait last ran */
    uint64_t poll_max_ns;
    struct dp_thread_stats stats;
    /* Instrumentation: counters (dp_stats.h), --record, --trace-requests. */
    struct dp_qstats *qstats;
    struct dp_tstats tstats;
    uint64_t t_wake;        /* this pass: the wait returned */
    uint64_t t_reap;        /* this reap: when its completions were seen */
    uint64_t t_submit;      /* this pass: popping ended, the batch goes to the engine */
    unsigned npopped;       /* this pass: requests popped and parsed */
    unsigned done_reaped;   /* this pass: used elements added for reaped requests */
    unsigned done_now;      /* this pass: ... for requests that needed no I/O */
    unsigned batch_traced;  /* this pass: traced requests in the batch */
    struct dp_recbuf *rec;  /* NULL: not recording */
    struct dp_budget *trace; /* NULL: not (or no longer) narrating */
    struct dp_narr narr;
};

/* Per-request clock reads: for the counters, or for the recorded times. */
#define TIMING(t) (DP_STATS || (t)->rec)

static uint64_t ev_data(int kind, unsigned index)
{
    return ((uint64_t)kind << 32) | index;
}

static void drain(int fd)
{
    eventfd_t v;
    (void)eventfd_read(fd, &v); /* EAGAIN when already clear */
}

static void reset_queue(struct dp_queue *q)
{
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
    ev.data.u64 = ev_data(EV_CTL, 0);
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, ctl_fd, &ev) < 0) {
        *err = -errno;
        goto fail;
    }
    if (dp_engine_completion_fd(eng) >= 0) {
        ev.data.u64 = ev_data(EV_ENGINE, 0);
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
    dp_req_cache_clear(&t->rc);
    dp_bounce_free(t->rc.bounce);
    free(t->mem.regions);
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

void dp_thread_set_poll(struct dp_thread *t, uint64_t max_ns)
{
    t->poll_max_ns = max_ns;
    t->stats.poll_window_ns = 0;
}

void dp_thread_set_paused(struct dp_thread *t, int paused)
{
    t->paused = paused;
}

int dp_thread_set_kick_fd(struct dp_thread *t, unsigned index, int fd)
{
    struct dp_queue *q = &t->queues[index];
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ev_data(EV_KICK, index)};

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
    q->attached = 1;
}

void dp_thread_unattach(struct dp_thread *t, unsigned index)
{
    t->queues[index].attached = 0;
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
    return t->inflight_io;
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

/* -- the narrative of a traced request (the wording of dataplane/device/narrate.py) ---- */

static void commit_request(struct dp_thread *t, unsigned index, uint32_t seq)
{
    char prefix[48];

    snprintf(prefix, sizeof(prefix), "trace #%u q%u: ", seq, index);
    dp_narr_commit(&t->narr, prefix);
}

static void narrate_parsed(struct dp_thread *t, unsigned index, const struct dp_req *r)
{
    static const char *const ops[] = {"read", "write", "flush", "discard", "write-zeroes"};
    const struct dp_io *io = &r->io;
    struct dp_narr *n = &t->narr;

    dp_narr_add(n, "header: type %u (%s), sector %" PRIu64, r->type, dp_narr_type_name(r->type),
                r->sector);
    if (!r->has_io)
        dp_narr_add(n, "no I/O: status %u (%s), used len %u", r->status,
                    dp_narr_status_name(r->status), r->used_len);
    else if (io->op == DP_OP_READ || io->op == DP_OP_WRITE)
        dp_narr_add(n, "I/O: %s %" PRIu64 " bytes at offset %" PRIu64 " in %u iovec(s)%s%s",
                    ops[io->op], io->length, io->offset, io->iovcnt,
                    r->bounce_len ? " via a bounce buffer" : "",
                    io->flags & DP_IO_DSYNC ? " (write-through)" : "");
    else if (io->op == DP_OP_FLUSH)
        dp_narr_add(n, "I/O: flush");
    else
        dp_narr_add(n, "I/O: %s %" PRIu64 " bytes at offset %" PRIu64 "%s", ops[io->op],
                    io->length, io->offset, io->flags & DP_IO_UNMAP ? " (may unmap)" : "");
    commit_request(t, index, r->trace_seq);
}

static void narrate_submitted(struct dp_thread *t)
{
    for (unsigned i = 0; i < t->nbatch; i++) {
        const struct dp_req *r = (const struct dp_req *)(uintptr_t)t->batch[i]->token;

        if (r->trace_seq) {
            dp_narr_add(&t->narr, "submitted: in a batch of %u request(s), one engine call",
                        t->nbatch);
            commit_request(t, r->queue, r->trace_seq);
        }
    }
}

/* -- the pass: reap, pop, submit, notify ------------------------------------- */

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

/* Counters of one completed request (its status byte is written). */
static void account_complete(struct dp_thread *t, struct dp_qstats *qs, const struct dp_req *req,
                             int has_result)
{
    qs->completed++;
    if (req->status == 0 && req->has_io) {
        if (req->io.op == DP_OP_READ)
            qs->bytes_read += req->io.length;
        else if (req->io.op == DP_OP_WRITE)
            qs->bytes_written += req->io.length;
    } else if (req->status == 1) {
        qs->ioerr++;
    } else if (req->status == 2) {
        qs->unsupp++;
    }
    if (has_result) {
        t->tstats.lat[DP_LAT_SUBMIT_COMPLETE][dp_stat_bucket(t->t_reap - req->t_submit)]++;
        t->done_reaped++;
    } else {
        /* No I/O: complete when parsed; pop->submit and submit->complete are 0. */
        t->tstats.lat[DP_LAT_POP_SUBMIT][0]++;
        t->tstats.lat[DP_LAT_SUBMIT_COMPLETE][0]++;
        t->done_now++;
    }
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
        dp_vq_add_used(&q->vq, req->head, req->used_len);
        q->needs_notify = 1;
        if (DP_STATS)
            account_complete(t, &t->qstats[index], req, has_result);
        if (req->trace_seq) {
            if (has_result)
                dp_narr_add(&t->narr,
                            "complete: result %" PRId64 ", status %u (%s); add_used(id %u, len %u) "
                            "at used idx %u",
                            result, req->status, dp_narr_status_name(req->status), req->head,
                            req->used_len, at);
            else
                dp_narr_add(&t->narr, "complete: status %u (%s); add_used(id %u, len %u) at used "
                            "idx %u", req->status, dp_narr_status_name(req->status), req->head,
                            req->used_len, at);
            commit_request(t, index, req->trace_seq);
            q->trace_flush = 1;
        }
    } else if (req->trace_seq) {
        dp_narr_add(&t->narr, "complete: queue broken, released without touching guest memory");
        commit_request(t, index, req->trace_seq);
    }
    dp_blk_release(&t->rc, req);
}

static int can_pop(const struct dp_thread *t)
{
    return !t->paused && t->inflight_io < t->depth && !t->bounce_wait;
}

static void add_to_batch(struct dp_thread *t, struct dp_req *req)
{
    t->batch[t->nbatch++] = &req->io;
    t->batch_traced += req->trace_seq != 0;
    t->inflight_io++;
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

        q->vq.narr = t->trace ? &t->narr : NULL;
        ret = dp_vq_pop(&q->vq, &t->mem, &t->chain);
        q->vq.narr = NULL;
        if (t->narr.scratch.len) {
            /* The pop was narrated: number it, or drop it if the budget ran out meanwhile. */
            seq = (uint32_t)dp_budget_take(t->trace);
            if (seq) {
                commit_request(t, index, seq);
            } else {
                dp_narr_drop(&t->narr);
                t->trace = NULL;
            }
        }
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
        }
        req->t_pop = t_pop;
        req->trace_seq = seq;
        t->npopped++;
        if (DP_STATS) {
            t->qstats[index].requests[dp_stat_kind_of(req->type)]++;
            t->tstats.lat[DP_LAT_KICK_POP][dp_stat_bucket(t_pop - t->t_wake)]++;
        }
        if (t->rec && req->has_io)
            dp_recbuf_add(t->rec, t_pop, index, req->io.op, req->io.offset / SECTOR_SIZE,
                          req->io.length);
        if (seq)
            narrate_parsed(t, index, req);
        q->inflight++;
        req->queue = index;
        if (!req->has_io) {
            finish(t, index, req, 0, 0);
        } else if (req->bounce_len && dp_blk_bounce(&t->rc, req) < 0) {
            t->bounce_wait = req;
            t->stats.bounce_waits++;
            return; /* stays pending: popping goes on once the request got its memory */
        } else {
            add_to_batch(t, req);
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
    dp_vq_flush_used(&q->vq);
    q->vq.narr = q->trace_flush ? &t->narr : NULL;
    need = dp_vq_should_notify(&q->vq);
    /* Interrupt-driven (a notify was due within the last few): see pop_queue. */
    q->irq_driver = need ? IRQ_DRIVER_PASSES : q->irq_driver ? q->irq_driver - 1 : 0;
    if (need && q->call_fd >= 0)
        signal_call(t, index);
    if (q->vq.narr) {
        char prefix[32];

        if (need)
            dp_narr_add(&t->narr, "signal_used: %s",
                        q->call_fd >= 0 ? "call eventfd written" : "no call fd set");
        snprintf(prefix, sizeof(prefix), "trace q%u: ", index);
        dp_narr_commit(&t->narr, prefix);
        q->vq.narr = NULL;
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

static int any_pending(const struct dp_thread *t)
{
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].pending)
            return 1;
    return 0;
}

int dp_thread_busy(const struct dp_thread *t)
{
    return t->inflight_io || t->bounce_wait || (any_pending(t) && can_pop(t));
}

/* Anything to do without waiting: an avail ring moved, or completions wait. */
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
 * poll for the adaptive window, else block in epoll_wait.  The fds are looked
 * at (epoll_wait with no timeout) only when due, so a busy or polling thread
 * makes no syscall here.  *now: the clock when it returns.  0 or -errno.
 */
static int wait_events(struct dp_thread *t, int wait_ms, uint64_t *now, int *flags,
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

static int idle_reached(const struct dp_thread *t)
{
    if (t->paused && !t->inflight_io && !t->bounce_wait)
        return 1;
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].stopping && !t->queues[i].inflight)
            return 1;
    return 0;
}

static void account_batch(struct dp_thread *t)
{
    t->t_submit = dp_now_ns();
    if (t->npopped)
        t->tstats.batch[dp_stat_bucket(t->npopped)]++;
    for (unsigned i = 0; i < t->nbatch; i++) {
        struct dp_req *r = (struct dp_req *)(uintptr_t)t->batch[i]->token;

        r->t_submit = t->t_submit;
        t->tstats.lat[DP_LAT_POP_SUBMIT][dp_stat_bucket(t->t_submit - r->t_pop)]++;
    }
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
        narrate_submitted(t);
    if (!dp_engine_ready(t->eng))
        return 0;
    t->t_reap = t->t_submit;
    return reap(t);
}

/* One pass of datapath_python.PythonDatapath.run; returns DP_RUN_* bits or -errno. */
static int pass(struct dp_thread *t, int wait_ms)
{
    int flags = 0, completions = 0, ret, reaped = 0;
    uint64_t now = dp_now_ns();

    t->stats.passes++;
    if ((any_pending(t) && can_pop(t)) || t->bounce_wait || dp_engine_ready(t->eng))
        wait_ms = 0;
    ret = wait_events(t, wait_ms, &now, &flags, &completions);
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
    /* Counted before used->idx goes out: a stats reader who saw the completion sees it. */
    if (DP_STATS && (t->done_reaped || t->done_now)) {
        uint64_t t_notify = dp_now_ns();

        t->tstats.lat[DP_LAT_COMPLETE_NOTIFY][dp_stat_bucket(t_notify - t->t_wake)] +=
            t->done_reaped;
        t->tstats.lat[DP_LAT_COMPLETE_NOTIFY][dp_stat_bucket(t_notify - t->t_submit)] +=
            t->done_now;
    }
    for (unsigned i = 0; i < t->nqueues; i++)
        if (t->queues[i].touched) {
            t->queues[i].touched = 0;
            notify(t, i);
        }
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

/*
 * The dataplane thread's state, shared by the files that make it up (not for Python):
 *
 * - dp_thread.c: creating and freeing it, the control plane's setters and getters;
 * - dp_loop.c: the loop, dp_thread_run: the wait (adaptive polling, the kicks, the one
 *   blocking wait, bounded by the limiter's held request), then the pass (reap, pop,
 *   submit, notify);
 * - dp_loop_narr.c: the wording of the --trace-requests narrative.
 *
 * The loop's steps stay in dp_loop.c, static, so that the compiler keeps the
 * per-request ones inline: the other files are called once per run, or only while tracing.
 */
#ifndef DP_LOOP_H
#define DP_LOOP_H

#include <stdint.h>

#include "dp_blk.h"
#include "dp_limiter.h"
#include "dp_inflight.h"
#include "dp_log.h"
#include "dp_thread.h"
#include "dp_vq.h"

#define MAX_EVENTS 64
#define SECTOR_SIZE VIRTIO_BLK_SECTOR_SIZE
#define POLL_NS_START 4000 /* QEMU's first adaptive polling window */
/*
 * A pass with work in hand makes no syscall: it peeks at the rings and asks
 * the engine without one.  It still looks at the fds (the control eventfd
 * above all) once this often, which bounds how long a command waits.
 */
#define FD_CHECK_NS 50000
#define IRQ_DRIVER_PASSES 8

enum { EV_CTL = 0, EV_ENGINE = 1, EV_KICK = 2 };

/*
 * A pass reaps at no more than three times: its wake, its submit, and (a
 * request that needs no I/O) its ring's pop.  Their completions share the
 * clock reads of the pass's end (used published, notified).
 */
#define DP_DONE_TIMES 3
struct dp_done_at {
    uint64_t t_reap;
    uint32_t n;
};

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
    uint8_t log_used;     /* VHOST_VRING_F_LOG: the used ring is logged at log_used_gpa */
    uint64_t log_used_gpa;
    int newly_broken; /* enum dp_gerr, until Python takes it */
    int32_t inflight;
    char err_msg[DP_ERRMSG_SIZE];
    /* INFLIGHT_SHMFD (region 0: not tracked) and the heads to resubmit before new pops. */
    struct dp_inflight infl;
    uint16_t *resubmit;
    uint32_t nresubmit;
    uint32_t resubmitted;
    /* This pass's completions by the time they were reaped (the layer stats, dp_stats.h). */
    struct dp_done_at done[DP_DONE_TIMES];
    uint32_t ndone;
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
    struct dp_log log;          /* dirty logging (live migration); log.base NULL: off */
    struct dp_limiter *limiter; /* the device's, shared with its other threads; NULL: none */
    struct dp_req *limit_wait;  /* popped, held back by the limiter until limit_until */
    uint64_t limit_until;
    uint64_t limit_gen;         /* the limiter's generation when it was held */
    uint64_t last_fd_check;     /* when epoll_wait last ran */
    uint64_t poll_max_ns;
    struct dp_thread_stats stats;
    /* Instrumentation: counters (dp_stats.h), --record, --trace-requests. */
    struct dp_qstats *qstats;
    struct dp_tstats tstats;
    uint64_t t_wake;        /* this pass: the wait returned */
    uint64_t t_reap;        /* this reap: when its completions were seen */
    uint64_t t_submit;      /* this pass: popping ended, the batch goes to the engine */
    uint64_t t_used;        /* this pass: the queue being notified is about to publish used->idx */
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

static inline uint64_t dp_loop_ev_data(int kind, unsigned index)
{
    return ((uint64_t)kind << 32) | index;
}

#endif

/*
 * The body of a dataplane thread in C: the loop of dataplane/device/datapath/python.py
 * (wait, reap, pop, submit, notify), run with the GIL released.
 *
 * dp_thread_run() makes one blocking wait (epoll) over the kick eventfds,
 * the engine's completion fd and the control eventfd, processes what came,
 * and loops.  It returns to Python only when the control eventfd fired, a
 * queue broke (Python logs it), an awaited drain finished, or on timeout.
 * Everything else here is called by Python between runs, on the same
 * thread, except dp_thread_set_writeback (any thread).
 */
#ifndef DP_THREAD_H
#define DP_THREAD_H

#include <stdint.h>

#include "dp_engine.h"
#include "dp_limiter.h"
#include "dp_inflight.h"
#include "dp_mem.h"
#include "dp_narr.h"
#include "dp_rec.h"
#include "dp_stats.h"

/*
 * Requests popped from one ring per pass.  Each pass submits, reaps what the
 * engine finished at once and notifies: an engine that completes at submit
 * (a page-cache hit) keeps the guest busy refilling while later batches run,
 * instead of handing it a whole queue at once.  A driver that takes
 * interrupts (a notify was due lately) gets DP_BATCH_WAKE: woken sooner and
 * more often, it refills while the rest of the queue runs; a polling driver
 * gets DP_BATCH_MAX, the fewest passes.
 */
#define DP_BATCH_MAX 16
#define DP_BATCH_WAKE 4

/* Why dp_thread_run returned (a bit set), or -errno. */
#define DP_RUN_CTL 0x1     /* the control eventfd fired */
#define DP_RUN_TIMEOUT 0x2
#define DP_RUN_BROKEN 0x4  /* a queue broke: dp_thread_take_broken */
#define DP_RUN_IDLE 0x8    /* paused or stopping, and the last awaited request finished */
#define DP_RUN_TRACE 0x10  /* --trace-requests narrative waits: dp_thread_narrative */
#define DP_RUN_DROPPED 0x20 /* a ring dropped its first notification: dp_thread_call_full */

struct dp_thread_stats {
    uint64_t passes;
    uint64_t waits;         /* blocking waits (epoll_wait with a non-zero timeout) */
    uint64_t requests;      /* chains popped */
    uint64_t submits;       /* engine submit calls */
    uint64_t notifies;      /* call eventfd writes */
    uint64_t poll_ns;       /* time spent polling */
    uint64_t poll_hits;     /* polls that found work */
    uint64_t poll_misses;   /* polls that ended in a blocking wait */
    uint64_t poll_window_ns; /* the current adaptive window */
    uint64_t busy_passes;   /* passes with work in hand (or found polling) that made no syscall */
    uint64_t bounce_waits;  /* requests that waited for bounce memory */
    uint64_t bounce_peak;   /* bytes: the most bounce memory in use at once */
    uint64_t limit_waits;   /* requests the limiter held back */
    uint64_t dirty_pages;   /* dirty log bits this thread set (pages logged for migration) */
};

struct dp_thread;

/* NULL on failure, with *err = -errno.  The thread uses eng and ctl_fd, owns neither. */
struct dp_thread *dp_thread_new(int ctl_fd, struct dp_engine *eng, unsigned nqueues,
                                unsigned queue_depth, int *err);
void dp_thread_free(struct dp_thread *t);

void dp_thread_set_disk(struct dp_thread *t, uint64_t sectors, uint32_t align, int read_only,
                        int writeback, const uint8_t *serial, uint32_t seg_max, uint32_t size_max);
/* Bounce memory of budget bytes (0: none; the disk must then need no alignment).  Only
 * while idle.  0 or -errno. */
int dp_thread_set_bounce(struct dp_thread *t, uint64_t budget);
void dp_thread_set_writeback(struct dp_thread *t, int writeback);
/* The disk grew (resize): requests up to the new end pass the bounds check.  Between runs. */
void dp_thread_set_capacity(struct dp_thread *t, uint64_t sectors);
/* Only while idle.  0, or -errno if the engine could not register it (still usable). */
int dp_thread_set_memory(struct dp_thread *t, const struct dp_mem_region *r, unsigned n);
/* Adaptive polling of the avail rings for up to max_ns before each blocking wait; 0: off. */
void dp_thread_set_poll(struct dp_thread *t, uint64_t max_ns);
void dp_thread_set_paused(struct dp_thread *t, int paused);
/* Book requests with l (the device's, shared by its threads; NULL: none).  Only while idle;
 * l must outlive the thread.  Its limits change live through dp_limiter_set. */
void dp_thread_set_limiter(struct dp_thread *t, struct dp_limiter *l);

/*
 * Dirty logging (dp_log.h): mark the pages the device writes in the log of `pages` pages
 * at host address base (mapped by Python; 0: stop logging).  Only while idle (nothing in
 * flight): a request's written pieces are recorded when it is popped while logging.  The
 * thread stops using the old log when this returns: it may be unmapped then.
 */
void dp_thread_set_log(struct dp_thread *t, uintptr_t base, uint64_t pages);
/* The used ring's guest-physical address for the log (VHOST_VRING_F_LOG), or off. */
void dp_thread_set_log_used(struct dp_thread *t, unsigned index, uint64_t gpa, int on);

/* Ring lifecycle (index < nqueues).  -1 stands for "no fd". */
int dp_thread_set_kick_fd(struct dp_thread *t, unsigned index, int fd);
void dp_thread_set_call_fd(struct dp_thread *t, unsigned index, int fd);
/* Write the call fd once (SET_VRING_CALL); -EAGAIN if it would block. */
int dp_thread_signal_call(struct dp_thread *t, unsigned index);
void dp_thread_set_err_fd(struct dp_thread *t, unsigned index, int fd);
void dp_thread_attach(struct dp_thread *t, unsigned index, uint32_t num, uintptr_t desc,
                      uintptr_t avail, uintptr_t used, uint16_t last_avail_idx, int event_idx,
                      int indirect, uint32_t max_indirect);
void dp_thread_unattach(struct dp_thread *t, unsigned index);
/*
 * Track the attached ring in its queue's inflight area (desc_num entries at
 * region) and recover it (dp_inflight_recover against used->idx): the heads
 * still in flight are resubmitted, oldest first, before anything new is
 * popped, and popping resumes at out->last_avail_idx (fresh area: where it
 * was).  0, -enum dp_inflight_err (the ring must not start), or -EINVAL (not attached).
 */
int dp_thread_start_inflight(struct dp_thread *t, unsigned index, uintptr_t region,
                             uint32_t desc_num, struct dp_inflight_recovery *out);
/* The heads dp_thread_start_inflight found in flight, oldest first (out->nheads of them). */
const uint16_t *dp_thread_resubmit_heads(const struct dp_thread *t, unsigned index);
/* Break the ring from Python (its addresses are bad): signal its err fd. */
void dp_thread_break(struct dp_thread *t, unsigned index);
void dp_thread_kick(struct dp_thread *t, unsigned index);
void dp_thread_stop_ring(struct dp_thread *t, unsigned index);
/* Forget everything about the ring; its fds are the caller's to close. */
void dp_thread_reset_ring(struct dp_thread *t, unsigned index);

int dp_thread_last_avail_idx(const struct dp_thread *t, unsigned index); /* -1: not attached */
int dp_thread_is_broken(const struct dp_thread *t, unsigned index);
/* The ring's call eventfd was found full since it started (notifications dropped). */
int dp_thread_call_full(const struct dp_thread *t, unsigned index);
int dp_thread_queue_inflight(const struct dp_thread *t, unsigned index);
/* Requests popped and not completed: at the engine, or held (bounce memory, limiter). */
unsigned dp_thread_inflight(const struct dp_thread *t);
/* Requests in flight, or rings the next run will pop from without a kick. */
int dp_thread_busy(const struct dp_thread *t);
/* The enum dp_gerr that newly broke the ring (0: none) and its message; clears it. */
int dp_thread_take_broken(struct dp_thread *t, unsigned index, char *msg, unsigned msglen);

int dp_thread_run(struct dp_thread *t, int timeout_ms);
const struct dp_thread_stats *dp_thread_stats(const struct dp_thread *t);

/*
 * Instrumentation (dp_stats.h): per-queue counters, kept for the thread's
 * life (a ring restart does not reset them), and the thread's histograms.
 * Safe to read from any thread while the thread runs (see dp_stats.h).
 */
const struct dp_qstats *dp_thread_qstats(const struct dp_thread *t, unsigned index);
const struct dp_tstats *dp_thread_tstats(const struct dp_thread *t);
/* Record every request popped to rec (shared, outlives the thread); 0 or -ENOMEM. */
int dp_thread_set_record(struct dp_thread *t, struct dp_rec *rec);
/* Narrate the requests whose numbers b hands out (shared, outlives the thread). */
void dp_thread_set_trace(struct dp_thread *t, struct dp_budget *b);
/* The narrative committed so far (len bytes of lines), until dp_thread_narrative_clear. */
const char *dp_thread_narrative(const struct dp_thread *t, size_t *len);
void dp_thread_narrative_clear(struct dp_thread *t);

#endif

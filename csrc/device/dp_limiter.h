/*
 * Per-device I/O limits: one token bucket per limit, shared by every dataplane
 * thread of the device, without a lock and without a syscall per request.
 *
 * Each bucket is GCRA (the virtual-scheduling form of a token bucket): a rate
 * in units per second (requests or bytes), a tolerance burst_ns (the burst
 * allowance, as time at that rate), and one word of state, tat, the
 * theoretical arrival time in ns on the caller's clock.  A request costing c
 * units at time now:
 *
 *   wait = tat - burst_ns - now, if positive, else 0
 *   tat  = max(tat, now) + c * 1e9 / rate
 *
 * so an idle bucket lets burst_ns worth of units through at once (plus the
 * request that crosses the line), and after that one unit every 1e9 / rate ns.
 * A request is never refused: it is told how long to wait, and its cost is
 * booked at once, so later requests queue behind it in arrival order, whatever
 * thread they come from.  That is the fairness between the threads.
 *
 * The caller passes the time it already has (CLOCK_MONOTONIC, in ns) and
 * holds the request back for the wait returned: the limiter reads no clock.
 * A request takes every bucket that applies to it (iops, its direction's iops,
 * bps, its direction's bps) and waits for the longest; dp_limiter.c says why
 * booking each bucket on its own is enough.
 */
#ifndef DP_LIMITER_H
#define DP_LIMITER_H

#include <stdint.h>

/* Indices of dp_limiter.bucket, numbered by C; Python reads them by name (cffi). */
enum dp_limit_kind {
    DP_LIMIT_IOPS,
    DP_LIMIT_READ_IOPS,
    DP_LIMIT_WRITE_IOPS,
    DP_LIMIT_BPS,
    DP_LIMIT_READ_BPS,
    DP_LIMIT_WRITE_BPS,
    DP_LIMITS, /* how many */
};

struct dp_bucket {
    uint64_t rate;     /* units per second; 0: no limit */
    uint64_t burst_ns; /* the tolerance: how far tat may run ahead of now with no wait */
    uint64_t tat;      /* theoretical arrival time (ns); changed only by compare-and-swap */
};

struct dp_limiter {
    struct dp_bucket bucket[DP_LIMITS];
    uint64_t throttled;    /* requests that were told to wait */
    uint64_t throttled_ns; /* the waits handed out, summed */
    uint64_t generation;   /* bumped by every dp_limiter_set: a held request is let go */
};

/* Set one limit (rate 0: none).  The bucket starts full again: the next requests pass. */
void dp_limiter_set(struct dp_limiter *l, uint32_t kind, uint64_t rate, uint64_t burst_ns);

/* The wait (ns, 0: go now) for a read or write of nbytes at now_ns, booked in every bucket. */
uint64_t dp_limiter_admit(struct dp_limiter *l, int is_write, uint64_t nbytes, uint64_t now_ns);

/* cost in ns of units at rate (rate != 0), saturating: the same integer arithmetic as Python. */
uint64_t dp_limiter_cost_ns(uint64_t units, uint64_t rate);

#endif

/*
 * TEST ONLY: an engine stage that holds back every Nth completion for a
 * while, so that requests complete out of order, by force and often.
 *
 * The reconnect tests need a request still in flight behind completed ones at
 * the instant the backend is killed; io_uring on a page-cached image rarely
 * reorders on its own.  The stage sits between an engine and its caller
 * (dp_engine_set_test_delay for the native path, engines/delay.py for the
 * Python one): a completion the engine reports is either passed on, or, for
 * every Nth, held until delay_ns have passed, and then reaped behind the
 * completions of later requests.  Results are not touched: only their time.
 *
 * Waking up for a held completion: the stage's fd is an epoll fd over the
 * engine's completion fd and a timerfd, which dp_delay_arm sets for the oldest
 * held completion before the caller blocks.  The caller polls that fd instead
 * of the engine's.  All deadlines are now + delay_ns, so the held completions
 * form a FIFO in deadline order.
 *
 * Nothing here is for production: a timerfd syscall per wait and a clock read
 * per reap.  The device key is test-delay=EVERY:US (docs/test-delay.md).
 */
#ifndef DP_DELAY_H
#define DP_DELAY_H

#include <stdint.h>

#include "dp_io.h"

struct dp_delay;

/* Hold every `every`th completion (every >= 1) for delay_ns; inner_fd: the engine's
 * completion fd, or -1.  depth: the most requests outstanding.  NULL with *err. */
struct dp_delay *dp_delay_open(unsigned every, uint64_t delay_ns, int inner_fd, unsigned depth,
                               int *err);
void dp_delay_close(struct dp_delay *d);
/* The fd to poll instead of the engine's completion fd. */
int dp_delay_fd(const struct dp_delay *d);
/* Held completions whose time has come, oldest first, into out[0..max). */
unsigned dp_delay_release(struct dp_delay *d, struct dp_cqe *out, unsigned max);
/* Completions c[0..n) just reaped: hold every Nth, keep the rest in c in order; the count kept. */
unsigned dp_delay_hold(struct dp_delay *d, struct dp_cqe *c, unsigned n);
/* Non-zero when a held completion is due. */
int dp_delay_due(const struct dp_delay *d);
/* Before the caller blocks: the timer re-armed for the oldest held completion.
 * Non-zero when one is due already (do not block). */
int dp_delay_arm(struct dp_delay *d);
/* Completions held. */
unsigned dp_delay_held(const struct dp_delay *d);

#endif

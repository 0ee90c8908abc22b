/*
 * How a dataplane thread waits for work: QEMU's adaptive polling, then one
 * blocking epoll_wait over the kicks, the engine's completion fd and the
 * control eventfd, with the kicks turned back on just before it blocks.
 */
#ifndef DP_LOOP_WAIT_H
#define DP_LOOP_WAIT_H

#include <stdint.h>

struct dp_thread;

/* Anything to do without waiting: an avail ring moved (marked pending), or completions wait. */
int dp_loop_poll_once(struct dp_thread *t);

/* wait_ms cut so the blocking wait ends when the request the limiter holds may go. */
int dp_loop_limit_wait_ms(const struct dp_thread *t, int wait_ms, uint64_t now);
/*
 * Wait for work: none at all when there is work in hand (wait_ms 0), else
 * poll for the adaptive window, else block in epoll_wait.  *now: the clock
 * when it returns; *flags gets DP_RUN_CTL / DP_RUN_TIMEOUT, *completions 1
 * if the engine's fd fired.  0 or -errno.
 */
int dp_loop_wait(struct dp_thread *t, int wait_ms, uint64_t *now, int *flags, int *completions);

#endif

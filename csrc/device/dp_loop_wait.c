#define _GNU_SOURCE
#include "dp_loop_wait.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "dp_cpu.h"
#include "dp_fdio.h"
#include "dp_loop.h"


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
        dp_loop_break_queue(t, q, DP_GERR_KICK_FD, why);
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

int dp_loop_poll_once(struct dp_thread *t)
{
    int found = dp_engine_ready(t->eng);

    if (dp_loop_can_pop(t))
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
            dp_loop_log_used(t, q); /* avail_event, or used->flags */
        if (ret < 0) {
            dp_loop_break_queue(t, q, -ret, q->vq.err);
            found = 1;
        } else if (ret > 0 && !q->stopping) {
            q->pending = 1;
            found |= dp_loop_can_pop(t);
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
        found = dp_loop_poll_once(t);
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

int dp_loop_wait(struct dp_thread *t, int wait_ms, uint64_t *now, int *flags, int *completions)
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


/* The blocking wait ends no later than the held request's wait (epoll's ms, rounded up). */
int dp_loop_limit_wait_ms(const struct dp_thread *t, int wait_ms, uint64_t now)
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

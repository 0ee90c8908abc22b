#define _GNU_SOURCE
#include "dp_nbd_conn.h"

#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* libnbd's message without the "nbd_xxx: " of the call that failed. */
const char *dp_nbd_reason(void)
{
    const char *e = nbd_get_error(), *colon;

    if (!e)
        return "unknown error";
    colon = strstr(e, ": ");
    return strncmp(e, "nbd_", 4) == 0 && colon ? colon + 2 : e;
}

int dp_nbd_errno(void)
{
    int e = nbd_get_errno();

    return e > 0 ? e : EIO;
}

struct nbd_handle *dp_nbd_new_handle(void)
{
    struct nbd_handle *h = nbd_create();

    if (!h)
        return NULL;
    /*
     * Only the URI forms the device documents.  Reads land in guest memory or
     * in a bounce buffer that has only ever held this guest's data (calloc'ed
     * first), so a server that sends less than it should shows the guest
     * nothing but its own bytes: libnbd need not zero every buffer first.
     */
    if (nbd_set_uri_allow_transports(h, LIBNBD_ALLOW_TRANSPORT_TCP |
                                            LIBNBD_ALLOW_TRANSPORT_UNIX) < 0 ||
        nbd_set_pread_initialize(h, false) < 0) {
        nbd_close(h);
        return NULL;
    }
    return h;
}

uint32_t dp_nbd_handle_flags(struct nbd_handle *h)
{
    uint32_t f = 0;

    f |= nbd_is_read_only(h) == 1 ? DP_REMOTE_READ_ONLY : 0;
    f |= nbd_can_flush(h) == 1 ? DP_REMOTE_CAN_FLUSH : 0;
    f |= nbd_can_trim(h) == 1 ? DP_REMOTE_CAN_TRIM : 0;
    f |= nbd_can_zero(h) == 1 ? DP_REMOTE_CAN_ZERO : 0;
    f |= nbd_can_fua(h) == 1 ? DP_REMOTE_CAN_FUA : 0;
    f |= nbd_can_multi_conn(h) == 1 ? DP_REMOTE_CAN_MULTI_CONN : 0;
    return f;
}

/* The server's block sizes, clamped so that a hostile one cannot make pieces of 0 bytes. */
void dp_nbd_set_limits(struct dp_nbd *n, struct nbd_handle *h)
{
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    int64_t opt = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    uint64_t bmin = min > 0 && min <= 65536 ? (uint64_t)min : 1;
    uint64_t bmax = max > 0 && max < DP_NBD_PAYLOAD_MAX ? (uint64_t)max : DP_NBD_PAYLOAD_MAX;

    n->piece_max = bmax - bmax % bmin;
    if (!n->piece_max)
        n->piece_max = bmin;
    n->zero_max = DP_NBD_ZERO_MAX - DP_NBD_ZERO_MAX % bmin;
    n->info.block_min = (uint32_t)bmin;
    n->info.block_max = (uint32_t)n->piece_max;
    n->info.block_opt = opt > 0 && (uint64_t)opt <= n->piece_max ? (uint32_t)opt
                        : bmin > 4096                             ? (uint32_t)bmin
                                                                  : 4096;
}

/* Drive a connect to ready, for at most timeout_ms.  0, or -errno with libnbd's reason. */
int dp_nbd_connect_blocking(struct nbd_handle *h, const char *uri, unsigned timeout_ms,
                            const char **why)
{
    uint64_t end = dp_nbd_now_ns() + (uint64_t)timeout_ms * NS_PER_MS;

    *why = NULL;
    if (nbd_aio_connect_uri(h, uri) < 0)
        return -dp_nbd_errno();
    while (nbd_aio_is_connecting(h)) {
        unsigned dir = nbd_aio_get_direction(h);
        struct pollfd p = {.fd = nbd_aio_get_fd(h)};
        uint64_t now = dp_nbd_now_ns();
        int ret;

        if (now >= end) {
            *why = "timed out waiting for the server";
            return -ETIMEDOUT;
        }
        p.events = (short)((dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                           (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0));
        ret = poll(&p, 1, (int)((end - now + NS_PER_MS - 1) / NS_PER_MS));
        if (ret < 0 && errno != EINTR)
            return -errno;
        if (ret <= 0)
            continue;
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))
            ret = nbd_aio_notify_read(h);
        else if (p.revents & (POLLOUT | POLLHUP | POLLERR))
            ret = nbd_aio_notify_write(h);
        if (ret < 0)
            return -dp_nbd_errno();
    }
    return nbd_aio_is_ready(h) ? 0 : -dp_nbd_errno();
}

/* -- the socket and the timer in the engine's epoll ---------------------------------- */

void dp_nbd_update_direction(struct dp_nbd *n)
{
    struct epoll_event ev = {.data.u32 = TAG_SOCK};
    unsigned dir;
    int fd;

    if (!n->h)
        return;
    fd = nbd_aio_get_fd(n->h);
    if (fd < 0)
        return; /* dead: the next check drops the handle */
    dir = nbd_aio_get_direction(n->h);
    ev.events = (dir & LIBNBD_AIO_DIRECTION_READ ? EPOLLIN : 0) |
                (dir & LIBNBD_AIO_DIRECTION_WRITE ? EPOLLOUT : 0);
    if (fd != n->sock) {
        if (epoll_ctl(n->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
            n->sock = fd;
            n->sock_events = ev.events;
        }
    } else if (ev.events != n->sock_events) {
        if (epoll_ctl(n->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
            n->sock_events = ev.events;
    }
}

void dp_nbd_drop_handle(struct dp_nbd *n)
{
    if (n->sock >= 0)
        epoll_ctl(n->epfd, EPOLL_CTL_DEL, n->sock, NULL);
    n->sock = -1;
    n->sock_events = 0;
    nbd_close(n->h); /* no completion callback runs after this */
    n->h = NULL;
}

static void arm_timer(struct dp_nbd *n)
{
    struct itimerspec its = {0};
    uint64_t next = 0;

    if (n->lost_at && !n->expired)
        next = n->lost_at + n->reconnect_ns;
    next = dp_nbd_earlier(next, n->next_expiry);
    if (n->state == NBD_DOWN)
        next = dp_nbd_earlier(next, n->retry_at);
    else if (n->state == NBD_CONNECTING)
        next = dp_nbd_earlier(next, n->attempt_end);
    if (next == n->timer_at)
        return; /* as armed: no syscall on the usual pass */
    n->timer_at = next;
    if (next) {
        its.it_value.tv_sec = (time_t)(next / 1000000000ull);
        its.it_value.tv_nsec = (long)(next % 1000000000ull);
    }
    timerfd_settime(n->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* -- the connection ------------------------------------------------------------------- */

static void schedule_retry(struct dp_nbd *n)
{
    n->state = NBD_DOWN;
    n->retry_at = dp_nbd_now_ns() + (uint64_t)n->retry_ms * NS_PER_MS;
    n->retry_ms = n->retry_ms * 2 < RETRY_MAX_MS ? n->retry_ms * 2 : RETRY_MAX_MS;
}

static void try_connect(struct dp_nbd *n)
{
    struct nbd_handle *h = dp_nbd_new_handle();

    if (!h || nbd_aio_connect_uri(h, n->uri) < 0) {
        snprintf(n->why, sizeof(n->why), "%s", h ? dp_nbd_reason() : "out of memory");
        nbd_close(h);
        schedule_retry(n);
        return;
    }
    n->h = h;
    n->state = NBD_CONNECTING;
    n->attempt_end = dp_nbd_now_ns() + (uint64_t)ATTEMPT_MS * NS_PER_MS;
}

/* Why a new connection cannot stand in for the old one, or NULL. */
static const char *incompatible(const struct dp_nbd *n, struct nbd_handle *h)
{
    uint32_t want = n->info.flags & (DP_REMOTE_CAN_FLUSH | DP_REMOTE_CAN_TRIM |
                                     DP_REMOTE_CAN_ZERO | DP_REMOTE_CAN_FUA);
    uint32_t have = dp_nbd_handle_flags(h);

    if (nbd_get_size(h) != (int64_t)n->info.size)
        return "the export's size changed";
    if (!(n->info.flags & DP_REMOTE_READ_ONLY) && (have & DP_REMOTE_READ_ONLY))
        return "the export became read-only";
    if ((want & have) != want)
        return "the server no longer offers flush, trim, zero or FUA as before";
    return NULL;
}

static void connected(struct dp_nbd *n)
{
    const char *bad = incompatible(n, n->h);
    struct dp_rreq *r;

    if (bad) {
        snprintf(n->why, sizeof(n->why), "%s", bad);
        dp_nbd_drop_handle(n);
        schedule_retry(n);
        return;
    }
    n->state = NBD_UP;
    n->lost_at = 0;
    n->expired = 0;
    n->next_expiry = 0;
    n->why[0] = 0;
    /* Unproven until a command succeeds: a server that drops every connection backs off. */
    n->retry_ms = n->retry_ms * 2 < RETRY_MAX_MS ? n->retry_ms * 2 : RETRY_MAX_MS;
    /* Relaxed: counters for stats and tests, nothing else is published through them. */
    __atomic_store_n(&n->info.reconnects, n->info.reconnects + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&n->info.connected, 1, __ATOMIC_RELAXED);
    while ((r = dp_rlist_pop(&n->waiting)))
        dp_nbd_issue(n, r);
}

static void connection_lost(struct dp_nbd *n)
{
    struct dp_rreq *r;

    dp_nbd_drop_handle(n);
    n->state = NBD_DOWN;
    n->drop = 0;
    __atomic_store_n(&n->info.connected, 0, __ATOMIC_RELAXED);
    if (!n->lost_at)
        n->lost_at = dp_nbd_now_ns();
    if (!n->reconnect_ns)
        n->expired = 1;
    /* Their commands will never call back now: they start over after the reconnect. */
    while ((r = dp_rlist_pop(&n->active)))
        dp_nbd_wait_for_server(n, r);
    if (n->retry_ms == RETRY_MIN_MS)
        try_connect(n); /* it worked until now: at once */
    else
        schedule_retry(n);
}

static void check_state(struct dp_nbd *n)
{
    if (n->state == NBD_CONNECTING) {
        if (nbd_aio_is_ready(n->h)) {
            connected(n);
        } else if (!nbd_aio_is_connecting(n->h)) {
            snprintf(n->why, sizeof(n->why), "%s", dp_nbd_reason());
            dp_nbd_drop_handle(n);
            schedule_retry(n);
        }
    }
    if (n->state == NBD_UP && (n->drop || nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h)))
        connection_lost(n);
}

/* After any libnbd call: follow the connection, finish what settled, then re-arm the waits. */
void dp_nbd_stabilize(struct dp_nbd *n)
{
    for (;;) {
        check_state(n);
        if (!n->settled.head)
            break;
        dp_nbd_process_settled(n);
    }
    dp_nbd_update_direction(n);
    arm_timer(n);
}

void dp_nbd_on_timer(struct dp_nbd *n)
{
    uint64_t now = dp_nbd_now_ns(), ticks;

    if (read(n->tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
        return;
    n->timer_at = 0; /* it fired: disarmed until arm_timer */
    if (n->lost_at && !n->expired && now >= n->lost_at + n->reconnect_ns)
        n->expired = 1;
    if (n->next_expiry && now >= n->next_expiry)
        dp_nbd_expire_waiting(n, now);
    if (n->state == NBD_DOWN && now >= n->retry_at) {
        try_connect(n);
    } else if (n->state == NBD_CONNECTING && now >= n->attempt_end) {
        snprintf(n->why, sizeof(n->why), "timed out waiting for the server");
        dp_nbd_drop_handle(n);
        schedule_retry(n);
    }
}

void dp_nbd_on_socket(struct dp_nbd *n, uint32_t events)
{
    unsigned dir;

    if (!n->h)
        return;
    dir = nbd_aio_get_direction(n->h);
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))
        nbd_aio_notify_read(n->h);
    if (!(events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) || nbd_aio_is_dead(n->h) ||
        nbd_aio_is_closed(n->h))
        return;
    dir = nbd_aio_get_direction(n->h);
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        nbd_aio_notify_write(n->h);
}

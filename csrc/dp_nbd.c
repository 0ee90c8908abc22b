#define _GNU_SOURCE
#include "dp_nbd.h"

#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define RETRY_MIN_MS 50u
#define RETRY_MAX_MS 1000u
#define ATTEMPT_MS 5000u        /* one reconnect attempt, e.g. a TCP connect that hangs */
#define BOUNCE_MAX (1u << 20)   /* the largest request that goes through a bounce buffer */
#define BOUNCE_KEEP (256u << 10) /* bounce buffers above this are freed after use */
#define NS_PER_MS 1000000ull

enum { NBD_DOWN, NBD_CONNECTING, NBD_UP };
enum { TAG_SOCK = 1, TAG_TIMER = 2, TAG_DONE = 3 };

struct dp_nbd {
    struct dp_rqueue q;
    struct dp_remote_info info; /* reconnects and connected: atomics (see nbd_info) */
    char *uri;
    uint64_t reconnect_ns;
    uint64_t piece_max;          /* bytes per read or write command */
    uint64_t zero_max;           /* bytes per trim or zero command */
    struct nbd_handle *h;        /* NULL while down */
    int state;
    int epfd;                    /* the completion fd */
    int tfd;
    uint64_t timer_at;           /* when tfd fires (absolute), 0: disarmed */
    int sock;                    /* h's fd as registered in epfd, or -1 */
    uint32_t sock_events;
    struct dp_rlist active;      /* commands at the current connection */
    struct dp_rlist waiting;     /* for a connection */
    struct dp_rlist settled;     /* every command back, to finish outside libnbd's callbacks */
    uint64_t lost_at;            /* when the connection dropped; 0 while up */
    uint64_t next_expiry;        /* the earliest deadline of a waiting request, 0: none */
    uint64_t retry_at;           /* DOWN: the next attempt */
    uint64_t attempt_end;        /* CONNECTING: give this attempt up */
    unsigned retry_ms;
    int expired;                 /* down for reconnect_ns: new requests fail until a reconnect */
    int drop;                    /* the server is shutting down: treat as a drop */
    char why[DP_REMOTE_MSG_SIZE]; /* why the last reconnect attempt failed */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* libnbd's message without the "nbd_xxx: " of the call that failed. */
static const char *nbd_reason(void)
{
    const char *e = nbd_get_error(), *colon;

    if (!e)
        return "unknown error";
    colon = strstr(e, ": ");
    return strncmp(e, "nbd_", 4) == 0 && colon ? colon + 2 : e;
}

static int nbd_errno(void)
{
    int e = nbd_get_errno();

    return e > 0 ? e : EIO;
}

static struct nbd_handle *new_handle(void)
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

static uint32_t handle_flags(struct nbd_handle *h)
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
static void set_limits(struct dp_nbd *n, struct nbd_handle *h)
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
static int connect_blocking(struct nbd_handle *h, const char *uri, unsigned timeout_ms,
                            const char **why)
{
    uint64_t end = now_ns() + (uint64_t)timeout_ms * NS_PER_MS;

    *why = NULL;
    if (nbd_aio_connect_uri(h, uri) < 0)
        return -nbd_errno();
    while (nbd_aio_is_connecting(h)) {
        unsigned dir = nbd_aio_get_direction(h);
        struct pollfd p = {.fd = nbd_aio_get_fd(h)};
        uint64_t now = now_ns();
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
            return -nbd_errno();
    }
    return nbd_aio_is_ready(h) ? 0 : -nbd_errno();
}

/* -- the socket and the timer in the engine's epoll ---------------------------------- */

static void update_direction(struct dp_nbd *n)
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

static void drop_handle(struct dp_nbd *n)
{
    if (n->sock >= 0)
        epoll_ctl(n->epfd, EPOLL_CTL_DEL, n->sock, NULL);
    n->sock = -1;
    n->sock_events = 0;
    nbd_close(n->h); /* no completion callback runs after this */
    n->h = NULL;
}

static uint64_t earlier(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

static void arm_timer(struct dp_nbd *n)
{
    struct itimerspec its = {0};
    uint64_t next = 0;

    if (n->lost_at && !n->expired)
        next = n->lost_at + n->reconnect_ns;
    next = earlier(next, n->next_expiry);
    if (n->state == NBD_DOWN)
        next = earlier(next, n->retry_at);
    else if (n->state == NBD_CONNECTING)
        next = earlier(next, n->attempt_end);
    if (next == n->timer_at)
        return; /* as armed: no syscall on the usual pass */
    n->timer_at = next;
    if (next) {
        its.it_value.tv_sec = (time_t)(next / 1000000000ull);
        its.it_value.tv_nsec = (long)(next % 1000000000ull);
    }
    timerfd_settime(n->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* -- requests -------------------------------------------------------------------------- */

static void settled(struct dp_nbd *n, struct dp_rreq *r)
{
    dp_rlist_remove(&n->active, r);
    dp_rlist_push(&n->settled, r);
}

/* libnbd's completion callback: runs inside our libnbd calls, on our thread. */
static int piece_done(void *user_data, int *error)
{
    struct dp_rreq *r = user_data;
    struct dp_nbd *n = r->owner;

    if (*error == ENOTCONN || *error == ESHUTDOWN) {
        /* ENOTCONN: the connection died under the command; ESHUTDOWN: the server is going. */
        r->lost = 1;
        n->drop |= *error == ESHUTDOWN;
    } else if (*error && !r->err) {
        r->err = -*error;
    } else if (!*error) {
        n->retry_ms = RETRY_MIN_MS; /* the server works: the next drop retries quickly again */
    }
    if (--r->pending == 0)
        settled(n, r);
    return 1; /* retire the command */
}

/* A command libnbd refused to queue (its callback will never run). */
static void refused(struct dp_nbd *n, struct dp_rreq *r)
{
    int e = nbd_errno();

    r->pending--;
    if (nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h))
        r->lost = 1;
    else if (!r->err)
        r->err = -e;
}

/* The next host-contiguous run of io's iovecs from iov[*i] (adjacent iovecs merged). */
static int next_run(const struct dp_io *io, uint32_t *i, char **base, uint64_t *len)
{
    if (*i >= io->iovcnt)
        return 0;
    *base = (char *)(uintptr_t)io->iov[*i].base;
    *len = io->iov[(*i)++].len;
    while (*i < io->iovcnt && io->iov[*i].base == (uintptr_t)*base + *len)
        *len += io->iov[(*i)++].len;
    return 1;
}

/*
 * Whether r's data goes through the bounce buffer: 1 to bounce, 0 to send each
 * contiguous run straight from guest memory, -errno to refuse.  One run is always
 * direct.  Several runs bounce up to BOUNCE_MAX (one command instead of many, and
 * no run cut off the server's block size); past it they go direct if every run is
 * aligned to the server's minimum, so that a guest cannot make us allocate
 * without bound, and are refused otherwise.
 */
static int wants_bounce(const struct dp_nbd *n, const struct dp_io *io)
{
    uint64_t len, at = io->offset, min = n->info.block_min;
    uint32_t i = 0, runs = 0;
    int aligned = 1;
    char *base;

    while (next_run(io, &i, &base, &len)) {
        runs++;
        aligned &= (at % min == 0) && (len % min == 0);
        at += len;
    }
    if (runs <= 1)
        return 0;
    if (io->length <= BOUNCE_MAX)
        return 1;
    return aligned ? 0 : -EINVAL;
}

static char *fill_bounce(struct dp_rreq *r)
{
    struct dp_io *io = r->io;
    uint64_t at = 0;

    if (r->bounce_cap < io->length) {
        free(r->bounce);
        r->bounce = calloc(1, io->length);
        r->bounce_cap = r->bounce ? io->length : 0;
        if (!r->bounce)
            return NULL;
    }
    if (io->op == DP_OP_WRITE)
        for (uint32_t i = 0; i < io->iovcnt; at += io->iov[i++].len)
            memcpy((char *)r->bounce + at, (const void *)(uintptr_t)io->iov[i].base,
                   io->iov[i].len);
    return r->bounce;
}

static void scatter(struct dp_rreq *r)
{
    struct dp_io *io = r->io;
    uint64_t at = 0;

    for (uint32_t i = 0; i < io->iovcnt; at += io->iov[i++].len)
        memcpy((void *)(uintptr_t)io->iov[i].base, (const char *)r->bounce + at, io->iov[i].len);
}

/* Commands for [buf, buf + len) at disk offset off, in pieces of at most piece_max; 0 or -1. */
static int transfer(struct dp_nbd *n, struct dp_rreq *r, char *buf, uint64_t len, uint64_t off)
{
    nbd_completion_callback cb = {.callback = piece_done, .user_data = r};
    uint32_t fua = (r->io->op == DP_OP_WRITE && (r->io->flags & DP_IO_DSYNC) &&
                    (n->info.flags & DP_REMOTE_CAN_FUA))
                       ? LIBNBD_CMD_FLAG_FUA
                       : 0;

    for (uint64_t done = 0, step; done < len; done += step) {
        int64_t cookie;

        step = len - done < n->piece_max ? len - done : n->piece_max;
        r->pending++;
        if (r->io->op == DP_OP_READ)
            cookie = nbd_aio_pread(n->h, buf + done, step, off + done, cb, 0);
        else
            cookie = nbd_aio_pwrite(n->h, buf + done, step, off + done, cb, fua);
        if (cookie < 0) {
            refused(n, r);
            return -1;
        }
    }
    return 0;
}

/* Send every command of r (its data, or its flush phase) on the current connection. */
static void issue(struct dp_nbd *n, struct dp_rreq *r)
{
    struct dp_io *io = r->io;
    nbd_completion_callback cb = {.callback = piece_done, .user_data = r};
    uint64_t step;

    /* One reference is ours until every command is out, so an early callback cannot settle r. */
    r->pending = 1;
    r->err = 0;
    r->lost = 0;
    dp_rlist_push(&n->active, r);
    if (r->phase == DP_RREQ_FLUSH || io->op == DP_OP_FLUSH) {
        r->pending++;
        if (nbd_aio_flush(n->h, cb, 0) < 0)
            refused(n, r);
    } else if (io->op == DP_OP_READ || io->op == DP_OP_WRITE) {
        int bounce = wants_bounce(n, io);
        uint64_t len, at = io->offset;
        uint32_t i = 0;
        char *base;

        r->bounced = bounce == 1;
        if (bounce < 0) {
            r->err = bounce;
        } else if (bounce) {
            base = fill_bounce(r);
            if (!base)
                r->err = -ENOMEM;
            else
                transfer(n, r, base, io->length, io->offset);
        } else {
            while (next_run(io, &i, &base, &len) && transfer(n, r, base, len, at) == 0)
                at += len;
        }
    } else {
        uint32_t flags = io->op == DP_OP_WRITE_ZEROES && !(io->flags & DP_IO_UNMAP)
                             ? LIBNBD_CMD_FLAG_NO_HOLE
                             : 0;

        for (uint64_t off = 0; off < io->length; off += step) {
            int64_t cookie;

            step = io->length - off < n->zero_max ? io->length - off : n->zero_max;
            r->pending++;
            if (io->op == DP_OP_DISCARD)
                cookie = nbd_aio_trim(n->h, step, io->offset + off, cb, 0);
            else
                cookie = nbd_aio_zero(n->h, step, io->offset + off, cb, flags);
            if (cookie < 0) {
                refused(n, r);
                break;
            }
        }
    }
    if (--r->pending == 0)
        settled(n, r);
}

/*
 * Fail the waiting requests whose reconnect_ns has run out (each counts from when it
 * first lost its connection, so a server that accepts and then drops every connection
 * cannot keep a request forever), and note the next deadline for the timer.
 */
static void expire_waiting(struct dp_nbd *n, uint64_t now)
{
    struct dp_rreq *r = n->waiting.head, *next;

    n->next_expiry = 0;
    for (; r; r = next) {
        next = r->next;
        if (now - r->lost_at >= n->reconnect_ns) {
            dp_rlist_remove(&n->waiting, r);
            dp_rq_complete(&n->q, r, -EIO);
        } else {
            n->next_expiry = earlier(n->next_expiry, r->lost_at + n->reconnect_ns);
        }
    }
}

/* r waits for a connection and then starts over from its data, or fails past its deadline. */
static void wait_for_server(struct dp_nbd *n, struct dp_rreq *r)
{
    uint64_t now = now_ns();

    r->phase = DP_RREQ_DATA;
    r->pending = 0;
    r->err = 0;
    r->lost = 0;
    if (!r->lost_at)
        r->lost_at = now;
    if (n->expired || now - r->lost_at >= n->reconnect_ns) {
        dp_rq_complete(&n->q, r, -EIO);
        return;
    }
    dp_rlist_push(&n->waiting, r);
    n->next_expiry = earlier(n->next_expiry, r->lost_at + n->reconnect_ns);
}

static int flush_phase(void *b, struct dp_rreq *r)
{
    struct dp_nbd *n = b;

    if (n->state == NBD_UP)
        issue(n, r);
    else
        wait_for_server(n, r);
    return 0;
}

static void process_settled(struct dp_nbd *n)
{
    struct dp_rreq *r;

    while ((r = dp_rlist_pop(&n->settled))) {
        if (r->lost) {
            wait_for_server(n, r);
            continue;
        }
        if (!r->err && r->io->op == DP_OP_READ && r->bounced)
            scatter(r);
        if (r->bounce_cap > BOUNCE_KEEP) {
            free(r->bounce);
            r->bounce = NULL;
            r->bounce_cap = 0;
        }
        dp_rq_settle(&n->q, r, &n->info, flush_phase, n);
    }
}

/* -- the connection ------------------------------------------------------------------- */

static void schedule_retry(struct dp_nbd *n)
{
    n->state = NBD_DOWN;
    n->retry_at = now_ns() + (uint64_t)n->retry_ms * NS_PER_MS;
    n->retry_ms = n->retry_ms * 2 < RETRY_MAX_MS ? n->retry_ms * 2 : RETRY_MAX_MS;
}

static void try_connect(struct dp_nbd *n)
{
    struct nbd_handle *h = new_handle();

    if (!h || nbd_aio_connect_uri(h, n->uri) < 0) {
        snprintf(n->why, sizeof(n->why), "%s", h ? nbd_reason() : "out of memory");
        nbd_close(h);
        schedule_retry(n);
        return;
    }
    n->h = h;
    n->state = NBD_CONNECTING;
    n->attempt_end = now_ns() + (uint64_t)ATTEMPT_MS * NS_PER_MS;
}

/* Why a new connection cannot stand in for the old one, or NULL. */
static const char *incompatible(const struct dp_nbd *n, struct nbd_handle *h)
{
    uint32_t want = n->info.flags & (DP_REMOTE_CAN_FLUSH | DP_REMOTE_CAN_TRIM |
                                     DP_REMOTE_CAN_ZERO | DP_REMOTE_CAN_FUA);
    uint32_t have = handle_flags(h);

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
        drop_handle(n);
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
        issue(n, r);
}

static void connection_lost(struct dp_nbd *n)
{
    struct dp_rreq *r;

    drop_handle(n);
    n->state = NBD_DOWN;
    n->drop = 0;
    __atomic_store_n(&n->info.connected, 0, __ATOMIC_RELAXED);
    if (!n->lost_at)
        n->lost_at = now_ns();
    if (!n->reconnect_ns)
        n->expired = 1;
    /* Their commands will never call back now: they start over after the reconnect. */
    while ((r = dp_rlist_pop(&n->active)))
        wait_for_server(n, r);
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
            snprintf(n->why, sizeof(n->why), "%s", nbd_reason());
            drop_handle(n);
            schedule_retry(n);
        }
    }
    if (n->state == NBD_UP && (n->drop || nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h)))
        connection_lost(n);
}

/* After any libnbd call: follow the connection, finish what settled, then re-arm the waits. */
static void stabilize(struct dp_nbd *n)
{
    for (;;) {
        check_state(n);
        if (!n->settled.head)
            break;
        process_settled(n);
    }
    update_direction(n);
    arm_timer(n);
}

static void on_timer(struct dp_nbd *n)
{
    uint64_t now = now_ns(), ticks;

    if (read(n->tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
        return;
    n->timer_at = 0; /* it fired: disarmed until arm_timer */
    if (n->lost_at && !n->expired && now >= n->lost_at + n->reconnect_ns)
        n->expired = 1;
    if (n->next_expiry && now >= n->next_expiry)
        expire_waiting(n, now);
    if (n->state == NBD_DOWN && now >= n->retry_at) {
        try_connect(n);
    } else if (n->state == NBD_CONNECTING && now >= n->attempt_end) {
        snprintf(n->why, sizeof(n->why), "timed out waiting for the server");
        drop_handle(n);
        schedule_retry(n);
    }
}

static void on_socket(struct dp_nbd *n, uint32_t events)
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

/* -- the dp_remote_ops ------------------------------------------------------------------ */

static void nbd_engine_close(void *b)
{
    struct dp_nbd *n = b;

    if (!n)
        return;
    if (n->h)
        drop_handle(n);
    if (n->epfd >= 0)
        close(n->epfd);
    if (n->tfd >= 0)
        close(n->tfd);
    dp_rq_fini(&n->q);
    free(n->uri);
    free(n);
}

static int watch(int epfd, int fd, uint32_t tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = tag};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void *nbd_engine_open(const struct dp_remote_params *p, unsigned depth, char *msg,
                             size_t msglen, int *err)
{
    struct dp_nbd *n = calloc(1, sizeof(*n));
    const char *why = NULL;
    int64_t size;

    if (!n) {
        *err = -ENOMEM;
        snprintf(msg, msglen, "out of memory");
        return NULL;
    }
    n->epfd = n->tfd = n->sock = -1;
    n->retry_ms = RETRY_MIN_MS;
    n->reconnect_ns = (uint64_t)p->reconnect_ms * NS_PER_MS;
    *err = dp_rq_init(&n->q, depth, n);
    if (*err)
        goto fail_sys;
    n->epfd = epoll_create1(EPOLL_CLOEXEC);
    n->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    n->uri = p->uri ? strdup(p->uri) : NULL;
    if (n->epfd < 0 || n->tfd < 0 || !n->uri) {
        *err = !p->uri ? -EINVAL : n->uri ? -errno : -ENOMEM;
        goto fail_sys;
    }
    if ((*err = watch(n->epfd, n->tfd, TAG_TIMER)) || (*err = watch(n->epfd, n->q.efd, TAG_DONE)))
        goto fail_sys;
    n->h = new_handle();
    if (!n->h) {
        *err = -ENOMEM;
        goto fail_sys;
    }
    *err = connect_blocking(n->h, n->uri, p->timeout_ms ? p->timeout_ms : DP_REMOTE_OPEN_TIMEOUT_MS,
                            &why);
    if (*err) {
        why = why ? why : nbd_reason();
        if (strncmp(why, "connect: ", 9) == 0)
            snprintf(msg, msglen, "cannot connect to the NBD server: %s", why + 9);
        else if (strncmp(why, "handshake: ", 11) == 0)
            snprintf(msg, msglen, "the NBD server refused: %s", why + 11);
        else
            snprintf(msg, msglen, "%s", why);
        goto fail;
    }
    size = nbd_get_size(n->h);
    if (size < 0) {
        /* libnbd hands a size of 2^63 or more through as a negative number, with no error. */
        *err = nbd_get_errno() > 0 ? -nbd_get_errno() : -EPROTO;
        snprintf(msg, msglen, "%s",
                 nbd_get_errno() > 0 ? nbd_reason() : "the server reports an impossible export size");
        goto fail;
    }
    n->info.size = (uint64_t)size;
    n->info.flags = handle_flags(n->h) | (p->read_only ? DP_REMOTE_READ_ONLY : 0);
    n->info.connected = 1;
    set_limits(n, n->h);
    n->state = NBD_UP;
    update_direction(n);
    return n;

fail_sys:
    snprintf(msg, msglen, "%s", strerror(-*err));
fail:
    nbd_engine_close(n);
    return NULL;
}

static int nbd_engine_completion_fd(const void *b)
{
    return ((const struct dp_nbd *)b)->epfd;
}

static int nbd_engine_ready(const void *b)
{
    return dp_rq_ready(&((const struct dp_nbd *)b)->q);
}

/* The epoll fd follows the socket and the timer by itself; the done eventfd follows ndone. */
static int nbd_engine_prepare_wait(void *b)
{
    return dp_rq_ready(&((struct dp_nbd *)b)->q);
}

static int nbd_engine_submit(void *b, struct dp_io *const *ios, unsigned cnt)
{
    struct dp_nbd *n = b;

    if (cnt > n->q.free.n)
        return -EBUSY;
    for (unsigned i = 0; i < cnt; i++) {
        struct dp_rreq *r = dp_rq_get(&n->q, ios[i]);
        int ret = dp_rq_check(&n->info, ios[i]);

        if (ret)
            dp_rq_complete(&n->q, r, ret < 0 ? ret : (int64_t)ios[i]->length);
        else if (n->state == NBD_UP)
            issue(n, r);
        else
            wait_for_server(n, r);
    }
    stabilize(n);
    dp_rq_signal(&n->q);
    return 0;
}

static int nbd_engine_reap(void *b, struct dp_cqe *out, unsigned max)
{
    struct dp_nbd *n = b;
    struct epoll_event ev[4];
    int k = epoll_wait(n->epfd, ev, 4, 0);
    unsigned got;

    for (int i = 0; i < k; i++) {
        if (ev[i].data.u32 == TAG_SOCK)
            on_socket(n, ev[i].events);
        else if (ev[i].data.u32 == TAG_TIMER)
            on_timer(n);
    }
    stabilize(n);
    if (n->q.efd_set)
        dp_rq_drain(&n->q);
    got = dp_rq_take(&n->q, out, max);
    dp_rq_signal(&n->q); /* what did not fit in out */
    return (int)got;
}

static void nbd_engine_info(const void *b, struct dp_remote_info *out)
{
    const struct dp_nbd *n = b;

    /* Set once at open, except the two counters the engine's thread updates. */
    memset(out, 0, sizeof(*out));
    out->size = n->info.size;
    out->flags = n->info.flags;
    out->block_min = n->info.block_min;
    out->block_opt = n->info.block_opt;
    out->block_max = n->info.block_max;
    out->reconnects = __atomic_load_n(&n->info.reconnects, __ATOMIC_RELAXED);
    out->connected = __atomic_load_n(&n->info.connected, __ATOMIC_RELAXED);
}

const struct dp_remote_ops dp_nbd_ops = {
    .name = "nbd",
    .open = nbd_engine_open,
    .completion_fd = nbd_engine_completion_fd,
    .ready = nbd_engine_ready,
    .prepare_wait = nbd_engine_prepare_wait,
    .submit = nbd_engine_submit,
    .reap = nbd_engine_reap,
    .info = nbd_engine_info,
    .close = nbd_engine_close,
};

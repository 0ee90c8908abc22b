#define _GNU_SOURCE
#include "dp_nbd.h"

#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "dp_nbd_conn.h"

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
    int e = dp_nbd_errno();

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
void dp_nbd_issue(struct dp_nbd *n, struct dp_rreq *r)
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
void dp_nbd_expire_waiting(struct dp_nbd *n, uint64_t now)
{
    struct dp_rreq *r = n->waiting.head, *next;

    n->next_expiry = 0;
    for (; r; r = next) {
        next = r->next;
        if (now - r->lost_at >= n->reconnect_ns) {
            dp_rlist_remove(&n->waiting, r);
            dp_rq_complete(&n->q, r, -EIO);
        } else {
            n->next_expiry = dp_nbd_earlier(n->next_expiry, r->lost_at + n->reconnect_ns);
        }
    }
}

/* r waits for a connection and then starts over from its data, or fails past its deadline. */
void dp_nbd_wait_for_server(struct dp_nbd *n, struct dp_rreq *r)
{
    uint64_t now = dp_nbd_now_ns();

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
    n->next_expiry = dp_nbd_earlier(n->next_expiry, r->lost_at + n->reconnect_ns);
}

static int flush_phase(void *b, struct dp_rreq *r)
{
    struct dp_nbd *n = b;

    if (n->state == NBD_UP)
        dp_nbd_issue(n, r);
    else
        dp_nbd_wait_for_server(n, r);
    return 0;
}

void dp_nbd_process_settled(struct dp_nbd *n)
{
    struct dp_rreq *r;

    while ((r = dp_rlist_pop(&n->settled))) {
        if (r->lost) {
            dp_nbd_wait_for_server(n, r);
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

/* -- the dp_remote_ops ------------------------------------------------------------------ */

static void nbd_engine_close(void *b)
{
    struct dp_nbd *n = b;

    if (!n)
        return;
    if (n->h)
        dp_nbd_drop_handle(n);
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
    n->h = dp_nbd_new_handle();
    if (!n->h) {
        *err = -ENOMEM;
        goto fail_sys;
    }
    *err = dp_nbd_connect_blocking(n->h, n->uri, p->timeout_ms ? p->timeout_ms : DP_REMOTE_OPEN_TIMEOUT_MS,
                            &why);
    if (*err) {
        why = why ? why : dp_nbd_reason();
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
                 nbd_get_errno() > 0 ? dp_nbd_reason() : "the server reports an impossible export size");
        goto fail;
    }
    n->info.size = (uint64_t)size;
    n->info.flags = dp_nbd_handle_flags(n->h) | (p->read_only ? DP_REMOTE_READ_ONLY : 0);
    n->info.connected = 1;
    dp_nbd_set_limits(n, n->h);
    n->state = NBD_UP;
    dp_nbd_update_direction(n);
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
            dp_nbd_issue(n, r);
        else
            dp_nbd_wait_for_server(n, r);
    }
    dp_nbd_stabilize(n);
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
            dp_nbd_on_socket(n, ev[i].events);
        else if (ev[i].data.u32 == TAG_TIMER)
            dp_nbd_on_timer(n);
    }
    dp_nbd_stabilize(n);
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

const struct dp_remote_ops dp_nbd_ops = DP_REMOTE_OPS(nbd, "nbd");

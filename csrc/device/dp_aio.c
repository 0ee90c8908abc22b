#define _GNU_SOURCE
#include "dp_aio.h"

#include <errno.h>
#include <libaio.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#define DP_AIO_EAGAIN_RETRIES 1000

struct dp_aio_early {
    struct dp_io *io; /* still owns its iocb slot */
    int64_t res;
};

struct dp_aio {
    io_context_t ctx;
    int fd;
    int efd;
    int has_fdsync;
    unsigned depth;
    struct iocb *cbs;         /* depth slots; an io owns one until it is reaped */
    struct iocb **free_cbs;
    unsigned nfree;
    struct iocb **batch;      /* scratch for one io_submit */
    struct dp_aio_early *early; /* refused at submit time, handed out by the next reap */
    unsigned nearly;
    struct io_event *events;
};

static void dp_aio_put_cb(struct dp_aio *a, struct iocb *cb)
{
    a->free_cbs[a->nfree++] = cb;
}

/* Linux AIO accepts IOCB_CMD_FDSYNC only where the filesystem implements it. */
static int dp_aio_probe_fdsync(struct dp_aio *a)
{
    struct iocb cb, *cbp = &cb;
    struct io_event ev;
    int ret;

    io_prep_fdsync(&cb, a->fd);
    do {
        ret = io_submit(a->ctx, 1, &cbp);
    } while (ret == -EINTR || ret == -EAGAIN);
    if (ret != 1)
        return ret != -EINVAL;
    do {
        ret = io_getevents(a->ctx, 1, 1, &ev, NULL);
    } while (ret == -EINTR);
    return !(ret == 1 && (long)ev.res == -EINVAL);
}

void dp_aio_close(struct dp_aio *a)
{
    if (!a)
        return;
    if (a->ctx)
        io_destroy(a->ctx);
    if (a->efd >= 0)
        close(a->efd);
    free(a->cbs);
    free(a->free_cbs);
    free(a->batch);
    free(a->early);
    free(a->events);
    free(a);
}

struct dp_aio *dp_aio_open(int fd, unsigned queue_depth, int *err)
{
    struct dp_aio *a = calloc(1, sizeof(*a));
    unsigned depth = queue_depth ? queue_depth : 1;
    int ret;

    if (!a) {
        *err = -ENOMEM;
        return NULL;
    }
    a->fd = fd;
    a->efd = -1;
    a->depth = depth;
    a->cbs = calloc(depth, sizeof(*a->cbs));
    a->free_cbs = calloc(depth, sizeof(*a->free_cbs));
    a->batch = calloc(depth, sizeof(*a->batch));
    a->early = calloc(depth, sizeof(*a->early));
    a->events = calloc(depth, sizeof(*a->events));
    if (!a->cbs || !a->free_cbs || !a->batch || !a->early || !a->events) {
        *err = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < depth; i++)
        dp_aio_put_cb(a, &a->cbs[i]);
    ret = io_setup((int)depth, &a->ctx);
    if (ret < 0) {
        a->ctx = 0;
        *err = ret;
        goto fail;
    }
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0) {
        *err = -errno;
        goto fail;
    }
    a->has_fdsync = dp_aio_probe_fdsync(a);
    *err = 0;
    return a;

fail:
    dp_aio_close(a);
    return NULL;
}

int dp_aio_completion_fd(const struct dp_aio *a)
{
    return a->efd;
}

int dp_aio_has_fdsync(const struct dp_aio *a)
{
    return a->has_fdsync;
}

/* 0 when cb is ready to submit, else -errno to complete the io with. */
static int dp_aio_prep(struct dp_aio *a, struct iocb *cb, struct dp_io *io)
{
    const struct iovec *iov = (const struct iovec *)&io->iov[io->iov_idx];
    int nr = (int)(io->iovcnt - io->iov_idx);

    switch (io->op) {
    case DP_OP_READ:
        io_prep_preadv(cb, a->fd, iov, nr, (long long)io->offset);
        break;
    case DP_OP_WRITE:
        io_prep_pwritev2(cb, a->fd, iov, nr, (long long)io->offset,
                         (io->flags & DP_IO_DSYNC) ? RWF_DSYNC : 0);
        break;
    case DP_OP_FLUSH:
        io_prep_fdsync(cb, a->fd);
        break;
    case DP_OP_DISCARD:
    case DP_OP_WRITE_ZEROES:
        return -EOPNOTSUPP;
    default:
        return -EINVAL;
    }
    cb->data = io;
    io_set_eventfd(cb, a->efd);
    return 0;
}

static void dp_aio_fail_early(struct dp_aio *a, struct dp_io *io, int err)
{
    a->early[a->nearly].io = io;
    a->early[a->nearly].res = err;
    a->nearly++;
}

/* Submit a->batch[0..cnt); iocbs the kernel refuses complete early. */
static void dp_aio_submit_batch(struct dp_aio *a, unsigned cnt)
{
    unsigned off = 0, retries = 0;

    while (off < cnt) {
        int ret = io_submit(a->ctx, (long)(cnt - off), &a->batch[off]);

        if (ret > 0) {
            off += (unsigned)ret;
            retries = 0;
            continue;
        }
        if (ret == -EINTR)
            continue;
        if ((ret == -EAGAIN || ret == 0) && ++retries < DP_AIO_EAGAIN_RETRIES) {
            sched_yield();
            continue;
        }
        /* io_submit reports the error of the first iocb it could not queue. */
        dp_aio_fail_early(a, a->batch[off]->data, ret ? ret : -EAGAIN);
        off++;
        retries = 0;
    }
}

int dp_aio_submit(struct dp_aio *a, struct dp_io *const *ios, unsigned n)
{
    unsigned cnt = 0, nearly = a->nearly;

    if (n > a->nfree)
        return -EBUSY;
    for (unsigned i = 0; i < n; i++) {
        struct iocb *cb = a->free_cbs[--a->nfree];
        int ret;

        ios[i]->priv = cb;
        ret = dp_aio_prep(a, cb, ios[i]);
        if (ret < 0)
            dp_aio_fail_early(a, ios[i], ret);
        else
            a->batch[cnt++] = cb;
    }
    dp_aio_submit_batch(a, cnt);
    if (a->nearly != nearly)
        eventfd_write(a->efd, 1);
    return 0;
}

/*
 * The kernel's completion ring, mapped at the context's address (fs/aio.c's
 * struct aio_ring): head != tail means events wait, seen without a syscall.
 */
struct dp_aio_ring {
    unsigned id;
    unsigned nr;
    unsigned head;
    unsigned tail;
};

int dp_aio_ready(const struct dp_aio *a)
{
    const struct dp_aio_ring *r = (const struct dp_aio_ring *)a->ctx;

    /* tail is the kernel's store, after the event it publishes: acquire, as for avail->idx. */
    return a->nearly || __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) != r->head;
}

int dp_aio_reap(struct dp_aio *a, struct dp_cqe *out, unsigned max)
{
    struct timespec zero = {0, 0};
    unsigned n = 0, cnt = 0, nearly;
    int got;

    while (a->nearly && n < max) {
        struct dp_aio_early *e = &a->early[--a->nearly];

        out[n].token = e->io->token;
        out[n++].res = e->res;
        dp_aio_put_cb(a, e->io->priv);
    }
    while (n < max) {
        unsigned want = max - n < a->depth ? max - n : a->depth;

        got = io_getevents(a->ctx, 0, (long)want, a->events, &zero);
        if (got == -EINTR)
            continue;
        if (got <= 0)
            break;
        for (int i = 0; i < got; i++) {
            struct dp_io *io = a->events[i].data;
            struct iocb *cb = a->events[i].obj;

            if (dp_io_account(io, (long)a->events[i].res, &out[n].res)) {
                dp_aio_prep(a, cb, io);
                a->batch[cnt++] = cb;
                continue;
            }
            out[n++].token = io->token;
            dp_aio_put_cb(a, cb);
        }
        if ((unsigned)got < want)
            break;
    }
    nearly = a->nearly;
    dp_aio_submit_batch(a, cnt);
    /* A refused resubmission completes at the next reap: make sure there is one. */
    if (a->nearly != nearly)
        eventfd_write(a->efd, 1);
    return (int)n;
}

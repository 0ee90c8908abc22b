#define _GNU_SOURCE
#include "dp_engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dp_aio.h"
#include "dp_delay.h"
#include "dp_nbd.h"
#include "dp_pool.h"
#include "dp_rbd.h"
#include "dp_uring.h"

struct dp_engine {
    int kind;
    unsigned uring_flags;
    unsigned depth;
    int efd;                /* null: -1; threads: ours; io_uring, AIO: theirs */
    struct dp_uring *uring;
    struct dp_aio *aio;
    struct dp_pool *pool;   /* threads: all requests; AIO: what AIO cannot do */
    uint32_t pool_ops;      /* AIO: bit (1 << op) for the ops that go to the pool */
    struct dp_io **scratch; /* AIO: the part of a batch that goes to the kernel */
    struct dp_cqe *done;    /* null: completions until the next reap */
    unsigned ndone;
    const struct dp_remote_ops *rops; /* remote engines: everything goes to rops(remote) */
    void *remote;
    struct dp_delay *delay; /* TEST ONLY (dp_delay.h): some completions held back */
};

void dp_engine_close(struct dp_engine *e)
{
    if (!e)
        return;
    dp_delay_close(e->delay);
    if (e->rops && e->remote)
        e->rops->close(e->remote);
    dp_pool_close(e->pool);
    if (e->uring)
        dp_uring_close(e->uring);
    if (e->aio)
        dp_aio_close(e->aio);
    if (e->kind == DP_ENGINE_THREADS && e->efd >= 0)
        close(e->efd); /* the others' eventfds belong to dp_uring / dp_aio */
    free(e->scratch);
    free(e->done);
    free(e);
}

static int open_kind(struct dp_engine *e, int fd, unsigned uring_flags)
{
    int err = 0;

    switch (e->kind) {
    case DP_ENGINE_NULL:
        e->done = calloc(e->depth, sizeof(*e->done));
        return e->done ? 0 : -ENOMEM;
    case DP_ENGINE_THREADS:
        e->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (e->efd < 0)
            return -errno;
        e->pool = dp_pool_open(fd, e->efd, DP_THREADS_WORKERS, e->depth, &err);
        return err;
    case DP_ENGINE_URING:
        e->uring = dp_uring_open_flags(fd, e->depth, uring_flags, &err);
        if (e->uring)
            e->efd = dp_uring_completion_fd(e->uring);
        return err;
    case DP_ENGINE_AIO:
        e->aio = dp_aio_open(fd, e->depth, &err);
        if (!e->aio)
            return err;
        e->efd = dp_aio_completion_fd(e->aio);
        e->pool_ops = (1u << DP_OP_DISCARD) | (1u << DP_OP_WRITE_ZEROES);
        if (!dp_aio_has_fdsync(e->aio))
            e->pool_ops |= 1u << DP_OP_FLUSH;
        e->scratch = calloc(e->depth, sizeof(*e->scratch));
        if (!e->scratch)
            return -ENOMEM;
        e->pool = dp_pool_open(fd, e->efd, DP_AIO_WORKERS, e->depth, &err);
        return err;
    default:
        return -EINVAL;
    }
}

struct dp_engine *dp_engine_open(int kind, int fd, unsigned queue_depth, unsigned uring_flags,
                                 int *err)
{
    struct dp_engine *e = calloc(1, sizeof(*e));

    if (!e) {
        *err = -ENOMEM;
        return NULL;
    }
    e->kind = kind;
    e->uring_flags = uring_flags;
    e->depth = queue_depth ? queue_depth : 1;
    e->efd = -1;
    *err = open_kind(e, fd, uring_flags);
    if (*err) {
        dp_engine_close(e);
        return NULL;
    }
    return e;
}

static const struct dp_remote_ops *remote_ops(int kind)
{
    switch (kind) {
    case DP_ENGINE_NBD:
        return &dp_nbd_ops;
    case DP_ENGINE_RBD:
        return &dp_rbd_ops;
    default:
        return NULL;
    }
}

struct dp_engine *dp_engine_open_remote(int kind, const struct dp_remote_params *p,
                                        unsigned queue_depth, char *msg, unsigned msglen,
                                        int *err)
{
    const struct dp_remote_ops *ops = remote_ops(kind);
    struct dp_engine *e;

    if (msglen)
        msg[0] = 0;
    if (!ops) {
        *err = -EINVAL;
        return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (!e) {
        *err = -ENOMEM;
        return NULL;
    }
    e->kind = kind;
    e->depth = queue_depth ? queue_depth : 1;
    e->rops = ops;
    e->remote = ops->open(p, e->depth, msg, msglen, err);
    if (!e->remote) {
        free(e);
        return NULL;
    }
    e->efd = ops->completion_fd(e->remote);
    return e;
}

int dp_engine_remote_info(const struct dp_engine *e, struct dp_remote_info *info)
{
    if (!e->rops)
        return -EINVAL;
    e->rops->info(e->remote, info);
    return 0;
}

int dp_engine_start(struct dp_engine *e)
{
    return e->uring ? dp_uring_enable(e->uring) : 0;
}

int dp_engine_set_memory(struct dp_engine *e, const struct dp_mem_region *r, unsigned n)
{
    struct dp_iovec *chunks;
    unsigned k = 0, cap = 0;
    int ret;

    if (!e->uring || !(e->uring_flags & DP_URING_FIXED_BUFFERS))
        return 0;
    for (unsigned i = 0; i < n; i++)
        cap += (unsigned)((r[i].size + DP_FIXED_BUFFER_MAX - 1) / DP_FIXED_BUFFER_MAX);
    chunks = calloc(cap ? cap : 1, sizeof(*chunks));
    if (!chunks)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++)
        for (uint64_t off = 0; off < r[i].size; off += DP_FIXED_BUFFER_MAX) {
            uint64_t len = r[i].size - off;
            chunks[k++] = (struct dp_iovec){r[i].host + off,
                                            len < DP_FIXED_BUFFER_MAX ? len : DP_FIXED_BUFFER_MAX};
        }
    ret = dp_uring_register_buffers(e->uring, chunks, k);
    free(chunks);
    return ret;
}

int dp_engine_set_test_delay(struct dp_engine *e, unsigned every, unsigned delay_us)
{
    int err;

    if (e->delay)
        return -EBUSY;
    e->delay = dp_delay_open(every, (uint64_t)delay_us * 1000u, e->efd, e->depth, &err);
    return e->delay ? 0 : err;
}

int dp_engine_completion_fd(const struct dp_engine *e)
{
    return e->delay ? dp_delay_fd(e->delay) : e->efd;
}

static int inner_ready(const struct dp_engine *e);

int dp_engine_ready(const struct dp_engine *e)
{
    return (e->delay && dp_delay_due(e->delay)) || inner_ready(e);
}

static int inner_ready(const struct dp_engine *e)
{
    if (e->rops)
        return e->rops->ready(e->remote);
    switch (e->kind) {
    case DP_ENGINE_NULL:
        return e->ndone != 0;
    case DP_ENGINE_URING:
        return dp_uring_ready(e->uring);
    case DP_ENGINE_AIO:
        return dp_aio_ready(e->aio) || dp_pool_ready(e->pool) != 0;
    default:
        return dp_pool_ready(e->pool) != 0;
    }
}

static void drain_efd(int fd)
{
    eventfd_t v;
    (void)eventfd_read(fd, &v); /* EAGAIN when already clear */
}

static int inner_prepare_wait(struct dp_engine *e)
{
    if (e->rops)
        return e->rops->prepare_wait(e->remote);
    if (e->kind == DP_ENGINE_URING)
        return dp_uring_prepare_wait(e->uring);
    /* Drain, then look: a completion after the drain makes the fd readable again. */
    if (e->efd >= 0)
        drain_efd(e->efd);
    return inner_ready(e);
}

int dp_engine_prepare_wait(struct dp_engine *e)
{
    int ready = inner_prepare_wait(e);

    return (e->delay && dp_delay_arm(e->delay)) || ready;
}

/* engines/null.py: reads see zeros, everything succeeds, completions at the next reap. */
static int null_submit(struct dp_engine *e, struct dp_io *const *ios, unsigned n)
{
    if (e->ndone + n > e->depth)
        return -EBUSY;
    for (unsigned i = 0; i < n; i++) {
        struct dp_io *io = ios[i];

        if (io->op == DP_OP_READ)
            for (uint32_t k = 0; k < io->iovcnt; k++)
                memset((void *)(uintptr_t)io->iov[k].base, 0, io->iov[k].len);
        e->done[e->ndone++] = (struct dp_cqe){io->token, (int64_t)io->length};
    }
    return 0;
}

static int null_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max)
{
    unsigned n = e->ndone < max ? e->ndone : max;

    for (unsigned i = 0; i < n; i++)
        out[i] = e->done[i];
    if (n < e->ndone)
        memmove(e->done, e->done + n, (e->ndone - n) * sizeof(*out));
    e->ndone -= n;
    return (int)n;
}

static int pool_submit(struct dp_pool *pool, struct dp_io *const *ios, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int ret = dp_pool_put(pool, ios[i]);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int pool_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max)
{
    return (int)dp_pool_take(e->pool, out, max);
}

static int aio_submit(struct dp_engine *e, struct dp_io *const *ios, unsigned n)
{
    unsigned k = 0;

    for (unsigned i = 0; i < n; i++) {
        if (e->pool_ops & (1u << ios[i]->op)) {
            int ret = dp_pool_put(e->pool, ios[i]);
            if (ret < 0)
                return ret;
        } else {
            e->scratch[k++] = ios[i];
        }
    }
    return k ? dp_aio_submit(e->aio, e->scratch, k) : 0;
}

static int aio_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max)
{
    int n = dp_aio_reap(e->aio, out, max);

    if (n >= 0 && (unsigned)n < max)
        n += (int)dp_pool_take(e->pool, out + n, max - (unsigned)n);
    return n;
}

int dp_engine_submit(struct dp_engine *e, struct dp_io *const *ios, unsigned n)
{
    if (!n)
        return 0;
    if (e->rops)
        return e->rops->submit(e->remote, ios, n);
    switch (e->kind) {
    case DP_ENGINE_NULL:
        return null_submit(e, ios, n);
    case DP_ENGINE_THREADS:
        return pool_submit(e->pool, ios, n);
    case DP_ENGINE_URING:
        return dp_uring_submit(e->uring, ios, n);
    case DP_ENGINE_AIO:
        return aio_submit(e, ios, n);
    default:
        return -EINVAL;
    }
}

static int inner_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max);

int dp_engine_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max)
{
    unsigned k;
    int n;

    if (!e->delay)
        return inner_reap(e, out, max);
    /* The held completions that are due, then the engine's, every Nth of which is held. */
    k = dp_delay_release(e->delay, out, max);
    n = inner_reap(e, out + k, max - k);
    if (n < 0)
        return n;
    return (int)(k + dp_delay_hold(e->delay, out + k, (unsigned)n));
}

static int inner_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max)
{
    if (e->rops)
        return e->rops->reap(e->remote, out, max);
    switch (e->kind) {
    case DP_ENGINE_NULL:
        return null_reap(e, out, max);
    case DP_ENGINE_THREADS:
        return pool_reap(e, out, max);
    case DP_ENGINE_URING:
        return dp_uring_reap(e->uring, out, max);
    case DP_ENGINE_AIO:
        return aio_reap(e, out, max);
    default:
        return 0;
    }
}

#define _GNU_SOURCE
#include "dp_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DP_URING_CQE_BATCH 64

struct dp_uring {
    struct io_uring ring;
    int fd;
    int efd;
    unsigned flags;        /* DP_URING_* */
    int sqe_fd;            /* fd as SQEs name it: the registered index 0 with FIXED_FILE */
    unsigned sqe_flags;    /* IOSQE_FIXED_FILE with FIXED_FILE */
    unsigned nbufs;        /* registered buffers (FIXED_BUFFERS) */
    struct iovec *bufs;
};

static unsigned dp_uring_setup_flags(unsigned flags)
{
    unsigned setup = 0;

    if (flags & (DP_URING_SINGLE_ISSUER | DP_URING_DEFER_TASKRUN))
        setup |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED;
    /* TASKRUN_FLAG: deferred completions show in sq flags, so polling sees them syscall-free. */
    if (flags & DP_URING_DEFER_TASKRUN)
        setup |= IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    if (flags & DP_URING_COOP_TASKRUN)
        setup |= IORING_SETUP_COOP_TASKRUN;
    return setup;
}

struct dp_uring *dp_uring_open(int fd, unsigned queue_depth, int *err)
{
    return dp_uring_open_flags(fd, queue_depth, 0, err);
}

struct dp_uring *dp_uring_open_flags(int fd, unsigned queue_depth, unsigned flags, int *err)
{
    struct dp_uring *u = calloc(1, sizeof(*u));
    int ret;

    if (!u) {
        *err = -ENOMEM;
        return NULL;
    }
    u->fd = fd;
    u->sqe_fd = fd;
    u->flags = flags;
    ret = io_uring_queue_init(queue_depth ? queue_depth : 1, &u->ring, dp_uring_setup_flags(flags));
    if (ret == -EINVAL && dp_uring_setup_flags(flags)) {
        /* A kernel older than the set-up options (DEFER_TASKRUN: 6.1): do without them. */
        u->flags = flags & ~(DP_URING_SINGLE_ISSUER | DP_URING_DEFER_TASKRUN |
                             DP_URING_COOP_TASKRUN);
        ret = io_uring_queue_init(queue_depth ? queue_depth : 1, &u->ring, 0);
    }
    if (ret < 0) {
        free(u);
        *err = ret;
        return NULL;
    }
    u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->efd < 0) {
        *err = -errno;
        goto fail_ring;
    }
    ret = io_uring_register_eventfd(&u->ring, u->efd);
    if (ret < 0) {
        *err = ret;
        close(u->efd);
        goto fail_ring;
    }
    if (flags & DP_URING_FIXED_FILE) {
        ret = io_uring_register_files(&u->ring, &fd, 1);
        if (ret < 0) {
            *err = ret;
            io_uring_unregister_eventfd(&u->ring);
            close(u->efd);
            goto fail_ring;
        }
        u->sqe_fd = 0;
        u->sqe_flags = IOSQE_FIXED_FILE;
    }
    *err = 0;
    return u;

fail_ring:
    io_uring_queue_exit(&u->ring);
    free(u);
    return NULL;
}

int dp_uring_completion_fd(const struct dp_uring *u)
{
    return u->efd;
}

int dp_uring_enable(struct dp_uring *u)
{
    long ret;

    if (!(u->ring.flags & IORING_SETUP_R_DISABLED))
        return 0;
    /* liburing 2.3 declares io_uring_enable_rings but does not export it. */
    ret = syscall(__NR_io_uring_register, u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    return ret < 0 ? -errno : 0;
}

static int taskrun_pending(const struct dp_uring *u)
{
    return (IO_URING_READ_ONCE(*u->ring.sq.kflags) & IORING_SQ_TASKRUN) != 0;
}

int dp_uring_ready(const struct dp_uring *u)
{
    return io_uring_cq_ready(&u->ring) != 0 || io_uring_sq_ready(&u->ring) != 0 ||
           ((u->ring.flags & IORING_SETUP_DEFER_TASKRUN) && taskrun_pending(u));
}

int dp_uring_register_buffers(struct dp_uring *u, const struct dp_iovec *bufs, unsigned n)
{
    struct iovec *copy = NULL;
    int ret;

    if (u->nbufs) {
        io_uring_unregister_buffers(&u->ring);
        free(u->bufs);
        u->bufs = NULL;
        u->nbufs = 0;
    }
    if (!n)
        return 0;
    copy = calloc(n, sizeof(*copy));
    if (!copy)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++)
        copy[i] = (struct iovec){(void *)(uintptr_t)bufs[i].base, bufs[i].len};
    ret = io_uring_register_buffers(&u->ring, copy, n);
    if (ret < 0) {
        free(copy);
        return ret;
    }
    u->bufs = copy;
    u->nbufs = n;
    return 0;
}

/* The registered buffer holding all of [base, base+len), or -1. */
static int dp_uring_buf_index(const struct dp_uring *u, uint64_t base, uint64_t len)
{
    for (unsigned i = 0; i < u->nbufs; i++) {
        uint64_t start = (uintptr_t)u->bufs[i].iov_base;

        if (base >= start && len <= u->bufs[i].iov_len && base - start <= u->bufs[i].iov_len - len)
            return (int)i;
    }
    return -1;
}

static struct io_uring_sqe *dp_uring_get_sqe(struct dp_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

    /* Only when the caller exceeds queue_depth: make room and retry once. */
    if (!sqe && io_uring_submit(&u->ring) >= 0)
        sqe = io_uring_get_sqe(&u->ring);
    return sqe;
}

/* READ_FIXED / WRITE_FIXED for a one-iovec transfer inside a registered buffer. */
static int dp_uring_prep_fixed(struct dp_uring *u, struct io_uring_sqe *sqe, struct dp_io *io)
{
    const struct dp_iovec *v = &io->iov[io->iov_idx];
    int idx;

    if (io->iovcnt - io->iov_idx != 1 || v->len > UINT32_MAX)
        return 0;
    idx = dp_uring_buf_index(u, v->base, v->len);
    if (idx < 0)
        return 0;
    if (io->op == DP_OP_READ) {
        io_uring_prep_read_fixed(sqe, u->sqe_fd, (void *)(uintptr_t)v->base, (unsigned)v->len,
                                 io->offset, idx);
    } else {
        io_uring_prep_write_fixed(sqe, u->sqe_fd, (const void *)(uintptr_t)v->base,
                                  (unsigned)v->len, io->offset, idx);
        sqe->rw_flags = (io->flags & DP_IO_DSYNC) ? RWF_DSYNC : 0;
    }
    return 1;
}

static void dp_uring_prep(struct dp_uring *u, struct io_uring_sqe *sqe, struct dp_io *io)
{
    const struct iovec *iov = (const struct iovec *)&io->iov[io->iov_idx];
    unsigned nr = io->iovcnt - io->iov_idx;

    switch (io->op) {
    case DP_OP_READ:
        if (!(u->nbufs && dp_uring_prep_fixed(u, sqe, io)))
            io_uring_prep_readv(sqe, u->sqe_fd, iov, nr, io->offset);
        break;
    case DP_OP_WRITE:
        if (!(u->nbufs && dp_uring_prep_fixed(u, sqe, io)))
            io_uring_prep_writev2(sqe, u->sqe_fd, iov, nr, io->offset,
                                  (io->flags & DP_IO_DSYNC) ? RWF_DSYNC : 0);
        break;
    case DP_OP_FLUSH:
        io_uring_prep_fsync(sqe, u->sqe_fd, IORING_FSYNC_DATASYNC);
        break;
    case DP_OP_DISCARD:
    case DP_OP_WRITE_ZEROES:
        io_uring_prep_fallocate(sqe, u->sqe_fd, dp_fallocate_mode(io->op, io->flags),
                                (off_t)io->offset, (off_t)io->length);
        break;
    default:
        /* Unknown op: a NOP whose completion is rewritten to -EINVAL in reap. */
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, io);
        return;
    }
    sqe->flags |= u->sqe_flags;
    io_uring_sqe_set_data(sqe, io);
}

static int dp_uring_flush_sq(struct dp_uring *u)
{
    while (io_uring_sq_ready(&u->ring)) {
        int ret = io_uring_submit(&u->ring);
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            return ret;
    }
    return 0;
}

int dp_uring_submit(struct dp_uring *u, struct dp_io *const *ios, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = dp_uring_get_sqe(u);
        if (!sqe)
            return -EBUSY;
        dp_uring_prep(u, sqe, ios[i]);
    }
    return dp_uring_flush_sq(u);
}

static void dp_uring_drain_eventfd(struct dp_uring *u)
{
    eventfd_t v;
    (void)eventfd_read(u->efd, &v); /* EAGAIN when already clear */
}

int dp_uring_prepare_wait(struct dp_uring *u)
{
    /* Drain, then look: a completion after the drain signals the eventfd again. */
    dp_uring_drain_eventfd(u);
    return dp_uring_ready(u);
}

int dp_uring_reap(struct dp_uring *u, struct dp_cqe *out, unsigned max)
{
    struct io_uring_cqe *cqes[DP_URING_CQE_BATCH];
    unsigned n = 0, got;

    /* With DEFER_TASKRUN, completions are posted only when we ask for them. */
    if ((u->ring.flags & IORING_SETUP_DEFER_TASKRUN) && taskrun_pending(u))
        io_uring_get_events(&u->ring);
    /* Resubmissions a failed submit left queued: try again (an error retries next reap). */
    if (io_uring_sq_ready(&u->ring))
        (void)dp_uring_flush_sq(u);
    while (n < max) {
        unsigned want = max - n < DP_URING_CQE_BATCH ? max - n : DP_URING_CQE_BATCH;

        got = io_uring_peek_batch_cqe(&u->ring, cqes, want);
        if (!got)
            break;
        for (unsigned i = 0; i < got; i++) {
            struct dp_io *io = io_uring_cqe_get_data(cqes[i]);
            int64_t res = cqes[i]->res;

            if (io->op > DP_OP_WRITE_ZEROES)
                res = -EINVAL;
            if (dp_io_account(io, res, &out[n].res)) {
                struct io_uring_sqe *sqe = dp_uring_get_sqe(u);
                if (sqe) {
                    dp_uring_prep(u, sqe, io);
                    continue;
                }
                out[n].res = -EBUSY;
            }
            out[n].token = io->token;
            n++;
        }
        io_uring_cq_advance(&u->ring, got);
    }
    /* Short transfers continue here; a failed submit leaves them queued, and ready says so. */
    if (io_uring_sq_ready(&u->ring))
        (void)dp_uring_flush_sq(u);
    return (int)n;
}

void dp_uring_close(struct dp_uring *u)
{
    if (!u)
        return;
    io_uring_unregister_eventfd(&u->ring);
    io_uring_queue_exit(&u->ring);
    close(u->efd);
    free(u->bufs);
    free(u);
}

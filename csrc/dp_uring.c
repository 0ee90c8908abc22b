#define _GNU_SOURCE
#include "dp_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define DP_URING_CQE_BATCH 64

struct dp_uring {
    struct io_uring ring;
    int fd;
    int efd;
};

struct dp_uring *dp_uring_open(int fd, unsigned queue_depth, int *err)
{
    struct dp_uring *u = calloc(1, sizeof(*u));
    int ret;

    if (!u) {
        *err = -ENOMEM;
        return NULL;
    }
    u->fd = fd;
    ret = io_uring_queue_init(queue_depth ? queue_depth : 1, &u->ring, 0);
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

static struct io_uring_sqe *dp_uring_get_sqe(struct dp_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

    /* Only when the caller exceeds queue_depth: make room and retry once. */
    if (!sqe && io_uring_submit(&u->ring) >= 0)
        sqe = io_uring_get_sqe(&u->ring);
    return sqe;
}

static void dp_uring_prep(struct dp_uring *u, struct io_uring_sqe *sqe, struct dp_io *io)
{
    const struct iovec *iov = (const struct iovec *)&io->iov[io->iov_idx];
    unsigned nr = io->iovcnt - io->iov_idx;

    switch (io->op) {
    case DP_OP_READ:
        io_uring_prep_readv(sqe, u->fd, iov, nr, io->offset);
        break;
    case DP_OP_WRITE:
        io_uring_prep_writev2(sqe, u->fd, iov, nr, io->offset,
                              (io->flags & DP_IO_DSYNC) ? RWF_DSYNC : 0);
        break;
    case DP_OP_FLUSH:
        io_uring_prep_fsync(sqe, u->fd, IORING_FSYNC_DATASYNC);
        break;
    case DP_OP_DISCARD:
    case DP_OP_WRITE_ZEROES:
        io_uring_prep_fallocate(sqe, u->fd, dp_fallocate_mode(io->op, io->flags),
                                (off_t)io->offset, (off_t)io->length);
        break;
    default:
        /* Unknown op: a NOP whose completion is rewritten to -EINVAL in reap. */
        io_uring_prep_nop(sqe);
        break;
    }
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

int dp_uring_reap(struct dp_uring *u, struct dp_cqe *out, unsigned max)
{
    struct io_uring_cqe *cqes[DP_URING_CQE_BATCH];
    unsigned n = 0, got;
    int resubmit = 0;

    /* Drain before peeking: a CQE posted after the peek re-arms the eventfd. */
    dp_uring_drain_eventfd(u);
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
                    resubmit = 1;
                    continue;
                }
                out[n].res = -EBUSY;
            }
            out[n].token = io->token;
            n++;
        }
        io_uring_cq_advance(&u->ring, got);
    }
    /* out is full but CQEs remain: re-arm so the caller comes back. */
    if (n == max && io_uring_cq_ready(&u->ring))
        eventfd_write(u->efd, 1);
    /* A failed submit leaves the SQEs queued: wake the caller to retry here. */
    if (resubmit && dp_uring_flush_sq(u) < 0)
        eventfd_write(u->efd, 1);
    return (int)n;
}

void dp_uring_close(struct dp_uring *u)
{
    if (!u)
        return;
    io_uring_unregister_eventfd(&u->ring);
    io_uring_queue_exit(&u->ring);
    close(u->efd);
    free(u);
}

#define _GNU_SOURCE
#include "dp_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

struct dp_pool {
    int fd;
    int efd;
    unsigned capacity;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct dp_io **jobs; /* ring of capacity, FIFO */
    unsigned job_head, njobs;
    struct dp_cqe *done; /* ring of capacity */
    unsigned done_head, ndone;
    unsigned inside;     /* requests put and not yet taken */
    int stop;
    unsigned nthreads;
    pthread_t *threads;
};

static int64_t transfer(int fd, struct dp_io *io)
{
    int64_t result;

    /* Nothing to move: no syscall, as the Python engine (a write on a read-only fd succeeds). */
    if (io->done == io->length)
        return (int64_t)io->length;
    for (;;) {
        const struct iovec *iov = (const struct iovec *)&io->iov[io->iov_idx];
        int cnt = (int)(io->iovcnt - io->iov_idx);
        ssize_t n;

        if (io->op == DP_OP_READ)
            n = preadv(fd, iov, cnt, (off_t)io->offset);
        else
            n = pwritev2(fd, iov, cnt, (off_t)io->offset,
                         (io->flags & DP_IO_DSYNC) ? RWF_DSYNC : 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (!dp_io_account(io, n, &result))
            return result;
    }
}

int64_t dp_pool_execute(int fd, struct dp_io *io)
{
    int ret;

    switch (io->op) {
    case DP_OP_READ:
    case DP_OP_WRITE:
        return transfer(fd, io);
    case DP_OP_FLUSH:
        do {
            ret = fdatasync(fd);
        } while (ret < 0 && errno == EINTR);
        return ret < 0 ? -errno : (int64_t)io->length;
    case DP_OP_DISCARD:
    case DP_OP_WRITE_ZEROES:
        ret = dp_fallocate(fd, dp_fallocate_mode(io->op, io->flags), io->offset, io->length);
        return ret < 0 ? ret : (int64_t)io->length;
    default:
        return -EINVAL;
    }
}

static void *worker(void *arg)
{
    struct dp_pool *p = arg;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        struct dp_io *io;
        int64_t res;

        while (!p->njobs && !p->stop)
            pthread_cond_wait(&p->cond, &p->lock);
        if (!p->njobs)
            break;
        io = p->jobs[p->job_head];
        p->job_head = (p->job_head + 1) % p->capacity;
        p->njobs--;
        pthread_mutex_unlock(&p->lock);

        res = dp_pool_execute(p->fd, io);

        pthread_mutex_lock(&p->lock);
        p->done[(p->done_head + p->ndone) % p->capacity] = (struct dp_cqe){io->token, res};
        __atomic_store_n(&p->ndone, p->ndone + 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&p->lock);
        eventfd_write(p->efd, 1);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct dp_pool *dp_pool_open(int fd, int efd, unsigned workers, unsigned capacity, int *err)
{
    struct dp_pool *p = calloc(1, sizeof(*p));

    if (!p) {
        *err = -ENOMEM;
        return NULL;
    }
    p->fd = fd;
    p->efd = efd;
    p->capacity = capacity ? capacity : 1;
    p->jobs = calloc(p->capacity, sizeof(*p->jobs));
    p->done = calloc(p->capacity, sizeof(*p->done));
    p->threads = calloc(workers ? workers : 1, sizeof(*p->threads));
    if (!p->jobs || !p->done || !p->threads) {
        *err = -ENOMEM;
        goto fail;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    for (unsigned i = 0; i < (workers ? workers : 1); i++) {
        int ret = pthread_create(&p->threads[i], NULL, worker, p);
        if (ret) {
            *err = -ret;
            dp_pool_close(p);
            return NULL;
        }
        p->nthreads++;
    }
    *err = 0;
    return p;

fail:
    free(p->jobs);
    free(p->done);
    free(p->threads);
    free(p);
    return NULL;
}

int dp_pool_put(struct dp_pool *p, struct dp_io *io)
{
    pthread_mutex_lock(&p->lock);
    if (p->inside == p->capacity) {
        pthread_mutex_unlock(&p->lock);
        return -EBUSY;
    }
    p->inside++;
    p->jobs[(p->job_head + p->njobs) % p->capacity] = io;
    p->njobs++;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

unsigned dp_pool_take(struct dp_pool *p, struct dp_cqe *out, unsigned max)
{
    unsigned n = 0;

    pthread_mutex_lock(&p->lock);
    while (p->ndone && n < max) {
        out[n++] = p->done[p->done_head];
        p->done_head = (p->done_head + 1) % p->capacity;
        __atomic_store_n(&p->ndone, p->ndone - 1, __ATOMIC_RELAXED);
        p->inside--;
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

unsigned dp_pool_ready(const struct dp_pool *p)
{
    return __atomic_load_n(&p->ndone, __ATOMIC_ACQUIRE);
}

void dp_pool_close(struct dp_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p->jobs);
    free(p->done);
    free(p->threads);
    free(p);
}

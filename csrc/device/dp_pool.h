/*
 * A pthread pool that runs I/O requests synchronously: preadv/pwritev2,
 * fdatasync and fallocate, as dataplane/device/engines/pool.py's ``execute``.
 * Each completion is queued and signalled on an eventfd (one write each).
 * The C threads engine is one pool; the C AIO engine borrows one for the
 * operations Linux AIO cannot do.
 */
#ifndef DP_POOL_H
#define DP_POOL_H

#include "dp_io.h"

struct dp_pool;

/* NULL on failure, with *err = -errno.  capacity bounds the requests in the pool. */
struct dp_pool *dp_pool_open(int fd, int efd, unsigned workers, unsigned capacity, int *err);
/* Queue io; -EBUSY when capacity requests are already in the pool. */
int dp_pool_put(struct dp_pool *p, struct dp_io *io);
/* Completions so far, at most max.  efd stays readable until drained (before a wait). */
unsigned dp_pool_take(struct dp_pool *p, struct dp_cqe *out, unsigned max);
/* Completions waiting to be taken, read without the lock: a hint for polling. */
unsigned dp_pool_ready(const struct dp_pool *p);
/* Finish the queued requests, then stop and join the workers. */
void dp_pool_close(struct dp_pool *p);

/* Run io synchronously on fd; its result as a reap reports it (length or -errno). */
int64_t dp_pool_execute(int fd, struct dp_io *io);

#endif

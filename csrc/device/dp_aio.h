/*
 * The Linux AIO engine (libaio): READ, WRITE and FLUSH as iocbs, every iocb
 * signalling one eventfd (io_set_eventfd).  Linux AIO has no fallocate:
 * DISCARD and WRITE_ZEROES are the caller's to run elsewhere (a thread pool),
 * and so is FLUSH when dp_aio_has_fdsync() says the file refuses IOCB_CMD_FDSYNC.
 */
#ifndef DP_AIO_H
#define DP_AIO_H

#include "dp_io.h"

struct dp_aio;

/* NULL on failure, with *err = -errno (io_setup: -EAGAIN past fs.aio-max-nr, -ENOSYS). */
struct dp_aio *dp_aio_open(int fd, unsigned queue_depth, int *err);
int dp_aio_completion_fd(const struct dp_aio *a);
/* Non-zero when completions wait, looked up in the kernel's mapped ring (no syscall). */
int dp_aio_ready(const struct dp_aio *a);
int dp_aio_has_fdsync(const struct dp_aio *a);
/*
 * One io_submit per batch, retried for the rest after a partial submission.
 * An iocb the kernel refuses completes with its -errno through reap.
 * Returns 0, or -EBUSY when more than queue_depth requests would be in flight.
 */
int dp_aio_submit(struct dp_aio *a, struct dp_io *const *ios, unsigned n);
/* Finished requests into out[0..max), continuing short transfers.  Returns the count. */
int dp_aio_reap(struct dp_aio *a, struct dp_cqe *out, unsigned max);
void dp_aio_close(struct dp_aio *a);

#endif

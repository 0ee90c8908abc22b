/*
 * The io_uring engine: one ring per engine instance, completions signalled
 * on an eventfd registered with io_uring_register_eventfd.
 */
#ifndef DP_URING_H
#define DP_URING_H

#include "dp_io.h"

struct dp_uring;

/* Set-up options for dp_uring_open_flags (the native data path measures each one). */
#define DP_URING_SINGLE_ISSUER 0x1u  /* created disabled; dp_uring_enable on the submitter */
#define DP_URING_COOP_TASKRUN 0x2u
#define DP_URING_DEFER_TASKRUN 0x4u  /* implies SINGLE_ISSUER */
#define DP_URING_FIXED_FILE 0x8u     /* the image fd registered, IOSQE_FIXED_FILE */
#define DP_URING_FIXED_BUFFERS 0x10u /* READ/WRITE_FIXED over dp_uring_register_buffers */

/* NULL on failure, with *err = -errno (-EPERM when io_uring_disabled, -ENOSYS...). */
struct dp_uring *dp_uring_open(int fd, unsigned queue_depth, int *err);
struct dp_uring *dp_uring_open_flags(int fd, unsigned queue_depth, unsigned flags, int *err);
/* Enable a ring created disabled (SINGLE_ISSUER), from the thread that will submit. */
int dp_uring_enable(struct dp_uring *u);
/*
 * Non-zero when CQEs wait in the ring, when deferred completions wait to be
 * posted (IORING_SQ_TASKRUN), or when resubmissions wait: no syscall.
 */
int dp_uring_ready(const struct dp_uring *u);
/* Re-arm the completion eventfd before a blocking wait; non-zero: do not block. */
int dp_uring_prepare_wait(struct dp_uring *u);
/*
 * Register bufs (each at most 1 GiB) for READ_FIXED / WRITE_FIXED, replacing
 * any earlier set; n == 0 unregisters.  Only while nothing is in flight.
 */
int dp_uring_register_buffers(struct dp_uring *u, const struct dp_iovec *bufs, unsigned n);
int dp_uring_completion_fd(const struct dp_uring *u);
/* Queue one SQE per request, then one io_uring_submit.  0 or -errno. */
int dp_uring_submit(struct dp_uring *u, struct dp_io *const *ios, unsigned n);
/* Finished requests into out[0..max), continuing short transfers.  Returns the count. */
int dp_uring_reap(struct dp_uring *u, struct dp_cqe *out, unsigned max);
void dp_uring_close(struct dp_uring *u);

#endif

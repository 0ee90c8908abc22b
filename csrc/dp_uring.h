/*
 * The io_uring engine: one ring per engine instance, completions signalled
 * on an eventfd registered with io_uring_register_eventfd.
 */
#ifndef DP_URING_H
#define DP_URING_H

#include "dp_io.h"

struct dp_uring;

/* NULL on failure, with *err = -errno (-EPERM when io_uring_disabled, -ENOSYS...). */
struct dp_uring *dp_uring_open(int fd, unsigned queue_depth, int *err);
int dp_uring_completion_fd(const struct dp_uring *u);
/* Queue one SQE per request, then one io_uring_submit.  0 or -errno. */
int dp_uring_submit(struct dp_uring *u, struct dp_io *const *ios, unsigned n);
/* Finished requests into out[0..max), continuing short transfers.  Returns the count. */
int dp_uring_reap(struct dp_uring *u, struct dp_cqe *out, unsigned max);
void dp_uring_close(struct dp_uring *u);

#endif

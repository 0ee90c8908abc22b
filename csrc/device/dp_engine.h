/*
 * The engines of the native data path behind one interface: null, threads
 * (a C pthread pool), io_uring (dp_uring) and Linux AIO (dp_aio, with a C
 * pool for what AIO cannot do).  Semantics are those of
 * dataplane/device/engines/base.py, engine by engine.  The remote engines, NBD
 * (dp_nbd) and Ceph RBD (dp_rbd), open on a target instead of an fd
 * (dp_engine_open_remote) and behave alike behind the same calls (dp_remote.h).
 */
#ifndef DP_ENGINE_H
#define DP_ENGINE_H

#include "dp_io.h"
#include "dp_mem.h"
#include "dp_remote.h"

enum dp_engine_kind {
    DP_ENGINE_NULL = 0,
    DP_ENGINE_THREADS = 1,
    DP_ENGINE_URING = 2,
    DP_ENGINE_AIO = 3,
    DP_ENGINE_NBD = 4, /* remote: dp_nbd, opened with dp_engine_open_remote */
    DP_ENGINE_RBD = 5, /* remote: dp_rbd, likewise */
};

#define DP_THREADS_WORKERS 4 /* as engines/pool.py */
#define DP_AIO_WORKERS 2     /* as engines/aio.py */
#define DP_FIXED_BUFFER_MAX (1ull << 30) /* io_uring's limit on one registered buffer */

struct dp_engine;

/* NULL on failure, with *err = -errno (EngineUnavailable for the caller). */
struct dp_engine *dp_engine_open(int kind, int fd, unsigned queue_depth, unsigned uring_flags,
                                 int *err);
/*
 * A remote engine (DP_ENGINE_NBD, DP_ENGINE_RBD) on the target p names, rather
 * than on an image fd.  NULL on failure, with *err = -errno and a one-line
 * reason in msg (DP_REMOTE_MSG_SIZE is room enough).  Blocks while it connects.
 */
struct dp_engine *dp_engine_open_remote(int kind, const struct dp_remote_params *p,
                                        unsigned queue_depth, char *msg, unsigned msglen,
                                        int *err);
/* A remote engine's disk (capacity, flags, block sizes); -EINVAL for a local engine. */
int dp_engine_remote_info(const struct dp_engine *e, struct dp_remote_info *info);
/* Called once on the thread that submits (io_uring SINGLE_ISSUER enables the ring here). */
int dp_engine_start(struct dp_engine *e);
/*
 * Guest RAM changed (only while nothing is in flight): io_uring with
 * DP_URING_FIXED_BUFFERS registers it, in chunks of at most 1 GiB.
 */
int dp_engine_set_memory(struct dp_engine *e, const struct dp_mem_region *r, unsigned n);
/*
 * TEST ONLY (dp_delay.h): hold every `every`th completion back for delay_us, to
 * force completion out of order.  Before dp_thread_new (which polls the
 * completion fd this changes) and before any I/O.  0 or -errno.
 */
int dp_engine_set_test_delay(struct dp_engine *e, unsigned every, unsigned delay_us);
/* The fd that polls readable when completions wait, or -1 (null: see dp_engine_ready). */
int dp_engine_completion_fd(const struct dp_engine *e);
/* Non-zero when completions are known to wait, found without a syscall. */
int dp_engine_ready(const struct dp_engine *e);
/*
 * Before the caller blocks on the completion fd: re-arm it (reaping never
 * drains it, so that a busy thread makes no syscall for it).  Non-zero when
 * completions already wait, and the caller must not block.
 */
int dp_engine_prepare_wait(struct dp_engine *e);
/* Start every request, with one kernel call where the engine allows.  0 or -errno. */
int dp_engine_submit(struct dp_engine *e, struct dp_io *const *ios, unsigned n);
/* Finished requests into out[0..max), without blocking.  Returns the count. */
int dp_engine_reap(struct dp_engine *e, struct dp_cqe *out, unsigned max);
void dp_engine_close(struct dp_engine *e);

#endif

"""cffi build script for dataplane._native (API mode).

Lives outside the package, as pynacl does: the package imports the compiled
module and checks its version and capabilities at import time.
"""

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
NATIVE_ABI_VERSION = 1

CDEF = """
#define DP_NATIVE_ABI_VERSION ...

uint16_t dp_avail_idx_acquire(uintptr_t addr);
void dp_used_idx_release(uintptr_t addr, uint16_t val);
void dp_smp_mb(void);

/* dp_io.h: one request for the C engines */
#define DP_OP_READ ...
#define DP_OP_WRITE ...
#define DP_OP_FLUSH ...
#define DP_OP_DISCARD ...
#define DP_OP_WRITE_ZEROES ...
#define DP_IO_DSYNC ...
#define DP_IO_UNMAP ...
#define FALLOC_FL_KEEP_SIZE ...
#define FALLOC_FL_PUNCH_HOLE ...
#define FALLOC_FL_ZERO_RANGE ...

struct dp_iovec { uint64_t base; uint64_t len; };
struct dp_io {
    uint64_t token;
    uint64_t offset;
    uint64_t length;
    uint64_t done;
    uint32_t op;
    uint32_t flags;
    uint32_t iovcnt;
    uint32_t iov_idx;
    void *priv;
    struct dp_iovec iov[];
};
struct dp_cqe { uint64_t token; int64_t res; };

int dp_fallocate_mode(uint32_t op, uint32_t flags);
int dp_fallocate(int fd, int mode, uint64_t offset, uint64_t len);
void dp_memzero(uintptr_t addr, size_t len);

/* dp_uring.h */
struct dp_uring;
struct dp_uring *dp_uring_open(int fd, unsigned queue_depth, int *err);
int dp_uring_completion_fd(const struct dp_uring *u);
int dp_uring_submit(struct dp_uring *u, struct dp_io *const *ios, unsigned n);
int dp_uring_reap(struct dp_uring *u, struct dp_cqe *out, unsigned max);
void dp_uring_close(struct dp_uring *u);

/* dp_aio.h */
struct dp_aio;
struct dp_aio *dp_aio_open(int fd, unsigned queue_depth, int *err);
int dp_aio_completion_fd(const struct dp_aio *a);
int dp_aio_has_fdsync(const struct dp_aio *a);
int dp_aio_submit(struct dp_aio *a, struct dp_io *const *ios, unsigned n);
int dp_aio_reap(struct dp_aio *a, struct dp_cqe *out, unsigned max);
void dp_aio_close(struct dp_aio *a);
"""

SOURCE = f"""
#define DP_NATIVE_ABI_VERSION {NATIVE_ABI_VERSION}
#include <fcntl.h>
#include "dp_barrier.h"
#include "dp_io.h"
#include "dp_uring.h"
#include "dp_aio.h"
"""

# Relative to the working directory of the build (the repo root under pip), as
# distutils wants relative source paths.
C_SOURCES = [os.path.relpath(HERE / name) for name in ("dp_io.c", "dp_uring.c", "dp_aio.c")]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "dataplane._native",
    SOURCE,
    sources=C_SOURCES,
    include_dirs=[str(HERE)],
    libraries=["uring", "aio"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    + os.environ.get("DP_EXTRA_CFLAGS", "").split(),
    extra_link_args=os.environ.get("DP_EXTRA_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

/*
 * One I/O request on the image, as the C engines (io_uring, Linux AIO) see it.
 *
 * The caller allocates a struct dp_io per request (the iovecs trail it) and
 * keeps it alive until the engine hands back its token.  The engine mutates
 * offset, done and the iovecs while it continues a short transfer.
 */
#ifndef DP_IO_H
#define DP_IO_H

#include <stddef.h>
#include <stdint.h>

enum dp_op {
    DP_OP_READ = 0,
    DP_OP_WRITE = 1,
    DP_OP_FLUSH = 2,
    DP_OP_DISCARD = 3,
    DP_OP_WRITE_ZEROES = 4,
};

#define DP_IO_DSYNC 0x1u /* WRITE: RWF_DSYNC */
#define DP_IO_UNMAP 0x2u /* WRITE_ZEROES: may punch a hole */

/* Same layout as struct iovec on LP64 Linux, but with integer fields so that
 * Python can fill it from (address, length) tuples without casts. */
struct dp_iovec {
    uint64_t base;
    uint64_t len;
};

struct dp_io {
    uint64_t token;
    uint64_t offset;   /* advances as a short transfer is continued */
    uint64_t length;   /* READ/WRITE: sum of iov lengths; else the range */
    uint64_t done;     /* bytes transferred so far */
    uint32_t op;       /* enum dp_op */
    uint32_t flags;    /* DP_IO_* */
    uint32_t iovcnt;
    uint32_t iov_idx;  /* first iovec not yet fully transferred */
    void *priv;        /* engine-private (the AIO engine's iocb) */
    struct dp_iovec iov[];
};

struct dp_cqe {
    uint64_t token;
    int64_t res; /* io->length on success, else -errno */
};

/* The fallocate(2) mode for DISCARD and WRITE_ZEROES (op, DP_IO_* flags); KEEP_SIZE always. */
int dp_fallocate_mode(uint32_t op, uint32_t flags);

/*
 * Account a kernel result for io.  Returns 1 when the request must be
 * resubmitted for its remainder (io->offset and the iovecs now describe it),
 * 0 when it is finished and *result holds what the caller gets back.
 *
 * A read that hits end of file fills the rest with zeros and succeeds; a
 * write that makes no progress fails with -ENOSPC (as QEMU's raw driver does).
 */
int dp_io_account(struct dp_io *io, int64_t res, int64_t *result);

/* fallocate(2) with a mode, for Python (which has only posix_fallocate). */
int dp_fallocate(int fd, int mode, uint64_t offset, uint64_t len);

void dp_memzero(uintptr_t addr, size_t len);

#endif

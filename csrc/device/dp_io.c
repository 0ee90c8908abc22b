#define _GNU_SOURCE
#include "dp_io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>

_Static_assert(sizeof(struct dp_iovec) == sizeof(struct iovec), "dp_iovec != iovec");
_Static_assert(offsetof(struct dp_iovec, len) == offsetof(struct iovec, iov_len),
               "dp_iovec != iovec");

int dp_fallocate_mode(uint32_t op, uint32_t flags)
{
    if (op == DP_OP_WRITE_ZEROES && !(flags & DP_IO_UNMAP))
        return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
}

static void dp_io_advance(struct dp_io *io, uint64_t n)
{
    io->done += n;
    io->offset += n;
    while (n && io->iov_idx < io->iovcnt) {
        struct dp_iovec *v = &io->iov[io->iov_idx];
        if (n < v->len) {
            v->base += n;
            v->len -= n;
            return;
        }
        n -= v->len;
        v->len = 0;
        io->iov_idx++;
    }
    /* Skip zero-length iovecs so a resubmission never starts with one. */
    while (io->iov_idx < io->iovcnt && io->iov[io->iov_idx].len == 0)
        io->iov_idx++;
}

static void dp_io_zero_rest(struct dp_io *io)
{
    for (uint32_t i = io->iov_idx; i < io->iovcnt; i++)
        memset((void *)(uintptr_t)io->iov[i].base, 0, io->iov[i].len);
}

int dp_io_account(struct dp_io *io, int64_t res, int64_t *result)
{
    if (res < 0) {
        *result = res;
        return 0;
    }
    if (io->op != DP_OP_READ && io->op != DP_OP_WRITE) {
        *result = (int64_t)io->length;
        return 0;
    }
    if ((uint64_t)res > io->length - io->done)
        res = (int64_t)(io->length - io->done);
    dp_io_advance(io, (uint64_t)res);
    if (io->done == io->length) {
        *result = (int64_t)io->length;
        return 0;
    }
    if (res == 0) {
        if (io->op == DP_OP_WRITE) {
            *result = -ENOSPC;
            return 0;
        }
        dp_io_zero_rest(io);
        *result = (int64_t)io->length;
        return 0;
    }
    return 1;
}

int dp_fallocate(int fd, int mode, uint64_t offset, uint64_t len)
{
    return fallocate(fd, mode, (off_t)offset, (off_t)len) < 0 ? -errno : 0;
}

void dp_memzero(uintptr_t addr, size_t len)
{
    memset((void *)addr, 0, len);
}

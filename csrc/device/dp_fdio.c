#define _GNU_SOURCE
#include "dp_fdio.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

/* 0: unknown, 1: RWF_NOWAIT works on eventfd reads, -1: refused.  Relaxed: a cache. */
static int nowait_reads;

static int poll_now(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;

    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (p.revents & POLLNVAL)
        return -EBADF;
    return n ? p.revents : 0;
}

int dp_fdio_drain(int fd)
{
    uint64_t v;
    struct iovec iov = {&v, sizeof(v)};
    ssize_t n;

    if (__atomic_load_n(&nowait_reads, __ATOMIC_RELAXED) >= 0) {
        n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
        if (n == sizeof(v))
            return 1;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n >= 0 || errno != EOPNOTSUPP)
            return n < 0 ? -errno : -EIO;
        __atomic_store_n(&nowait_reads, -1, __ATOMIC_RELAXED);
    }
    int ev = poll_now(fd, POLLIN);
    if (ev <= 0 || !(ev & POLLIN))
        return ev < 0 ? ev : 0;
    n = read(fd, &v, sizeof(v));
    if (n == sizeof(v))
        return 1;
    return n < 0 && errno == EAGAIN ? 0 : n < 0 ? -errno : -EIO;
}

int dp_fdio_signal(int fd)
{
    uint64_t one = 1;
    int ev = poll_now(fd, POLLOUT);
    ssize_t n;

    if (ev < 0)
        return ev;
    if (!(ev & POLLOUT))
        return DP_FDIO_FULL;
    n = write(fd, &one, sizeof(one));
    if (n == sizeof(one))
        return 0;
    return n < 0 && errno == EAGAIN ? DP_FDIO_FULL : n < 0 ? -errno : -EIO;
}

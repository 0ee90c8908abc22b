"""The frontend's eventfds: checked to be eventfds, and read and written without ever blocking.

Kick, call and err fds come from the frontend, which shares their file
description with us and may clear O_NONBLOCK on it at any moment, so
nothing here relies on O_NONBLOCK (csrc/device/dp_fdio.h says why each way is
safe, and what residual race is left for writes).  This is the Python
reference of csrc/device/dp_fdio.c; the C data path calls that one.
"""

from __future__ import annotations

import errno
import os
import select

from dataplane.errors import ProtocolError

EVENTFD_LINK = "anon_inode:[eventfd]"
FULL = 1  # signal(): the eventfd was full, the notification was dropped

_nowait_reads = True  # until the kernel refuses RWF_NOWAIT on an eventfd read


def is_eventfd(fd: int) -> bool:
    """Whether ``fd`` is an eventfd (what /proc says it is, not what it claims)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == EVENTFD_LINK
    except OSError:
        return False


def check_eventfd(fd: int, what: str) -> None:
    """ProtocolError unless ``fd`` is an eventfd; ``what`` names it (``vring 0 kick fd``)."""
    if not is_eventfd(fd):
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as e:
            kind = e.strerror or "unusable"
        raise ProtocolError(f"{what} is not an eventfd ({kind})")


def _poll_now(fd: int, events: int) -> int:
    p = select.poll()
    p.register(fd, events)
    ready = p.poll(0)
    revents = ready[0][1] if ready else 0
    if revents & select.POLLNVAL:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return revents


def drain(fd: int) -> bool:
    """Clear the eventfd; whether it had a count.  OSError if it cannot be read."""
    global _nowait_reads
    buf = bytearray(8)
    if _nowait_reads:
        try:
            return os.preadv(fd, [buf], -1, os.RWF_NOWAIT) == 8
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            _nowait_reads = False
    if not _poll_now(fd, select.POLLIN) & select.POLLIN:
        return False
    try:
        return len(os.read(fd, 8)) == 8
    except BlockingIOError:
        return False


def signal(fd: int) -> int:
    """Add 1 to the eventfd: 0, or FULL when it is full (the notification is dropped)."""
    if not _poll_now(fd, select.POLLOUT) & select.POLLOUT:
        return FULL
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        return FULL
    return 0

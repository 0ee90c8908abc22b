"""The worker pool: requests run synchronously on threads, for the threads engine and for
what the AIO engine hands off (aio.py).

Workers run each request synchronously (``os.preadv``/``os.pwritev``,
``os.fdatasync``, ``fallocate``), push ``(token, result)`` onto a deque and
signal an eventfd.  Python drops the GIL inside each syscall.
"""

from __future__ import annotations

import collections
import errno
import os
import queue
import threading

from dataplane.device.c import io as cio
from dataplane.device.c import view_at
from dataplane.device.io_request import IoRequest, Op

DEFAULT_WORKERS = 4


def fallocate(fd: int, req: IoRequest) -> int:
    """DISCARD or WRITE_ZEROES as ``fallocate`` with the mode from base.py; 0 or -errno."""
    return cio.fallocate(fd, req.op, req.unmap, req.offset, req.length)


def _skip(bufs: list[memoryview], n: int) -> list[memoryview]:
    """The buffers left after the first ``n`` bytes have been transferred."""
    i = 0
    while i < len(bufs) and n >= len(bufs[i]):
        n -= len(bufs[i])
        i += 1
    rest = bufs[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


def _transfer(fd: int, req: IoRequest) -> int:
    bufs = [view_at(addr, n) for addr, n in req.iov]
    total = sum(len(b) for b in bufs)
    done = 0
    while done < total:
        if req.op == Op.READ:
            n = os.preadv(fd, bufs, req.offset + done)
        else:
            n = os.pwritev(fd, bufs, req.offset + done, os.RWF_DSYNC if req.dsync else 0)
        if n == 0:
            if req.op == Op.WRITE:
                return -errno.ENOSPC
            # A read at end of file: the rest reads as zeros, as in the C engines.
            for b in bufs:
                b[:] = bytes(len(b))
            return total
        done += n
        bufs = _skip(bufs, n)
    return total


def execute(fd: int, req: IoRequest) -> int:
    """Run one request synchronously; its result as ``reap`` reports it."""
    try:
        if req.op in (Op.READ, Op.WRITE):
            return _transfer(fd, req)
        if req.op == Op.FLUSH:
            os.fdatasync(fd)
            return req.length
        if req.op in (Op.DISCARD, Op.WRITE_ZEROES):
            ret = fallocate(fd, req)
            return ret if ret < 0 else req.length
        return -errno.EINVAL
    except OSError as e:
        return -(e.errno or errno.EIO)


class WorkerPool:
    """Threads that ``execute`` requests and signal ``efd`` once per completion."""

    def __init__(self, fd: int, efd: int, workers: int = DEFAULT_WORKERS) -> None:
        self._fd = fd
        self._efd = efd
        self._jobs: queue.SimpleQueue[IoRequest | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[int, int]] = collections.deque()
        self._threads = [
            threading.Thread(target=self._run, name=f"dp-io-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while (req := self._jobs.get()) is not None:
            self._done.append((req.token, execute(self._fd, req)))
            os.eventfd_write(self._efd, 1)

    def put(self, req: IoRequest) -> None:
        self._jobs.put(req)

    def take(self) -> list[tuple[int, int]]:
        """Every completion so far; drain ``efd`` before calling, so none is missed."""
        out = []
        try:
            while True:
                out.append(self._done.popleft())
        except IndexError:
            return out

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()

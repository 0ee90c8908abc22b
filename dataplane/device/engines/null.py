"""The null engine: no I/O at all, for benchmarking the dataplane alone.

READ fills its buffers with zeros; everything else succeeds at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataplane.clib import lib
from dataplane.device.engines.base import Engine, IoRequest, Op
from dataplane.device.engines.threads import drain_eventfd


class NullEngine(Engine):
    name = "null"

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done: list[tuple[int, int]] = []

    @property
    def completion_fd(self) -> int:
        return self._efd

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        if not reqs:
            return
        for req in reqs:
            if req.op == Op.READ:
                for addr, n in req.iov:
                    lib.dp_memzero(addr, n)
            if req.op in (Op.READ, Op.WRITE):
                self._done.append((req.token, sum(n for _, n in req.iov)))
            else:
                self._done.append((req.token, req.length))
        os.eventfd_write(self._efd, 1)

    def reap(self) -> list[tuple[int, int]]:
        drain_eventfd(self._efd)
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        os.close(self._efd)

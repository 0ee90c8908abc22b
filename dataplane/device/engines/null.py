"""The null engine: no I/O at all, for benchmarking the dataplane alone.

READ fills its buffers with zeros; everything else succeeds at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataplane.device.c.io import memzero
from dataplane.device.engines.base import EventfdEngine
from dataplane.device.io_request import IoRequest, Op
from dataplane.spec.choices import NULL


class NullEngine(EventfdEngine):
    name = NULL

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        self._done: list[tuple[int, int]] = []

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        for req in reqs:
            if req.op == Op.READ:
                for addr, n in req.iov:
                    memzero(addr, n)
            if req.op in (Op.READ, Op.WRITE):
                self._done.append((req.token, sum(n for _, n in req.iov)))
            else:
                self._done.append((req.token, req.length))
        os.eventfd_write(self.completion_fd, 1)

    def _take(self) -> list[tuple[int, int]]:
        done, self._done = self._done, []
        return done

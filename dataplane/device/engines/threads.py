"""The threads engine: synchronous syscalls on a worker pool (pool.py)."""

from __future__ import annotations

from collections.abc import Sequence

from dataplane.device.engines.base import EventfdEngine
from dataplane.device.engines.pool import DEFAULT_WORKERS, WorkerPool
from dataplane.device.io_request import IoRequest
from dataplane.spec.choices import THREADS


class ThreadsEngine(EventfdEngine):
    """Synchronous syscalls on a pool of ``workers`` threads."""

    name = THREADS

    def __init__(self, fd: int, queue_depth: int, workers: int = DEFAULT_WORKERS) -> None:
        super().__init__(fd, queue_depth)
        self._pool = WorkerPool(fd, self.completion_fd, workers)

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        for req in reqs:
            self._pool.put(req)

    def _take(self) -> list[tuple[int, int]]:
        return self._pool.take()

    def close(self) -> None:
        self._pool.close()
        super().close()

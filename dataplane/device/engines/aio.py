"""The Linux AIO engine (libaio, in csrc/device/dp_aio.c); its --aio value is QEMU's: "native".

READ, WRITE and FLUSH go to the kernel as iocbs that all signal one eventfd.
Linux AIO has no fallocate, so DISCARD and WRITE_ZEROES run on a small
``WorkerPool`` (shared with the threads engine) that signals the same eventfd;
so does FLUSH when the file refuses ``IOCB_CMD_FDSYNC`` (probed at open).
"""

from __future__ import annotations

from collections.abc import Sequence

from dataplane.device.c.aio import AioContext
from dataplane.device.engines.base import CQueueEngine
from dataplane.device.engines.pool import WorkerPool
from dataplane.device.io_request import IoRequest, Op
from dataplane.spec.choices import LINUX_AIO

DEFAULT_WORKERS = 2


class AioEngine(CQueueEngine):
    name = LINUX_AIO

    def __init__(self, fd: int, queue_depth: int, workers: int = DEFAULT_WORKERS) -> None:
        ctx = AioContext(fd, queue_depth)
        super().__init__(fd, queue_depth, ctx)
        self._pool = WorkerPool(fd, self.completion_fd, workers)
        self._pool_ops = {Op.DISCARD, Op.WRITE_ZEROES}
        if not ctx.has_fdsync:
            self._pool_ops.add(Op.FLUSH)

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        to_kernel = []
        for req in reqs:
            if req.op in self._pool_ops:
                self._pool.put(req)
            else:
                to_kernel.append(req)
        if to_kernel:
            super()._submit(to_kernel)

    def reap(self) -> list[tuple[int, int]]:
        # The C reap drains the eventfd first, so pool completions taken after it are never lost.
        done = super().reap()
        done.extend(self._pool.take())
        return done

    def close(self) -> None:
        self._pool.close()
        super().close()

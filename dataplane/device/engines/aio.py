"""The Linux AIO engine (libaio, in csrc/dp_aio.c), named "native" after QEMU's aio=native.

READ, WRITE and FLUSH go to the kernel as iocbs that all signal one eventfd.
Linux AIO has no fallocate, so DISCARD and WRITE_ZEROES run on a small
``WorkerPool`` (shared with the threads engine) that signals the same eventfd;
so does FLUSH when the file refuses ``IOCB_CMD_FDSYNC`` (probed at open).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataplane.clib import ffi, lib
from dataplane.device.engines.base import Engine, IoRequest, Op
from dataplane.device.engines.threads import WorkerPool
from dataplane.device.engines.uring import NativeRequests, check_submit
from dataplane.errors import EngineUnavailable

DEFAULT_WORKERS = 2


class AioEngine(Engine):
    name = "native"

    def __init__(self, fd: int, queue_depth: int, workers: int = DEFAULT_WORKERS) -> None:
        super().__init__(fd, queue_depth)
        err = ffi.new("int *")
        ctx = lib.dp_aio_open(fd, queue_depth, err)
        if ctx == ffi.NULL:
            reason = os.strerror(-err[0])
            raise EngineUnavailable(f"Linux AIO io_setup({queue_depth}) failed: {reason}")
        self._ctx = ctx
        self._efd = lib.dp_aio_completion_fd(ctx)
        self._reqs = NativeRequests(queue_depth)
        self._pool = WorkerPool(fd, self._efd, workers)
        self._pool_ops = {Op.DISCARD, Op.WRITE_ZEROES}
        if not lib.dp_aio_has_fdsync(ctx):
            self._pool_ops.add(Op.FLUSH)

    @property
    def completion_fd(self) -> int:
        return self._efd

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        native = []
        for req in reqs:
            if req.op in self._pool_ops:
                self._pool.put(req)
            else:
                native.append(req)
        if not native:
            return
        ios = self._reqs.prepare(native)
        ret = lib.dp_aio_submit(self._ctx, ios, len(native))
        if ret < 0:
            self._reqs.forget(native)
        check_submit(ret, "io_submit")

    def reap(self) -> list[tuple[int, int]]:
        # The C reap drains the eventfd first, so pool completions taken after it are never lost.
        n = lib.dp_aio_reap(self._ctx, self._reqs.cqes, self._reqs.queue_depth)
        done = self._reqs.finish(n)
        done.extend(self._pool.take())
        return done

    def close(self) -> None:
        if self._ctx != ffi.NULL:
            self._pool.close()
            lib.dp_aio_close(self._ctx)
            self._ctx = ffi.NULL

"""csrc/dp_aio.h: one Linux AIO context whose iocbs signal one eventfd."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dataplane.device.c import ffi, lib
from dataplane.device.c.io import IoBatch
from dataplane.errors import EngineUnavailable

if TYPE_CHECKING:
    from dataplane.device.engines.base import IoRequest

__all__ = ["AioContext", "why_unavailable"]


def why_unavailable(queue_depth: int, err: int) -> str:
    return f"Linux AIO io_setup({queue_depth}) failed: {os.strerror(err)}"


class AioContext:
    """``struct dp_aio`` on ``fd``; EngineUnavailable if io_setup fails."""

    def __init__(self, fd: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        ctx = lib.dp_aio_open(fd, queue_depth, err)
        if ctx == ffi.NULL:
            raise EngineUnavailable(why_unavailable(queue_depth, -err[0]))
        self._ctx = ctx
        self.completion_fd: int = lib.dp_aio_completion_fd(ctx)
        # The file takes IOCB_CMD_FDSYNC (probed at open); if not, FLUSH goes elsewhere.
        self.has_fdsync = bool(lib.dp_aio_has_fdsync(ctx))
        self._batch = IoBatch(queue_depth)

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        self._batch.submit(lib.dp_aio_submit, self._ctx, reqs, "io_submit")

    def reap(self) -> list[tuple[int, int]]:
        """Drains the eventfd first: what else signals it after this is never lost."""
        return self._batch.reap(lib.dp_aio_reap, self._ctx)

    def close(self) -> None:
        if self._ctx != ffi.NULL:
            lib.dp_aio_close(self._ctx)
            self._ctx = ffi.NULL

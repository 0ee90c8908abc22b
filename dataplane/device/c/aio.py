"""csrc/dp_aio.h: one Linux AIO context whose iocbs signal one eventfd."""

from __future__ import annotations

import os

from dataplane.device.c import ffi, lib
from dataplane.device.c.io import CQueue
from dataplane.errors import EngineUnavailable

__all__ = ["AioContext", "why_unavailable"]


def why_unavailable(queue_depth: int, err: int) -> str:
    return f"Linux AIO io_setup({queue_depth}) failed: {os.strerror(err)}"


class AioContext(CQueue):
    """``struct dp_aio`` on ``fd``; EngineUnavailable if io_setup fails.

    Its reap drains the eventfd first: what else signals it after that is never lost.
    """

    free_fn = lib.dp_aio_close
    submit_fn = lib.dp_aio_submit
    reap_fn = lib.dp_aio_reap
    what = "io_submit"

    def __init__(self, fd: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        ctx = lib.dp_aio_open(fd, queue_depth, err)
        if ctx == ffi.NULL:
            raise EngineUnavailable(why_unavailable(queue_depth, -err[0]))
        super().__init__(ctx, queue_depth, "dp_aio_open")
        self.completion_fd: int = lib.dp_aio_completion_fd(ctx)
        # The file takes IOCB_CMD_FDSYNC (probed at open); if not, FLUSH goes elsewhere.
        self.has_fdsync = bool(lib.dp_aio_has_fdsync(ctx))

"""csrc/device/dp_aio.h: one Linux AIO context whose iocbs signal one eventfd."""

from __future__ import annotations

import os

from dataplane.device.c import lib
from dataplane.device.c.io import OpenedQueue

__all__ = ["AioContext", "why_unavailable"]


def why_unavailable(queue_depth: int, err: int) -> str:
    return f"Linux AIO io_setup({queue_depth}) failed: {os.strerror(err)}"


class AioContext(OpenedQueue, prefix="dp_aio", what="io_submit"):
    """``struct dp_aio`` on an image fd.

    Its reap drains the eventfd first: what else signals it after that is never lost.
    """

    why_unavailable = staticmethod(why_unavailable)

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        # The file takes IOCB_CMD_FDSYNC (probed at open); if not, FLUSH goes elsewhere.
        self.has_fdsync = bool(lib.dp_aio_has_fdsync(self._ptr))

"""csrc/device/dp_aio.h: one Linux AIO context whose iocbs signal one eventfd."""

from __future__ import annotations

from dataplane.device.c import lib
from dataplane.device.c.io import OpenedQueue
from dataplane.spec.choices import LINUX_AIO

__all__ = ["AioContext"]


class AioContext(OpenedQueue, prefix="dp_aio", what="io_submit"):
    """``struct dp_aio`` on an image fd.

    Its reap drains the eventfd first: what else signals it after that is never lost.
    """

    engine = LINUX_AIO

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        # The file takes IOCB_CMD_FDSYNC (probed at open); if not, FLUSH goes elsewhere.
        self.has_fdsync = bool(lib.dp_aio_has_fdsync(self._ptr))

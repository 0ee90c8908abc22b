"""The io_uring engine (liburing, in csrc/device/dp_uring.c; bound in device/c/uring.py).

One ring per engine; an eventfd registered with ``io_uring_register_eventfd``
is the completion fd.  Submission, short-transfer continuation and reaping are
C; Python only turns ``IoRequest``s into ``struct dp_io`` and back.
"""

from __future__ import annotations

from dataplane.device.c.uring import UringRing
from dataplane.device.engines.base import CQueueEngine
from dataplane.spec.choices import IO_URING


class UringEngine(CQueueEngine):
    name = IO_URING

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth, UringRing(fd, queue_depth))

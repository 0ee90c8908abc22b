"""csrc/dp_uring.h: one io_uring with its completion eventfd."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dataplane.device.c import ffi, lib
from dataplane.device.c.io import IoBatch
from dataplane.errors import EngineUnavailable

if TYPE_CHECKING:
    from dataplane.device.engines.base import IoRequest

# Set-up options (csrc/dp_uring.h); see bench/RESULTS.md for what each one is worth.
OPTIONS: dict[str, int] = {
    "single-issuer": lib.DP_URING_SINGLE_ISSUER,
    "coop-taskrun": lib.DP_URING_COOP_TASKRUN,
    "defer-taskrun": lib.DP_URING_DEFER_TASKRUN,
    "fixed-file": lib.DP_URING_FIXED_FILE,
    "fixed-buffers": lib.DP_URING_FIXED_BUFFERS,
}

__all__ = ["OPTIONS", "UringRing", "why_unavailable"]


def why_unavailable(err: int) -> str:
    """Why io_uring_queue_init failed with ``err``, in one line."""
    reason = os.strerror(err)
    if err == errno.EPERM:
        reason += " (disabled by the kernel.io_uring_disabled sysctl, or by seccomp)"
    elif err == errno.ENOSYS:
        reason += " (kernel built without io_uring, or the syscall is filtered)"
    return f"io_uring_queue_init failed: {reason}"


class UringRing:
    """``struct dp_uring`` on ``fd``; EngineUnavailable if the kernel refuses a ring."""

    def __init__(self, fd: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        ring = lib.dp_uring_open(fd, queue_depth, err)
        if ring == ffi.NULL:
            raise EngineUnavailable(why_unavailable(-err[0]))
        self._ring = ring
        self.completion_fd: int = lib.dp_uring_completion_fd(ring)
        self._batch = IoBatch(queue_depth)

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        self._batch.submit(lib.dp_uring_submit, self._ring, reqs, "io_uring_submit")

    def reap(self) -> list[tuple[int, int]]:
        return self._batch.reap(lib.dp_uring_reap, self._ring)

    def close(self) -> None:
        if self._ring != ffi.NULL:
            lib.dp_uring_close(self._ring)
            self._ring = ffi.NULL

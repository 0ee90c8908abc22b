"""csrc/dp_uring.h: one io_uring with its completion eventfd."""

from __future__ import annotations

import errno
import os

from dataplane.device.c import ffi, lib
from dataplane.device.c.io import CQueue
from dataplane.errors import EngineUnavailable

# Set-up options (csrc/dp_uring.h), as DATAPLANE_URING_OPTIONS names them; see
# bench/RESULTS.md for what each one is worth.
OPTIONS: dict[str, int] = {
    name: getattr(lib, "DP_URING_" + name.upper().replace("-", "_"))
    for name in ("single-issuer", "coop-taskrun", "defer-taskrun", "fixed-file", "fixed-buffers")
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


class UringRing(CQueue):
    """``struct dp_uring`` on ``fd``; EngineUnavailable if the kernel refuses a ring."""

    free_fn = lib.dp_uring_close
    submit_fn = lib.dp_uring_submit
    reap_fn = lib.dp_uring_reap
    what = "io_uring_submit"

    def __init__(self, fd: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        ring = lib.dp_uring_open(fd, queue_depth, err)
        if ring == ffi.NULL:
            raise EngineUnavailable(why_unavailable(-err[0]))
        super().__init__(ring, queue_depth, "dp_uring_open")
        self.completion_fd: int = lib.dp_uring_completion_fd(ring)

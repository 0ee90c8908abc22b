"""csrc/device/dp_uring.h: one io_uring with its completion eventfd."""

from __future__ import annotations

import errno
import os

from dataplane.device.c import lib
from dataplane.device.c.io import OpenedQueue

# Set-up options (csrc/device/dp_uring.h), as DATAPLANE_URING_OPTIONS names them; see
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


class UringRing(OpenedQueue, prefix="dp_uring", what="io_uring_submit"):
    """``struct dp_uring`` on an image fd, with its registered eventfd."""

    @staticmethod
    def why_unavailable(queue_depth: int, err: int) -> str:
        return why_unavailable(err)

"""csrc/device/dp_uring.h: one io_uring with its completion eventfd."""

from __future__ import annotations

from dataplane.device.c import lib
from dataplane.device.c.io import OpenedQueue
from dataplane.spec.choices import IO_URING

# Set-up options (csrc/device/dp_uring.h), as DATAPLANE_URING_OPTIONS names them; see
# bench/RESULTS.md for what each one is worth.
OPTIONS: dict[str, int] = {
    name: getattr(lib, "DP_URING_" + name.upper().replace("-", "_"))
    for name in ("single-issuer", "coop-taskrun", "defer-taskrun", "fixed-file", "fixed-buffers")
}

__all__ = ["OPTIONS", "UringRing"]


class UringRing(OpenedQueue, prefix="dp_uring", what="io_uring_submit"):
    """``struct dp_uring`` on an image fd, with its registered eventfd."""

    engine = IO_URING

"""The io_uring engine (liburing, in csrc/dp_uring.c).

One ring per engine; an eventfd registered with ``io_uring_register_eventfd``
is the completion fd.  Submission, short-transfer continuation and reaping are
C; Python only turns ``IoRequest``s into ``struct dp_io`` and back.

``NativeRequests`` is that conversion, shared with the Linux AIO engine.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from dataplane.clib import ffi, lib
from dataplane.device.engines.base import Engine, IoRequest, Op
from dataplane.errors import EngineUnavailable


class NativeRequests:
    """``struct dp_io`` for each request in flight, kept alive until it is reaped.

    Tokens must be unique among the requests in flight.
    """

    def __init__(self, queue_depth: int) -> None:
        self.queue_depth = queue_depth
        self.cqes = ffi.new("struct dp_cqe[]", queue_depth)
        self._inflight: dict[int, Any] = {}

    def prepare(self, reqs: Sequence[IoRequest]) -> Any:
        """A ``struct dp_io *[]`` for ``reqs``, for the C submit function."""
        ios = []
        for req in reqs:
            iov = req.iov
            length = sum(n for _, n in iov) if req.op <= Op.WRITE else req.length
            flags = (lib.DP_IO_DSYNC if req.dsync else 0) | (lib.DP_IO_UNMAP if req.unmap else 0)
            # Positional, in struct dp_io order: token offset length done op flags
            # iovcnt iov_idx priv iov[].
            fields = (req.token, req.offset, length, 0, req.op, flags, len(iov), 0, ffi.NULL, iov)
            io = ffi.new("struct dp_io *", fields)
            self._inflight[req.token] = io
            ios.append(io)
        return ffi.new("struct dp_io *[]", ios)

    def forget(self, reqs: Sequence[IoRequest]) -> None:
        """Drop requests that the C submit refused as a whole."""
        for req in reqs:
            self._inflight.pop(req.token, None)

    def finish(self, n: int) -> list[tuple[int, int]]:
        """The first ``n`` entries of ``cqes`` as ``(token, result)``, releasing their memory."""
        out = []
        inflight = self._inflight
        for cqe in self.cqes[0:n]:
            token = cqe.token
            del inflight[token]
            out.append((token, cqe.res))
        return out


def check_submit(ret: int, what: str) -> None:
    """A C submit function's -errno (a caller or host failure, not an I/O error) as OSError."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")


class UringEngine(Engine):
    name = "io_uring"

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        err = ffi.new("int *")
        ring = lib.dp_uring_open(fd, queue_depth, err)
        if ring == ffi.NULL:
            raise EngineUnavailable(_why_unavailable(-err[0]))
        self._ring = ring
        self._efd = lib.dp_uring_completion_fd(ring)
        self._reqs = NativeRequests(queue_depth)

    @property
    def completion_fd(self) -> int:
        return self._efd

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        if not reqs:
            return
        ios = self._reqs.prepare(reqs)
        ret = lib.dp_uring_submit(self._ring, ios, len(reqs))
        if ret < 0:
            self._reqs.forget(reqs)
        check_submit(ret, "io_uring_submit")

    def reap(self) -> list[tuple[int, int]]:
        n = lib.dp_uring_reap(self._ring, self._reqs.cqes, self._reqs.queue_depth)
        return self._reqs.finish(n)

    def close(self) -> None:
        if self._ring != ffi.NULL:
            lib.dp_uring_close(self._ring)
            self._ring = ffi.NULL


def _why_unavailable(err: int) -> str:
    reason = os.strerror(err)
    if err == errno.EPERM:
        reason += " (disabled by the kernel.io_uring_disabled sysctl, or by seccomp)"
    elif err == errno.ENOSYS:
        reason += " (kernel built without io_uring, or the syscall is filtered)"
    return f"io_uring_queue_init failed: {reason}"

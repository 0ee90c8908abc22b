"""csrc/device/dp_io.h: ``struct dp_io`` batches for the C engines, fallocate, memzero."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from dataplane.device.c import Owned, check, ffi, lib
from dataplane.errors import EngineUnavailable
from dataplane.spec.choices import IO_URING, LINUX_AIO

if TYPE_CHECKING:
    from dataplane.device.io_request import IoRequest

IO_DSYNC = lib.DP_IO_DSYNC
IO_UNMAP = lib.DP_IO_UNMAP
# Zero ``n`` bytes at a host address (a null-engine read): the C function, bound once.
memzero = lib.dp_memzero

__all__ = [
    "IO_DSYNC",
    "IO_UNMAP",
    "CQueue",
    "IoBatch",
    "OpenedQueue",
    "fallocate",
    "memzero",
    "why_unavailable",
]


def why_unavailable(engine: str, queue_depth: int, err: int) -> str:
    """Why C engine ``engine`` (an --aio name) could not be set up, failing with ``err``,
    in one line: an io_uring or AIO context of its own (``OpenedQueue``) or a
    ``struct dp_engine`` (engine.py) alike."""
    reason = os.strerror(err)
    if engine == IO_URING:
        if err == errno.EPERM:
            reason += " (disabled by the kernel.io_uring_disabled sysctl, or by seccomp)"
        elif err == errno.ENOSYS:
            reason += " (kernel built without io_uring, or the syscall is filtered)"
        return f"io_uring_queue_init failed: {reason}"
    if engine == LINUX_AIO:
        return f"Linux AIO io_setup({queue_depth}) failed: {reason}"
    return f"{engine} engine: {reason}"


def fallocate(fd: int, op: int, unmap: bool, offset: int, length: int) -> int:
    """DISCARD or WRITE_ZEROES as ``fallocate`` (engines/base.py says the mode); 0 or -errno.

    -errno is the request's result (an IOERR status), not an exception.
    """
    mode = lib.dp_fallocate_mode(op, IO_UNMAP if unmap else 0)
    return lib.dp_fallocate(fd, mode, offset, length)


class IoBatch:
    """``struct dp_io`` for each request in flight, kept alive until it is reaped.

    Tokens must be unique among the requests in flight.  ``submit`` hands a
    batch to a C submit function and forgets it again if C refused it whole.
    """

    def __init__(self, queue_depth: int) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue depth {queue_depth} must be at least 1")
        self.queue_depth = queue_depth
        self.cqes = ffi.new("struct dp_cqe[]", queue_depth)
        self._inflight: dict[int, Any] = {}

    def _prepare(self, reqs: Sequence[IoRequest]) -> Any:
        ios = []
        for req in reqs:
            iov = req.iov
            length = sum(n for _, n in iov) if req.op <= lib.DP_OP_WRITE else req.length
            flags = (IO_DSYNC if req.dsync else 0) | (IO_UNMAP if req.unmap else 0)
            # Positional, in struct dp_io order: token offset length done op flags
            # iovcnt iov_idx priv iov[].
            fields = (req.token, req.offset, length, 0, req.op, flags, len(iov), 0, ffi.NULL, iov)
            io = ffi.new("struct dp_io *", fields)
            self._inflight[req.token] = io
            ios.append(io)
        return ffi.new("struct dp_io *[]", ios)

    def submit(self, submit_fn: Any, handle: Any, reqs: Sequence[IoRequest], what: str) -> None:
        """``submit_fn(handle, ios, n)`` for ``reqs``; OSError (a host failure) if it fails."""
        ret = submit_fn(handle, self._prepare(reqs), len(reqs))
        if ret < 0:
            for req in reqs:
                self._inflight.pop(req.token, None)
        check(ret, what)

    def reap(self, reap_fn: Any, handle: Any) -> list[tuple[int, int]]:
        """``reap_fn(handle, cqes, max)``'s completions as ``(token, result)``, memory released."""
        n = check(reap_fn(handle, self.cqes, self.queue_depth), "reap")
        out = []
        inflight = self._inflight
        for cqe in self.cqes[0:n]:
            token = cqe.token
            del inflight[token]
            out.append((token, cqe.res))
        return out


class CQueue(Owned):
    """A C submission queue (an io_uring, an AIO context, a ``struct dp_engine``).

    A subclass names its C module (``prefix="dp_uring"``): its ``_submit``,
    ``_reap``, ``_completion_fd`` and ``_close`` functions, and ``_open`` for
    a queue that opens itself on an image fd (``OpenedQueue``).
    ``submit`` and ``reap`` go through one ``IoBatch``.
    """

    submit_fn: ClassVar[Callable[[Any, Any, int], int]]
    reap_fn: ClassVar[Callable[[Any, Any, int], int]]
    completion_fd_fn: ClassVar[Callable[[Any], int]]
    open_fn: ClassVar[Callable[[int, int, Any], Any] | None]
    what: ClassVar[str]

    def __init_subclass__(cls, prefix: str = "", what: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if prefix:
            cls.free_fn = getattr(lib, f"{prefix}_close")
            cls.submit_fn = getattr(lib, f"{prefix}_submit")
            cls.reap_fn = getattr(lib, f"{prefix}_reap")
            cls.completion_fd_fn = getattr(lib, f"{prefix}_completion_fd")
            cls.open_fn = getattr(lib, f"{prefix}_open", None)
            cls.what = what or f"{prefix}_submit"

    def __init__(self, ptr: Any, queue_depth: int) -> None:
        super().__init__(ptr, type(self).what)
        self.queue_depth = queue_depth
        self._batch = IoBatch(queue_depth)

    @property
    def completion_fd(self) -> int:
        """Readable while completions wait to be reaped."""
        return type(self).completion_fd_fn(self._ptr)

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        if reqs:
            self._batch.submit(type(self).submit_fn, self._ptr, reqs, self.what)

    def reap(self) -> list[tuple[int, int]]:
        return self._batch.reap(type(self).reap_fn, self._ptr)


class OpenedQueue(CQueue):
    """A ``CQueue`` that opens itself on an image fd; EngineUnavailable saying why not.

    ``engine`` names the engine it is (an --aio name), for that message.
    """

    engine: ClassVar[str]

    def __init__(self, fd: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        open_fn = type(self).open_fn
        assert open_fn is not None
        ptr = open_fn(fd, queue_depth, err)
        if ptr == ffi.NULL:
            raise EngineUnavailable(why_unavailable(self.engine, queue_depth, -err[0]))
        super().__init__(ptr, queue_depth)

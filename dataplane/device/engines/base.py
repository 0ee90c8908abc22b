"""The I/O engine interface: one batch in, completions out.

An engine owns the submission side of one dataplane thread.  The thread
hands it a batch of ``IoRequest``s in one ``submit`` call and, when the
engine's ``completion_fd`` becomes readable, collects finished requests with
``reap``.  Engines never see guest rings: only host addresses of buffers that
the blk layer has already checked against guest memory.

Operation semantics on the raw image (all engines alike):

- READ / WRITE: ``preadv`` / ``pwritev`` of ``iov`` at ``offset``.  ``dsync``
  makes a WRITE write-through (RWF_DSYNC).  Short transfers are continued by
  the engine; the result is ``length`` or a negative errno.
- FLUSH: ``fdatasync``.
- DISCARD: ``fallocate(PUNCH_HOLE | KEEP_SIZE)`` over ``[offset, offset+length)``.
- WRITE_ZEROES: ``fallocate(PUNCH_HOLE | KEEP_SIZE)`` when ``unmap`` is set,
  else ``fallocate(ZERO_RANGE | KEEP_SIZE)``.  KEEP_SIZE everywhere: the image
  never grows.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Protocol

from dataplane.device import eventfd
from dataplane.device.io_request import IoRequest


class Engine(ABC):
    """Submits batches of ``IoRequest`` against one open image fd.

    ``completion_fd`` polls readable while completions wait to be reaped.
    """

    name: ClassVar[str]
    completion_fd: int

    def __init__(self, fd: int, queue_depth: int) -> None:
        self.fd = fd
        self.queue_depth = queue_depth

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        """Start every request in ``reqs``, with one kernel call where the engine allows.

        The caller never has more than ``queue_depth`` requests outstanding.
        """
        if reqs:
            self._submit(reqs)

    @abstractmethod
    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        """``submit`` of a batch that is not empty."""

    @abstractmethod
    def reap(self) -> list[tuple[int, int]]:
        """Return ``(token, result)`` for finished requests, without blocking.

        ``result`` is the byte count (``length``) on success, or ``-errno``.
        Also clears ``completion_fd``'s readiness.
        """

    @abstractmethod
    def close(self) -> None:
        """Release kernel resources. Call only with nothing outstanding."""


class CQueueEngine(Engine):
    """An engine of the Python datapath whose submission and reaping are one C queue
    (device/c/io.py ``CQueue``: an io_uring, an AIO context); C continues short
    transfers, Python only turns requests into ``struct dp_io``."""

    def __init__(self, fd: int, queue_depth: int, queue: SubmitQueue) -> None:
        super().__init__(fd, queue_depth)
        self._queue = queue
        self.completion_fd = queue.completion_fd

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        self._queue.submit(reqs)

    def reap(self) -> list[tuple[int, int]]:
        return self._queue.reap()

    def close(self) -> None:
        self._queue.close()


class EventfdEngine(Engine):
    """An engine that completes in Python and signals its own eventfd (null, threads)."""

    def __init__(self, fd: int, queue_depth: int) -> None:
        super().__init__(fd, queue_depth)
        self.completion_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def reap(self) -> list[tuple[int, int]]:
        eventfd.drain(self.completion_fd)  # first: a completion signalled after it is kept
        return self._take()

    @abstractmethod
    def _take(self) -> list[tuple[int, int]]:
        """Every completion so far."""

    def close(self) -> None:
        os.close(self.completion_fd)


class SubmitQueue(Protocol):
    """What ``CQueueEngine`` drives (device/c/io.py ``CQueue``)."""

    completion_fd: int

    def submit(self, reqs: Sequence[IoRequest]) -> None: ...

    def reap(self) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...

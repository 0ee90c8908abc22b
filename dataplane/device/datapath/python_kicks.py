"""The kicks of the Python data path: a kick fd's events, and kicks back on before a sleep.

The twin of csrc/device/dp_loop.c's kick_event, kick_failed and prepare_to_sleep,
mixed into PythonDatapath (python.py), whose state they read.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from dataplane.device import eventfd
from dataplane.errors import GuestError, KickFdFailed


class Kicks:
    """PythonDatapath's kick handling (python.py), on the state it declares here."""

    _epoll: select.epoll
    _by_kick: dict[int, int]
    _queues: dict[int, Any]  # python_queue.Queue
    _pending: set[int]
    rings: dict[int, Any]
    break_ring: Callable[..., None]
    _can_pop: Callable[[], bool]

    def _kick_event(self, index: int, fd: int, events: int) -> None:
        if events & (select.EPOLLHUP | select.EPOLLERR):
            why = "EPOLLERR" if events & select.EPOLLERR else "EPOLLHUP"
            self._kick_failed(index, fd, f"kick fd reported {why}")
            return
        try:
            eventfd.drain(fd)
        except OSError as e:
            self._kick_failed(index, fd, f"kick fd cannot be read: {e.strerror}")
            return
        self._pending.add(index)

    def _kick_failed(self, index: int, fd: int, why: str) -> None:
        """As csrc/device/dp_loop.c kick_failed: stop watching the fd (epoll would report it on
        every wait) and break the queue; the fd stays open until the ring is detached."""
        self._epoll.unregister(fd)
        del self._by_kick[fd]
        if not self._queues[index].broken:
            self.break_ring(self.rings[index], KickFdFailed(why))

    def _prepare_to_sleep(self) -> bool:
        """Kicks back on for the rings that had them off, each looked at once more.

        True: work arrived meanwhile (it would send no kick), do not sleep.
        """
        found = False
        for index, q in self._queues.items():
            if not q.kicks_off:
                continue
            q.kicks_off = False
            if q.vq is None or q.broken:
                continue
            try:
                more = q.vq.enable_notification()
            except GuestError as e:
                self.break_ring(self.rings[index], e)
                found = True
                continue
            if more and not q.stopping:
                self._pending.add(index)
                found = found or self._can_pop()
        return found

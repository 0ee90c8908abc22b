"""The data path in Python: the reference that csrc/dp_thread.c follows step by step.

One blocking wait (epoll) covers the kick eventfds, the engine's completion
fd and the control eventfd.  Each pass:

1. reap engine completions: status byte, ``add_used``;
2. pop every available chain from kicked rings, parse, and submit the whole
   batch to the engine in one call (requests with a known status complete
   at once);
3. per ring that completed anything: publish ``used->idx`` and signal the
   call eventfd once, if ``should_notify`` says so.

A ring never has more requests at the engine than the engine's queue depth
allows: past it, popping waits for completions (a guest can publish new
requests before old ones complete).
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.blk import BlkRequest, Disk, complete_request, parse_request
from dataplane.datapath import Datapath, Ring, drain
from dataplane.engines.base import Engine, IoRequest
from dataplane.errors import GuestError
from dataplane.virtqueue import RingAddrs, SplitQueue


@dataclass(slots=True)
class _Queue:
    vq: SplitQueue | None = None
    inflight: int = 0
    broken: bool = False
    stopping: bool = False
    needs_notify: bool = False


class PythonDatapath(Datapath):
    """The reference data path over a Python ``Engine``."""

    kind = "python"

    def __init__(
        self, disk: Disk, engine: Engine, queues: Iterable[int], log: logging.Logger
    ) -> None:
        super().__init__(disk, queues, log)
        self.engine = engine
        self.engine_name = engine.name
        self._queues = {i: _Queue() for i in self.rings}
        self._by_kick: dict[int, int] = {}
        self._pending: set[int] = set()
        self._inflight: dict[int, tuple[int, BlkRequest]] = {}
        self._next_token = 1
        self._paused = False
        self._epoll = select.epoll()
        self._epoll.register(self.ctl_fd, select.EPOLLIN)
        self._epoll.register(engine.completion_fd, select.EPOLLIN)

    # -- the pass -------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        wait = -1 if timeout is None else timeout
        if self._pending and self._can_pop():
            wait = 0
        for fd, _ in self._epoll.poll(wait):
            if fd == self.ctl_fd:
                drain(fd)
            elif fd in self._by_kick:
                drain(fd)
                self._pending.add(self._by_kick[fd])
        touched: set[int] = set()
        for token, result in self.engine.reap():
            index, req = self._inflight.pop(token)
            self._finish(index, req, result)
            touched.add(index)
        if not self._paused:
            batch: list[IoRequest] = []
            for index in sorted(self._pending):
                self._pop_queue(index, batch, touched)
            if batch:
                self.engine.submit(batch)
        for index in touched:
            self._notify(index)

    def _can_pop(self) -> bool:
        return not self._paused and len(self._inflight) < self.engine.queue_depth

    def _pop_queue(self, index: int, batch: list[IoRequest], touched: set[int]) -> None:
        q = self._queues[index]
        vq = q.vq
        if vq is None or q.broken or q.stopping:
            self._pending.discard(index)
            return
        budget = vq.num
        try:
            while budget:
                if len(self._inflight) >= self.engine.queue_depth:
                    return  # the engine is full: stay pending until completions make room
                chain = vq.pop()
                if chain is None:
                    if vq.enable_notification():
                        continue
                    self._pending.discard(index)
                    return
                budget -= 1
                req = parse_request(chain, self.disk)
                q.inflight += 1
                if req.io is None:
                    self._finish(index, req, None)
                    touched.add(index)
                else:
                    req.io.token = self._next_token
                    self._inflight[self._next_token] = (index, req)
                    self._next_token += 1
                    batch.append(req.io)
        except GuestError as e:
            self.break_ring(self.rings[index], e)
        # Budget spent: stay pending so other rings get a turn first.

    def _finish(self, index: int, req: BlkRequest, result: int | None) -> None:
        q = self._queues[index]
        q.inflight -= 1
        if q.broken or q.vq is None:
            # A broken ring gets no more guest writes; just release the request.
            if req.bounce is not None:
                req.bounce.close()
            return
        complete_request(req, result)
        q.vq.add_used(req.head, req.used_len)
        q.needs_notify = True

    def _notify(self, index: int) -> None:
        q = self._queues[index]
        if not q.needs_notify or q.vq is None or q.broken:
            return
        q.needs_notify = False
        q.vq.flush_used()
        call_fd = self.rings[index].call_fd
        if q.vq.should_notify() and call_fd is not None:
            os.eventfd_write(call_fd, 1)

    # -- state ------------------------------------------------------------------------

    def inflight(self, index: int | None = None) -> int:
        if index is None:
            return len(self._inflight)
        return self._queues[index].inflight

    def busy(self) -> bool:
        return bool(self._inflight) or (bool(self._pending) and self._can_pop())

    def set_paused(self, paused: bool) -> None:
        self._paused = paused

    def stop_ring(self, index: int) -> None:
        self._queues[index].stopping = True
        self._pending.discard(index)

    def is_broken(self, index: int) -> bool:
        return self._queues[index].broken

    def last_avail_idx(self, index: int) -> int | None:
        vq = self._queues[index].vq
        return None if vq is None else vq.last_avail_idx

    # -- ring lifecycle hooks -----------------------------------------------------------

    def _ring_started(self, ring: Ring) -> None:
        assert ring.kick_fd is not None
        self._queues[ring.index] = _Queue()
        self._by_kick[ring.kick_fd] = ring.index
        self._epoll.register(ring.kick_fd, select.EPOLLIN)
        self._pending.add(ring.index)

    def _ring_forgotten(self, ring: Ring) -> None:
        if ring.kick_fd is not None:
            self._epoll.unregister(ring.kick_fd)
            del self._by_kick[ring.kick_fd]
        q = self._queues[ring.index]
        q.vq, q.stopping = None, False
        self._pending.discard(ring.index)

    def _attach_ring(self, ring: Ring, addrs: RingAddrs, last_avail_idx: int) -> None:
        assert ring.setup is not None and self.mem is not None
        self._queues[ring.index].vq = SplitQueue(
            ring.setup.num,
            addrs,
            self.mem,
            last_avail_idx=last_avail_idx,
            event_idx=ring.setup.event_idx,
            indirect=ring.setup.indirect,
            max_indirect=self.disk.queue_size,
        )

    def _unattach_ring(self, ring: Ring) -> None:
        self._queues[ring.index].vq = None

    def _notifiers_changed(self, ring: Ring) -> None:
        pass  # read from the ring on use

    def _memory_changed(self) -> None:
        pass  # SplitQueue holds the GuestMemory it was attached with

    def _mark_broken(self, ring: Ring) -> None:
        self._queues[ring.index].broken = True
        self._pending.discard(ring.index)
        if ring.err_fd is not None:
            os.eventfd_write(ring.err_fd, 1)

    def close(self) -> None:
        self._epoll.close()
        self._close_ctl()
        self.engine.close()

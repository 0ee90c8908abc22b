"""The data path in Python: the reference that csrc/device/dp_loop.c follows step by step.

The life of a request, and nothing else: kick, pop (direct, indirect, EVENT_IDX),
parse, submit to the image, complete, publish used, notify, told along the way.
The production features (I/O limits, bounce memory within a budget, inflight
tracking, dirty logging) are the C datapath's alone; ``--datapath python``
refuses their keys.

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

Kicks are off while the thread works on a ring (``disable_notification`` at
its first pop) and come back on only before the thread sleeps, with a last
look at the ring (``enable_notification``): a busy ring costs no kicks.

Along the way it keeps the stats, records the trace and narrates traced
requests (python_instruments.py), at the same points as the C loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass, replace
from time import monotonic_ns

from dataplane.device import eventfd, narrate
from dataplane.device.blk import BlkRequest, complete_request, parse_request, release_request
from dataplane.device.c.thread import BATCH_MAX, BATCH_WAKE
from dataplane.device.datapath.base import Datapath, Ring, RingSetup, ring_addrs
from dataplane.device.datapath.python_instruments import LoopInstruments
from dataplane.device.disk import Disk
from dataplane.device.engines.base import Engine
from dataplane.device.instrument import Instruments
from dataplane.device.io_request import IoRequest
from dataplane.device.memory import GuestMemory
from dataplane.device.stats import summary
from dataplane.device.virtqueue import SplitQueue
from dataplane.errors import GuestError, KickFdFailed

IRQ_DRIVER_PASSES = 8  # as csrc/device/dp_loop.h


@dataclass(slots=True)
class Queue:
    """One ring's state on the thread (csrc/device/dp_loop.h struct dp_queue)."""

    vq: SplitQueue | None = None  # None: not attached to guest memory
    inflight: int = 0
    broken: bool = False
    stopping: bool = False
    kicks_off: bool = False  # disabled while we work on the ring, back on before we sleep
    irq_driver: int = 0  # notifies ago that one was due, counting down: the driver sleeps
    needs_notify: bool = False
    trace_flush: bool = False  # a traced request completed: narrate the next notify
    call_full: bool = False  # a notification was dropped on a full call eventfd (logged once)


class PythonDatapath(Datapath):
    """The reference data path over a Python ``Engine``."""

    kind = "python"

    def __init__(
        self,
        disk: Disk,
        engine: Engine,
        queues: Iterable[int],
        log: logging.Logger,
        instruments: Instruments | None = None,
    ) -> None:
        # Its own copy: the write cache changes only through set_writeback (a command).
        super().__init__(replace(disk), queues, log)
        self.engine = engine
        self.engine_name = engine.name
        self._queues = {i: Queue() for i in self.rings}
        self._by_kick: dict[int, int] = {}
        self._pending: set[int] = set()
        self._inflight: dict[int, tuple[int, BlkRequest]] = {}
        self._next_token = 1
        self._paused = False
        self._epoll = select.epoll()
        self._epoll.register(self.ctl_fd, select.EPOLLIN)
        self._epoll.register(engine.completion_fd, select.EPOLLIN)
        rec, budget = (instruments.rec, instruments.budget) if instruments else (None, None)
        self._inst = LoopInstruments(self.rings, log, rec, budget)

    # -- the pass -------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        wait = -1 if timeout is None else timeout
        if self._pending and self._can_pop():
            wait = 0
        if wait != 0 and self._prepare_to_sleep():
            wait = 0
        for fd, events in self._epoll.poll(wait):
            if fd == self.ctl_fd:
                eventfd.drain(fd)
            elif fd in self._by_kick:
                self._kick_event(self._by_kick[fd], fd, events)
        inst = self._inst
        inst.woke()
        touched: set[int] = set()
        self._reap(touched)
        batch: list[IoRequest] = []
        if not self._paused:
            for index in sorted(self._pending):
                self._pop_queue(index, batch, touched)
        batched = [self._inflight[io.token] for io in batch]
        inst.submitting([req for _, req in batched])
        if batch:
            self.engine.submit(batch)
            inst.submitted(batched)
            self._reap(touched)  # what the engine finished at once completes in this pass
        for index in sorted(touched):
            self._notify(index)
        inst.after_notify()
        inst.end_pass()

    def _reap(self, touched: set[int]) -> None:
        for token, result in self.engine.reap():
            index, req = self._inflight.pop(token)
            self._finish(index, req, result)
            touched.add(index)

    def _can_pop(self) -> bool:
        return not self._paused and len(self._inflight) < self.engine.queue_depth

    def _pop_queue(self, index: int, batch: list[IoRequest], touched: set[int]) -> None:
        q = self._queues[index]
        vq = q.vq
        if vq is None or q.broken or q.stopping:
            self._pending.discard(index)
            return
        # Per ring and pass, as csrc/device/dp_thread.h says: fewer for an interrupt-driven driver.
        budget = min(vq.num, BATCH_WAKE if q.irq_driver else BATCH_MAX)
        inst = self._inst
        t_pop = 0  # one clock read per ring per pass, as in csrc/device/dp_loop.c
        try:
            while budget:
                if not self._can_pop():
                    return  # the engine is full: stay pending
                vq.events = narrator = inst.narrator()
                try:
                    chain = vq.pop()
                finally:
                    vq.events = None
                    seq = 0 if narrator is None else inst.number(index, narrator)  # tracing only
                if chain is None:
                    # Empty: kicks come back on only before the thread sleeps.
                    self._pending.discard(index)
                    return
                budget -= 1
                t_pop = t_pop or monotonic_ns()
                req = parse_request(chain, self.disk)
                if not q.kicks_off:
                    # A request in hand: no kicks while we work (a bad ring gets no write at all).
                    vq.disable_notification()
                    q.kicks_off = True
                req.t_pop, req.trace_seq = t_pop, seq
                inst.popped(index, req)
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
            release_request(req)
            self._inst.released(index, req)
            return
        at = q.vq.used_idx
        complete_request(req, result)
        q.vq.add_used(req.head, req.used_len)
        q.needs_notify = True
        if self._inst.completed(index, req, result, at):
            q.trace_flush = True

    def _notify(self, index: int) -> None:
        q = self._queues[index]
        if not q.needs_notify or q.vq is None or q.broken:
            return
        q.needs_notify = False
        self._inst.publishing(index)
        q.vq.flush_used()
        call_fd = self.rings[index].call_fd
        narrator = narrate.RingNarrator() if q.trace_flush else None
        q.trace_flush = False
        q.vq.events = narrator
        try:
            need = q.vq.should_notify()
        finally:
            q.vq.events = None
        self._inst.notify_decided(index)
        # Interrupt-driven (a notify was due within the last few): see _pop_queue.
        q.irq_driver = IRQ_DRIVER_PASSES if need else max(0, q.irq_driver - 1)
        if need and call_fd is not None:
            counters = self._inst.counters[index]
            if eventfd.signal(call_fd) == 0:
                counters.notifies += 1
            else:
                counters.notifies_dropped += 1
                if not q.call_full:
                    q.call_full = True
                    self.log_call_full(index)
        self._inst.notified(index, narrator, need, call_fd is not None)

    # -- kicks (csrc/device/dp_loop.c kick_event, kick_failed, prepare_to_sleep) -------

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
        """Stop watching the fd (epoll would report it on every wait) and break the queue;
        the fd stays open until the ring is detached."""
        self._unwatch_kick(fd)
        if not self._queues[index].broken:
            self.break_ring(self.rings[index], KickFdFailed(why))

    def _unwatch_kick(self, fd: int | None) -> None:
        if fd is not None and fd in self._by_kick:
            self._epoll.unregister(fd)
            del self._by_kick[fd]

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

    # -- rings ------------------------------------------------------------------------

    def start_ring(self, setup: RingSetup) -> None:
        assert not setup.inflight_addr, "the Python datapath tracks no inflight area"
        ring = self.rings[setup.index]
        self.detach_ring(setup.index)
        ring.start(setup)
        assert ring.kick_fd is not None
        self._queues[ring.index] = Queue()
        self._by_kick[ring.kick_fd] = ring.index
        self._epoll.register(ring.kick_fd, select.EPOLLIN)
        self._pending.add(ring.index)
        self._attach(ring)

    def _attach(self, ring: Ring) -> None:
        s = ring.setup
        assert s is not None
        if self.mem is None:
            self.break_ring(ring, GuestError("ring started before any guest memory was set"))
            return
        q = self._queues[ring.index]
        last = s.last_avail_idx if q.vq is None else q.vq.last_avail_idx
        try:
            q.vq = SplitQueue(
                s.num,
                ring_addrs(self.mem, s),
                self.mem,
                last_avail_idx=last,
                event_idx=s.event_idx,
                indirect=s.indirect,
                max_indirect=self.disk.max_indirect,
            )
        except GuestError as e:
            self.break_ring(ring, e)

    def stop_ring(self, index: int) -> None:
        self._queues[index].stopping = True
        self._pending.discard(index)

    def detach_ring(self, index: int) -> int | None:
        ring = self.rings[index]
        last = self.last_avail_idx(index)
        self._unwatch_kick(ring.kick_fd)
        q = self._queues[index]
        q.vq, q.stopping = None, False
        self._pending.discard(index)
        return ring.detach(last)

    def set_notifier(self, index: int, which: str, fd: int | None) -> None:
        self.rings[index].set_notifier(which, fd)  # read from the ring on use

    def signal_call(self, index: int) -> None:
        # As dp_thread_signal_call: a full or blocking fd never blocks us.
        fd = self.rings[index].call_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                eventfd.signal(fd)

    def break_ring(self, ring: Ring, err: GuestError) -> None:
        self._queues[ring.index].broken = True
        self._pending.discard(ring.index)
        if ring.err_fd is not None:
            eventfd.signal(ring.err_fd)  # a full err eventfd: the log line says it anyway
        self.log_broken(ring, err)

    def is_broken(self, index: int) -> bool:
        return self._queues[index].broken

    def last_avail_idx(self, index: int) -> int | None:
        vq = self._queues[index].vq
        return None if vq is None else vq.last_avail_idx

    def set_memory(self, mem: GuestMemory | None) -> None:
        # A SplitQueue holds the GuestMemory it was attached with: attach again.
        self.mem = mem
        for ring in self.rings.values():
            if ring.setup is None or self.is_broken(ring.index):
                continue
            if mem is None:
                self._queues[ring.index].vq = None
            else:
                self._attach(ring)

    # -- the device's state -------------------------------------------------------------

    def set_writeback(self, writeback: bool) -> None:
        self.disk.writeback = writeback

    def set_capacity(self, sectors: int) -> None:
        self.disk.sectors = sectors

    def set_paused(self, paused: bool) -> None:
        self._paused = paused

    def inflight(self, index: int | None = None) -> int:
        if index is None:
            return len(self._inflight)
        return self._queues[index].inflight

    def busy(self) -> bool:
        return bool(self._inflight) or (bool(self._pending) and self._can_pop())

    def stats_snapshot(self) -> dict:
        return self._inst.snapshot(self.kind, {i: q.inflight for i, q in self._queues.items()})

    def close(self) -> None:
        self.log.info("%s: %s", self.label, summary(self.stats_snapshot()))
        self._inst.close()
        self._epoll.close()
        os.close(self.ctl_fd)
        self.engine.close()

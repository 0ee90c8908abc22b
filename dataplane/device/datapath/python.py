"""The data path in Python: the reference that csrc/device/dp_loop.c follows step by step.

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
requests before old ones complete).  Likewise a request whose bounce block
does not fit the thread's bounce memory waits, and popping with it; and so
does a request its device's limiter holds back (throttle.py), until its wait is over.

Kicks are off while the thread works on a ring (``disable_notification`` at
its first pop) and come back on only before the thread sleeps, with a last
look at the ring (``enable_notification``): a busy ring costs no kicks.

Along the way it keeps the stats, records the trace and narrates traced
requests (python_instruments.py), at the same points as the C loop.
"""

from __future__ import annotations

import contextlib
import logging
import select
from collections.abc import Iterable
from dataclasses import replace
from time import monotonic_ns

from dataplane.device import eventfd, narrate
from dataplane.device.blk import (
    BlkRequest,
    Disk,
    attach_bounce,
    complete_request,
    parse_request,
    release_request,
)
from dataplane.device.bounce import BouncePool
from dataplane.device.c.thread import BATCH_MAX, BATCH_WAKE
from dataplane.device.datapath.base import Datapath, Ring, drain, log_call_full
from dataplane.device.datapath.python_instruments import LoopInstruments
from dataplane.device.datapath.python_kicks import Kicks
from dataplane.device.datapath.python_queue import Queue
from dataplane.device.datapath.throttle import Throttle
from dataplane.device.engines.base import Engine, IoRequest
from dataplane.device.inflight import Recovery
from dataplane.device.instrument import Instruments
from dataplane.device.limiter import Limiter
from dataplane.device.stats import summary
from dataplane.device.virtqueue import SplitQueue
from dataplane.errors import GuestError
from dataplane.spec.ring import RingAddrs

IRQ_DRIVER_PASSES = 8  # as csrc/device/dp_loop.h


class PythonDatapath(Kicks, Datapath):
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
        super().__init__(replace(disk), queues, log, instruments)
        self.engine = engine
        self.engine_name = engine.name
        self._queues = {i: Queue() for i in self.rings}
        self._by_kick: dict[int, int] = {}
        self._pending: set[int] = set()
        self._inflight: dict[int, tuple[int, BlkRequest]] = {}
        self._next_token = 1
        self._paused = False
        self._bounce = BouncePool(disk.bounce_bytes) if disk.align > 1 else None
        self._bounce_wait: tuple[int, BlkRequest] | None = None  # popping waits with it
        self._bounce_waits = 0
        self._throttle = Throttle()
        self._epoll = select.epoll()
        self._epoll.register(self.ctl_fd, select.EPOLLIN)
        self._epoll.register(engine.completion_fd, select.EPOLLIN)
        self._inst = LoopInstruments(self.rings, log, instruments)

    # -- the pass -------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        wait = -1 if timeout is None else timeout
        if (self._pending and self._can_pop()) or self._bounce_wait is not None:
            wait = 0
        if wait != 0 and self._prepare_to_sleep():
            wait = 0
        wait = self._throttle.timeout(wait, monotonic_ns()) if self._throttle.held else wait
        for fd, events in self._epoll.poll(wait):
            if fd == self.ctl_fd:
                drain(fd)
            elif fd in self._by_kick:
                self._kick_event(self._by_kick[fd], fd, events)
        inst = self._inst
        inst.woke()
        touched: set[int] = set()
        self._reap(touched)
        batch: list[IoRequest] = []
        self._resume_bounce_wait(batch, touched)  # even paused: it holds guest memory
        self._resume_limit_wait(batch, touched)  # likewise
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
        return (
            not self._paused
            and len(self._inflight) < self.engine.queue_depth
            and self._bounce_wait is None
            and self._throttle.held is None
        )

    def _resume_bounce_wait(self, batch: list[IoRequest], touched: set[int]) -> None:
        """The request that waits for bounce memory: into the batch once it has some."""
        if self._bounce_wait is None:
            return
        index, req = self._bounce_wait
        q = self._queues[index]
        if q.broken or q.vq is None:
            self._bounce_wait = None
            self._finish(index, req, None)  # releases it without touching guest memory
            touched.add(index)
        elif attach_bounce(req, self._bounce_pool()):
            self._bounce_wait = None
            self._add_to_batch(index, req, batch)

    def _resume_limit_wait(self, batch: list[IoRequest], touched: set[int]) -> None:
        """The request the limiter holds: on its way once its wait is over."""
        th = self._throttle
        if th.held is None:
            return
        index, req = th.held
        q = self._queues[index]
        if q.broken or q.vq is None:
            self._finish(*th.release(), None)  # releases it without touching guest memory
            touched.add(index)
        elif th.due(self._inst.t_wake):
            self._start_io(*th.release(), batch)

    def _start_io(self, index: int, req: BlkRequest, batch: list[IoRequest]) -> None:
        """To the batch, unless it waits for bounce memory (then popping waits with it)."""
        if req.bounce_len and not attach_bounce(req, self._bounce_pool()):
            self._bounce_wait = (index, req)
            self._bounce_waits += 1
        else:
            self._add_to_batch(index, req, batch)

    def _bounce_pool(self) -> BouncePool:
        assert self._bounce is not None
        return self._bounce

    def _add_to_batch(self, index: int, req: BlkRequest, batch: list[IoRequest]) -> None:
        assert req.io is not None
        req.io.token = self._next_token
        self._inflight[self._next_token] = (index, req)
        self._next_token += 1
        batch.append(req.io)

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
                    return  # engine full, or a request waits for bounce memory: stay pending
                vq.events = narrator = inst.narrator()
                try:
                    chain = q.next_chain(vq)
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
                elif self._throttle.hold(index, req, inst.t_wake):
                    return  # stays pending: popping goes on once the limiter lets it go
                else:
                    self._start_io(index, req, batch)
                    if self._bounce_wait is not None:
                        return  # stays pending: popping goes on once it got its memory
        except GuestError as e:
            self.break_ring(self.rings[index], e)
        # Budget spent: stay pending so other rings get a turn first.

    def _finish(self, index: int, req: BlkRequest, result: int | None) -> None:
        q = self._queues[index]
        q.inflight -= 1
        if q.broken or q.vq is None:
            # A broken ring gets no more guest writes; just release the request.
            release_request(req, self._bounce)
            self._inst.released(index, req)
            return
        at = q.vq.used_idx
        complete_request(req, result, self._bounce)
        q.vq.add_used(req.head, req.used_len)
        if q.infl is not None:
            q.infl.pre_put(req.head)  # linked into the last batch before used->idx goes out
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
        if q.infl is not None:
            q.infl.post_put(q.vq.used_idx)  # only after used->idx is published
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
                    log_call_full(self.log, self.label, index)
        self._inst.notified(index, narrator, need, call_fd is not None)

    # -- state ------------------------------------------------------------------------

    def inflight(self, index: int | None = None) -> int:
        if index is None:
            held = (self._bounce_wait is not None) + (self._throttle.held is not None)
            return len(self._inflight) + held
        return self._queues[index].inflight

    def busy(self) -> bool:
        return (
            bool(self._inflight)
            or self._bounce_wait is not None
            or self._throttle.held is not None
            or (bool(self._pending) and self._can_pop())
        )

    def set_writeback(self, writeback: bool) -> None:
        self.disk.writeback = writeback

    def set_paused(self, paused: bool) -> None:
        self._paused = paused

    def set_capacity(self, sectors: int) -> None:
        self.disk.sectors = sectors

    def set_limiter(self, limiter: Limiter | None) -> None:
        self._throttle.limiter = limiter

    def bounce_usage(self) -> tuple[int, int]:
        return (self._bounce.peak if self._bounce else 0), self._bounce_waits

    def stop_ring(self, index: int) -> None:
        self._queues[index].stopping = True
        self._pending.discard(index)

    def is_broken(self, index: int) -> bool:
        return self._queues[index].broken

    def last_avail_idx(self, index: int) -> int | None:
        vq = self._queues[index].vq
        return None if vq is None else vq.last_avail_idx

    def stats_snapshot(self) -> dict:
        return self._inst.snapshot(self.kind, {i: q.inflight for i, q in self._queues.items()})

    # -- ring lifecycle hooks -----------------------------------------------------------

    def _ring_started(self, ring: Ring) -> None:
        assert ring.kick_fd is not None
        self._queues[ring.index] = Queue()
        self._by_kick[ring.kick_fd] = ring.index
        self._epoll.register(ring.kick_fd, select.EPOLLIN)
        self._pending.add(ring.index)

    def _ring_forgotten(self, ring: Ring) -> None:
        if ring.kick_fd is not None and ring.kick_fd in self._by_kick:
            self._epoll.unregister(ring.kick_fd)
            del self._by_kick[ring.kick_fd]
        q = self._queues[ring.index]
        q.vq, q.stopping, q.infl = None, False, None
        q.resubmit.clear()
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
            max_indirect=self.disk.max_indirect,
        )

    def _start_inflight(self, ring: Ring) -> Recovery:
        assert ring.setup is not None
        rec = self._queues[ring.index].start_inflight(ring.setup)
        self._pending.add(ring.index)
        return rec

    def _unattach_ring(self, ring: Ring) -> None:
        self._queues[ring.index].vq = None

    def _notifiers_changed(self, ring: Ring) -> None:
        pass  # read from the ring on use

    def signal_call(self, index: int) -> None:
        # As dp_thread_signal_call: a full or blocking fd never blocks us.
        fd = self.rings[index].call_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                eventfd.signal(fd)

    def _memory_changed(self) -> None:
        pass  # SplitQueue holds the GuestMemory it was attached with

    def _mark_broken(self, ring: Ring) -> None:
        self._queues[ring.index].broken = True
        self._pending.discard(ring.index)
        if ring.err_fd is not None:
            eventfd.signal(ring.err_fd)  # a full err eventfd: the log line says it anyway

    def close(self) -> None:
        self.log.info("%s: %s", self.label, summary(self.stats_snapshot()))
        self._inst.close()
        self._epoll.close()
        self._close_ctl()
        self.engine.close()
        if self._bounce is not None:
            self._bounce.close()

"""The Python loop's stats, ``--record`` and ``--trace-requests``, at the C loop's points.

``PythonDatapath`` (python.py) calls one method per step of its pass; this
keeps what csrc/device/dp_loop.c keeps at the same steps: the counters and
histograms of device/stats.py, the record buffer of csrc/device/dp_rec.c, and the
narrative of narrate.py, which the loop tells here (the ring only reports
what it read, to a ``narrate.RingNarrator``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import monotonic_ns

from dataplane.device import narrate
from dataplane.device.blk import BlkRequest
from dataplane.device.c import stats as cstats
from dataplane.device.c.rec import RecordBuffer, Recorder, TraceBudget
from dataplane.device.io_request import Op
from dataplane.device.stats import (
    BUCKETS,
    LAT_LAYERS,
    bucket,
    queue_snapshot,
    snapshot,
)
from dataplane.spec.blk import SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP
from dataplane.spec.kinds import kind_of

KICK_POP, POP_SUBMIT, SUBMIT_COMPLETE, COMPLETE_USED, USED_NOTIFY = range(len(LAT_LAYERS))


class LoopInstruments:
    """One Python datapath's instruments; its thread alone writes them."""

    def __init__(
        self,
        queues: Iterable[int],
        log: logging.Logger,
        rec: Recorder | None,
        budget: TraceBudget | None,
    ) -> None:
        """``rec`` and ``budget``: the device's recorder and trace budget (instrument.py), if
        it records or traces."""
        # Per queue for the thread's life (a ring restart keeps them), and per pass.
        self.counters = {i: cstats.new_queue_counters() for i in queues}
        self.batch_hist = [0] * BUCKETS
        self.batch_sum = 0
        self.t_wake = self._t_submit = self._t_reap = self._t_used = 0
        self.npopped = 0
        # This pass's completions by queue, by the time they were reaped (csrc/device/dp_loop.c).
        self._done: dict[int, dict[int, int]] = {}
        self._recbuf: RecordBuffer | None = None
        if rec is not None:
            self._recbuf = RecordBuffer(rec)
        self._budget = budget
        self._narrative = narrate.Narrative(log)

    # -- the pass, step by step -------------------------------------------------------

    def woke(self) -> None:
        self.t_wake = self._t_reap = monotonic_ns()
        self.npopped = 0

    def narrator(self) -> narrate.RingNarrator | None:
        """A narrator for the next pop while requests are still traced, else None."""
        return narrate.RingNarrator() if self._budget is not None else None

    def number(self, index: int, narrator: narrate.RingNarrator | None) -> int:
        """A narrated pop: its request number, or 0 (lines dropped) once the budget ran out."""
        if narrator is None or not narrator.lines or self._budget is None:
            return 0
        seq = self._budget.take()
        if seq:
            self._narrative.commit(narrate.request_prefix(seq, index), narrator.lines)
        else:
            self._budget = None
        return seq

    def popped(self, index: int, req: BlkRequest) -> None:
        """A parsed request (``t_pop`` and ``trace_seq`` set): counted, recorded, told."""
        self.npopped += 1
        self.counters[index].requests[kind_of(req.rtype)] += 1
        req.t_wake = self.t_wake
        if self._recbuf is not None and req.io is not None:
            io = req.io
            self._recbuf.add(req.t_pop, index, int(io.op), io.offset // SECTOR_SIZE, io.length)
        if req.trace_seq:
            self._narrative.commit(
                narrate.request_prefix(req.trace_seq, index), narrate.parsed(req)
            )

    def submitting(self, reqs: list[BlkRequest]) -> None:
        """The pass's batch (maybe empty) is about to go to the engine."""
        if not (self.npopped or reqs):
            return
        self._t_submit = t = monotonic_ns()
        if self.npopped:
            self.batch_hist[bucket(self.npopped)] += 1
            self.batch_sum += self.npopped
        for req in reqs:
            req.t_submit = t

    def submitted(self, batch: list[tuple[int, BlkRequest]]) -> None:
        """The batch went to the engine; what it finished in the call is reaped at this time."""
        self._t_reap = monotonic_ns()
        for index, req in batch:
            if req.trace_seq:
                self._narrative.commit(
                    narrate.request_prefix(req.trace_seq, index), [narrate.submitted(len(batch))]
                )

    def released(self, index: int, req: BlkRequest) -> None:
        if req.trace_seq:
            self._narrative.commit(
                narrate.request_prefix(req.trace_seq, index), [narrate.released()]
            )

    def completed(self, index: int, req: BlkRequest, result: int | None, used_at: int) -> bool:
        """A request completed into used slot ``used_at``; True if it is traced."""
        c = self.counters[index]
        c.completed += 1
        if req.status == VIRTIO_BLK_S_OK and req.io is not None:
            if req.io.op == Op.READ:
                c.bytes_read += req.io.length
            elif req.io.op == Op.WRITE:
                c.bytes_written += req.io.length
        elif req.status == VIRTIO_BLK_S_IOERR:
            c.ioerr += 1
        elif req.status == VIRTIO_BLK_S_UNSUPP:
            c.unsupp += 1
        # No I/O: complete when parsed; pop->submit and submit->complete are 0.
        t_submit = req.t_submit if result is not None else req.t_pop
        t_reap = self._t_reap if result is not None else req.t_pop
        cstats.layer_add(c, KICK_POP, req.t_pop - req.t_wake)
        cstats.layer_add(c, POP_SUBMIT, t_submit - req.t_pop)
        cstats.layer_add(c, SUBMIT_COMPLETE, t_reap - t_submit)
        c.layers.pop_at = (c.layers.pop_at + req.t_pop) % 2**64
        done = self._done.setdefault(index, {})
        done[t_reap] = done.get(t_reap, 0) + 1
        if not req.trace_seq:
            return False
        self._narrative.commit(
            narrate.request_prefix(req.trace_seq, index),
            [narrate.completed(req, result, used_at)],
        )
        return True

    def publishing(self, index: int) -> None:
        """Ring ``index`` is about to publish used->idx: complete -> used of its completions
        (as csrc/device/dp_loop.c account_used)."""
        done = self._done.get(index)
        if not done:
            return
        self._t_used = t = monotonic_ns()
        for t_reap, n in done.items():
            cstats.layer_add(self.counters[index], COMPLETE_USED, t - t_reap, n)

    def notify_decided(self, index: int) -> None:
        """Ring ``index`` decided whether to notify; the call eventfd write (if due) follows:
        used -> notify (as csrc/device/dp_loop.c account_notified)."""
        done = self._done.pop(index, None)
        if not done:
            return
        t = monotonic_ns()
        c, n = self.counters[index], sum(done.values())
        cstats.layer_add(c, USED_NOTIFY, t - self._t_used, n)
        c.layers.notify_at = (c.layers.notify_at + t * n) % 2**64

    def after_notify(self) -> None:
        """The pass's notifications are done; a ring that broke in it published nothing."""
        self._done.clear()

    def notified(
        self, index: int, narrator: narrate.RingNarrator | None, need: bool, has_call_fd: bool
    ) -> None:
        """The notification decision of a publication that followed a traced completion."""
        if narrator is None:
            return
        if need:
            narrator.lines.append(narrate.signalled(has_call_fd))
        self._narrative.commit(narrate.queue_prefix(index), narrator.lines)

    def end_pass(self) -> None:
        if self._recbuf is not None:
            self._recbuf.flush()  # once per pass; a failure stops recording
        if self._narrative.lines:
            self._narrative.emit()

    # -- reading and closing ----------------------------------------------------------

    def snapshot(self, kind: str, inflight: dict[int, int]) -> dict:
        queues = [
            queue_snapshot(i, c, list(c.requests), inflight[i])
            for i, c in sorted(self.counters.items())
        ]
        return snapshot(kind, True, queues, list(self.batch_hist), self.batch_sum)

    def close(self) -> None:
        if self._recbuf is not None:
            self._recbuf.close()  # flushes
            self._recbuf = None

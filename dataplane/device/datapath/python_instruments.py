"""The Python loop's stats, ``--record`` and ``--trace-requests``, at the C loop's points.

``PythonDatapath`` (python.py) calls one method per step of its pass; this
keeps what csrc/dp_loop.c keeps at the same steps: the counters and
histograms of device/stats.py, the record buffer of csrc/dp_rec.c, and the
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
from dataplane.device.c.rec import RecordBuffer, TraceBudget
from dataplane.device.engines.base import Op
from dataplane.device.instrument import Instruments
from dataplane.device.stats import (
    BUCKETS,
    LAT_LAYERS,
    bucket,
    queue_snapshot,
    snapshot,
)
from dataplane.spec.blk import SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP
from dataplane.spec.kinds import kind_of

KICK_POP, POP_SUBMIT, SUBMIT_COMPLETE, COMPLETE_NOTIFY = range(len(LAT_LAYERS))


class LoopInstruments:
    """One Python datapath's instruments; its thread alone writes them."""

    def __init__(
        self, queues: Iterable[int], log: logging.Logger, instruments: Instruments | None
    ) -> None:
        # Per queue for the thread's life (a ring restart keeps them), and per pass.
        self.counters = {i: cstats.new_queue_counters() for i in queues}
        self.batch_hist = [0] * BUCKETS
        self.lat = [[0] * BUCKETS for _ in LAT_LAYERS]
        self.t_wake = self._t_submit = 0
        self.npopped = self._done_reaped = self._done_now = 0
        self._recbuf: RecordBuffer | None = None
        if instruments is not None and instruments.rec is not None:
            self._recbuf = RecordBuffer(instruments.rec)
        self._budget: TraceBudget | None = instruments.budget if instruments is not None else None
        self._narrative = narrate.Narrative(log)

    # -- the pass, step by step -------------------------------------------------------

    def woke(self) -> None:
        self.t_wake = monotonic_ns()
        self._done_reaped = self._done_now = 0
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
        self.lat[KICK_POP][bucket(req.t_pop - self.t_wake)] += 1
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
        for req in reqs:
            req.t_submit = t
            self.lat[POP_SUBMIT][bucket(t - req.t_pop)] += 1

    def submitted(self, batch: list[tuple[int, BlkRequest]]) -> None:
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
        if result is not None:
            self.lat[SUBMIT_COMPLETE][bucket(self.t_wake - req.t_submit)] += 1
            self._done_reaped += 1
        else:
            # No I/O: complete when parsed; pop->submit and submit->complete are 0.
            self.lat[POP_SUBMIT][0] += 1
            self.lat[SUBMIT_COMPLETE][0] += 1
            self._done_now += 1
        if not req.trace_seq:
            return False
        self._narrative.commit(
            narrate.request_prefix(req.trace_seq, index),
            [narrate.completed(req, result, used_at)],
        )
        return True

    def before_publish(self) -> None:
        """Counted before used->idx goes out: a stats reader who saw a completion sees it."""
        if self._done_reaped or self._done_now:
            t = monotonic_ns()
            self.lat[COMPLETE_NOTIFY][bucket(t - self.t_wake)] += self._done_reaped
            self.lat[COMPLETE_NOTIFY][bucket(t - self._t_submit)] += self._done_now

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
        return snapshot(kind, True, queues, list(self.batch_hist), [list(h) for h in self.lat])

    def close(self) -> None:
        if self._recbuf is not None:
            self._recbuf.close()  # flushes
            self._recbuf = None

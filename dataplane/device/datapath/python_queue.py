"""One ring's state in the Python datapath (csrc/device/dp_loop.h struct dp_queue), and where its
next chain comes from: the requests an inflight area left in flight, then the avail ring."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dataplane.device.datapath.base import RingSetup
from dataplane.device.inflight import InflightQueue, Recovery, queue_at
from dataplane.device.virtqueue import Chain, SplitQueue


@dataclass(slots=True)
class Queue:
    vq: SplitQueue | None = None
    inflight: int = 0
    broken: bool = False
    stopping: bool = False
    kicks_off: bool = False  # disabled while we work on the ring, back on before we sleep
    irq_driver: int = 0  # notifies ago that one was due, counting down: the driver sleeps
    needs_notify: bool = False
    trace_flush: bool = False  # a traced request completed: narrate the next notify
    call_full: bool = False  # a notification was dropped on a full call eventfd (logged once)
    # INFLIGHT_SHMFD (None: not tracked) and the heads to resubmit before new pops.
    infl: InflightQueue | None = None
    resubmit: deque[int] = field(default_factory=deque)

    def next_chain(self, vq: SplitQueue) -> Chain | None:
        """As csrc/device/dp_loop.c next_chain: the heads left in flight first, then the avail ring;
        each marked in flight before its request starts."""
        chain = vq.map_desc(self.resubmit.popleft()) if self.resubmit else vq.pop()
        if chain is not None and self.infl is not None:
            self.infl.get(chain.head)
        return chain

    def start_inflight(self, setup: RingSetup) -> Recovery:
        """As dp_thread_start_inflight: track the attached ring and recover it."""
        assert self.vq is not None
        infl = queue_at(setup.inflight_addr, setup.inflight_desc_num)
        rec = infl.recover(self.vq.used_idx, self.vq.num)  # BadInflightArea: not tracked
        self.infl, self.resubmit = infl, deque(rec.heads)
        if not rec.fresh:
            self.vq.last_avail_idx = self.vq.shadow_avail_idx = rec.last_avail_idx
        return rec

"""``--target limit``: the ideal device (csrc/guest/dp_limit.c), the ring's own limit here.

``LimitDevice`` lays out guest RAM exactly as a vhost-user run does, and
serves each queue from a C thread that busy-polls the avail ring and
completes every request at once, without I/O and without touching the
request.  The driver runs against it unchanged, so every other target's
IOPS can be read as a fraction of what the ring alone allows on this
machine, in this run.
"""

from __future__ import annotations

import os
import threading

from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.layout import GuestLayout, RingShape
from dataplane.guest.clib import ffi, lib

STATUS_OK = 0  # nobody writes the status byte: it starts as the device would leave it
JOIN_TIMEOUT_S = 10.0


class LimitDevice:
    """The ideal device on ``num_queues`` queues, one busy-polling thread each."""

    status_init = STATUS_OK
    backend_pid = None

    def __init__(self, shape: RingShape, *, capacity_sectors: int) -> None:
        event_idx = shape.event_idx
        self.event_idx, self.indirect = event_idx, shape.indirect
        self.capacity = capacity_sectors
        self.layout: GuestLayout | None = GuestLayout(shape, event_idx=event_idx)
        self._qs = []
        self.rcs: list[int | None] = [None] * shape.num_queues
        for lay in self.layout.queues:
            q = ffi.new("struct dp_limit_queue *")
            q.avail = self.layout.host(lay.ring.avail)
            q.used = self.layout.host(lay.ring.used)
            q.num = lay.ring.num
            q.event_idx = int(event_idx)
            q.call_fd = lay.call
            q.last_avail_idx = q.used_idx = lay.ring.avail_idx  # a fresh ring: all at its start
            self._qs.append(q)
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"dp-limit/q{i}", daemon=True)
            for i in range(shape.num_queues)
        ]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        self.rcs[i] = lib.dp_limit_run(self._qs[i])  # cffi releases the GIL

    def cpu_s(self) -> float:
        """The device threads' CPU time so far (their whole life: they only serve the run)."""
        return sum(q.cpu_ns for q in self._qs) / 1e9

    def stop(self) -> None:
        for q in self._qs:
            q.stop = 1
        for t in self._threads:
            t.join(JOIN_TIMEOUT_S)
        if any(t.is_alive() for t in self._threads):
            raise BenchError("limit: the device threads did not stop")
        for rc in self.rcs:
            if rc:
                raise BenchError(f"limit: the device failed: {os.strerror(-rc)}")

    def close(self) -> None:
        if any(t.is_alive() for t in self._threads):
            self.stop()
        if self.layout is not None:
            self.layout.close()
            self.layout = None

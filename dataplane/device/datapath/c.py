"""The data path in C (csrc/device/dp_thread.c, dp_loop*.c): Python only handles control events.

``--datapath native``.  It does what the Python reference does (python.py), and the
production features besides: I/O limits (device/limiter.py), bounce memory within a
budget, inflight tracking (INFLIGHT_SHMFD) and dirty logging (LOG_SHMFD).

``run`` is one call to ``dp_thread_run``, with the GIL released: it waits,
pops, parses, submits, reaps and completes in C, and comes back only when the
control eventfd fires, a ring broke, an awaited drain finished, or on
timeout.  The rest of this class hands the control plane's decisions to C:
the memory table, ring addresses (translated from frontend to host addresses
here, as the reference does), fds, pause and stop.

Stats are C counters (csrc/device/dp_stats.h) read in place; ``--record`` is the C
writer (csrc/device/dp_rec.c); ``--trace-requests`` narrates in C into a buffer
that ``run`` logs when dp_thread_run returns with DP_RUN_TRACE (it returns
after every pass that narrated, so only while the first N requests go by).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from dataplane.device.c import stats as cstats
from dataplane.device.c.engine import EngineHandle
from dataplane.device.c.thread import RUN_BROKEN, RUN_DROPPED, RUN_TRACE, CThread
from dataplane.device.datapath.base import Datapath, Ring, RingSetup, ring_addrs
from dataplane.device.disk import Disk
from dataplane.device.inflight import recovery_of
from dataplane.device.instrument import Instruments
from dataplane.device.limiter import Limiter
from dataplane.device.memory import GuestMemory
from dataplane.device.narrate import Narrative
from dataplane.device.stats import queue_snapshot, snapshot, summary
from dataplane.errors import BadInflightArea, DirtyLogTooSmall, GuestError
from dataplane.spec.blk import VIRTIO_BLK_ID_BYTES
from dataplane.spec.ring import avail_ring_size, desc_table_size, used_ring_size


class CDatapath(Datapath):
    """The C data path over a C engine: a ``LocalEngine`` or a ``RemoteEngine``
    (engines/local.py, remote.py), which it owns; ``poll_us`` enables adaptive polling."""

    kind = "native"  # --datapath's value
    supports_dirty_log = True
    supports_inflight = True

    def __init__(
        self,
        disk: Disk,
        engine: EngineHandle,
        queues: Iterable[int],
        log: logging.Logger,
        *,
        poll_us: int = 0,
        instruments: Instruments | None = None,
    ) -> None:
        super().__init__(disk, queues, log)
        self.engine = engine
        self.engine_name = engine.name
        nqueues = max(self.rings, default=-1) + 1
        try:
            self._c = CThread(self.ctl_fd, engine.handle, nqueues, engine.queue_depth)
        except BaseException:
            os.close(self.ctl_fd)
            raise
        try:
            serial = disk.serial[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
            self._c.set_disk(
                disk.sectors, disk.align, disk.read_only, disk.writeback, serial, disk.seg_max,
                disk.size_max,
            )  # fmt: skip
            self._c.set_bounce(disk.bounce_bytes if disk.align > 1 else 0)
            self._c.set_poll_ns(poll_us * 1000)
            if instruments is not None:
                if instruments.rec is not None:
                    self._c.set_record(instruments.rec)
                self._c.set_trace(instruments.budget)
        except BaseException:
            self._c.close()
            os.close(self.ctl_fd)
            raise
        self._narrative = Narrative(log)
        self._stats_lock = threading.Lock()  # stats_snapshot (any thread) against close
        self._final_stats: dict | None = None
        self._final_loop: dict[str, int] = {}
        self._call_full_logged: set[int] = set()

    def set_writeback(self, writeback: bool) -> None:
        self._c.set_writeback(writeback)

    def stats(self) -> dict[str, int]:
        """Counters of the C loop (passes, waits, requests, submits, notifies, polling)."""
        with self._stats_lock:
            if self._c.closed:  # closed (the thread ended): its last values
                return dict(self._final_loop)
            return self._c.loop_stats()

    # -- the run ----------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        c = self._c
        flags = c.run(-1 if timeout is None else max(0, round(timeout * 1000)))
        if flags & RUN_TRACE:
            self._narrative.emit_text(c.take_narrative())
        if flags & RUN_DROPPED:
            for index in self.rings:
                if index not in self._call_full_logged and c.call_full(index):
                    self._call_full_logged.add(index)
                    self.log_call_full(index)
        if flags & RUN_BROKEN:
            for ring in self.rings.values():
                err = c.take_broken(ring.index)
                if err is not None:
                    self.log_broken(ring, err)  # C broke it and wrote its err eventfd
                    if isinstance(err, DirtyLogTooSmall) and self.on_frontend_error is not None:
                        self.on_frontend_error(str(err))

    # -- state ------------------------------------------------------------------------

    def inflight(self, index: int | None = None) -> int:
        return self._c.inflight(index)

    def busy(self) -> bool:
        return self._c.busy()

    def set_paused(self, paused: bool) -> None:
        self._c.set_paused(paused)

    def set_capacity(self, sectors: int) -> None:
        self._c.set_capacity(sectors)  # the config space is the device's (BlkDevice.resize)

    def set_limiter(self, limiter: Limiter) -> None:
        self._c.set_limiter(limiter.binding)

    def bounce_usage(self) -> tuple[int, int]:
        """(peak bytes of bounce memory in use at once, requests that waited for it)."""
        s = self._c.loop_stats()
        return s["bounce_peak"], s["bounce_waits"]

    def set_dirty_log(self, host_addr: int, pages: int) -> None:
        self._c.set_log(host_addr, pages)

    def set_used_log(self, index: int, gpa: int | None) -> None:
        ring = self.rings[index]
        if ring.setup is None:
            return
        ring.setup.log_used_gpa = gpa
        if self.last_avail_idx(index) is not None:
            self._c.set_log_used(index, gpa)

    def dirty_pages(self) -> int:
        return self.stats().get("dirty_pages", 0)

    def stats_snapshot(self) -> dict:
        with self._stats_lock:
            if self._final_stats is not None:
                return self._final_stats
            return self._read_stats()

    def _read_stats(self) -> dict:
        # Plain loads of the C thread's u64 counters while it runs (see dp_stats.h).
        c = self._c
        queues = []
        for i in sorted(self.rings):
            counts, requests = cstats.queue_counts(c.qstats(i))
            queues.append(queue_snapshot(i, counts, requests, c.inflight(i)))
        batch, batch_sum = cstats.thread_hists(c.tstats())
        return snapshot(self.kind, cstats.ENABLED, queues, batch, batch_sum)

    # -- rings ------------------------------------------------------------------------

    def start_ring(self, setup: RingSetup) -> None:
        ring = self.rings[setup.index]
        self.detach_ring(setup.index)
        ring.start(setup)
        self._c.reset_ring(ring.index)
        self._call_full_logged.discard(ring.index)
        self._c.set_kick_fd(ring.index, ring.kick_fd)
        self._c.set_notifiers(ring.index, ring.call_fd, ring.err_fd)
        self._c.kick(ring.index)
        self._attach(ring)
        if setup.inflight_addr and self.last_avail_idx(ring.index) is not None:
            self._recover(ring)

    def _attach(self, ring: Ring) -> None:
        s, mem = ring.setup, self.mem
        assert s is not None
        if mem is None:
            self.break_ring(ring, GuestError("ring started before any guest memory was set"))
            return
        last = self.last_avail_idx(ring.index)
        try:
            addrs = ring_addrs(mem, s)
            # The same translations, in the same order, as SplitQueue.__init__.
            host = []
            for gpa, size in (
                (addrs.desc, desc_table_size(s.num)),
                (addrs.avail, avail_ring_size(s.num)),
                (addrs.used, used_ring_size(s.num)),
            ):
                region, off = mem.gpa_contiguous(gpa, size)
                host.append(region.host_addr + off)
        except GuestError as e:
            self.break_ring(ring, e)
            return
        self._c.attach(
            ring.index, s.num, *host, s.last_avail_idx if last is None else last, s.event_idx,
            s.indirect, self.disk.max_indirect,
        )  # fmt: skip
        self._c.set_log_used(ring.index, s.log_used_gpa)

    def _recover(self, ring: Ring) -> None:
        """Track the new ring in its inflight area; resubmit what the last backend left."""
        s = ring.setup
        assert s is not None
        try:
            rec = recovery_of(
                self._c.start_inflight(ring.index, s.inflight_addr, s.inflight_desc_num)
            )
        except BadInflightArea as e:
            self.break_ring(ring, e)
            return
        if rec.heads or rec.batch_cleared:
            self.log.info(
                "%s: queue %d: inflight area recovered at used idx %d: %d completed requests "
                "recorded, %d in flight resubmitted first, popping resumes at %d",
                self.label, ring.index, rec.used_idx, rec.batch_cleared, len(rec.heads),
                rec.last_avail_idx,
            )  # fmt: skip

    def stop_ring(self, index: int) -> None:
        self._c.stop_ring(index)

    def detach_ring(self, index: int) -> int | None:
        last = self.last_avail_idx(index)
        self._c.reset_ring(index)
        return self.rings[index].detach(last)

    def set_notifier(self, index: int, which: str, fd: int | None) -> None:
        ring = self.rings[index]
        ring.set_notifier(which, fd)
        self._c.set_notifiers(index, ring.call_fd, ring.err_fd)

    def signal_call(self, index: int) -> None:
        self._c.signal_call(index)

    def break_ring(self, ring: Ring, err: GuestError) -> None:
        self._c.break_ring(ring.index)
        self.log_broken(ring, err)

    def is_broken(self, index: int) -> bool:
        return self._c.is_broken(index)

    def last_avail_idx(self, index: int) -> int | None:
        return self._c.last_avail_idx(index)

    def set_memory(self, mem: GuestMemory | None) -> None:
        self.mem = mem
        regions = mem.regions if mem is not None else ()
        err = self._c.set_memory([(r.gpa, r.size, r.host_addr) for r in regions])
        if err:
            self.log.warning(
                "%s: io_uring could not register guest memory (%s); using unregistered buffers",
                self.label,
                os.strerror(err),
            )
        for ring in self.rings.values():
            if ring.setup is None or self.is_broken(ring.index):
                continue
            if mem is None:
                self._c.unattach(ring.index)
            else:
                self._attach(ring)

    def close(self) -> None:
        s = self.stats()
        self.log.info(
            "%s: native datapath: %d requests, %d passes, %d blocking waits, %d submits, "
            "%d interrupts; polling: %d hits, %d misses, %.3f s spent",
            self.label,
            s["requests"],
            s["passes"],
            s["waits"],
            s["submits"],
            s["notifies"],
            s["poll_hits"],
            s["poll_misses"],
            s["poll_ns"] / 1e9,
        )
        with self._stats_lock:
            self._final_stats = self._read_stats()
            self._final_loop = s
            self._c.close()  # flushes the record buffer
        self.log.info("%s: %s", self.label, summary(self._final_stats))
        os.close(self.ctl_fd)
        self.engine.close()

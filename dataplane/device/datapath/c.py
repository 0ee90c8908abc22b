"""The data path in C (csrc/dp_thread.c, dp_loop*.c): Python only handles control events.

``run`` is one call to ``dp_thread_run``, with the GIL released: it waits,
pops, parses, submits, reaps and completes in C, and comes back only when the
control eventfd fires, a ring broke, an awaited drain finished, or on
timeout.  The rest of this class hands the control plane's decisions to C:
the memory table, ring addresses (translated from frontend to host addresses
here, as the reference does), fds, pause and stop.

Stats are C counters (csrc/dp_stats.h) read in place; ``--record`` is the C
writer (csrc/dp_rec.c); ``--trace-requests`` narrates in C into a buffer
that ``run`` logs when dp_thread_run returns with DP_RUN_TRACE (it returns
after every pass that narrated, so only while the first N requests go by).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from dataplane import errors
from dataplane.clib import ffi, lib
from dataplane.device.blk import VIRTIO_BLK_ID_BYTES, Disk
from dataplane.device.datapath.base import Datapath, Ring, log_call_full
from dataplane.device.engines.c import CEngine
from dataplane.device.instrument import Instruments
from dataplane.device.narrate import Narrative
from dataplane.device.stats import C_STATS_ENABLED, LAT_LAYERS, queue_snapshot, snapshot, summary
from dataplane.device.virtqueue import RingAddrs, avail_ring_size, desc_table_size, used_ring_size

# enum dp_gerr -> the GuestError subclass the reference raises for the same input.
GUEST_ERRORS: dict[int, type[errors.GuestError]] = {
    lib.DP_GERR_AVAIL_IDX_JUMP: errors.AvailIdxJump,
    lib.DP_GERR_BAD_HEAD_INDEX: errors.BadHeadIndex,
    lib.DP_GERR_BAD_NEXT_INDEX: errors.BadNextIndex,
    lib.DP_GERR_CHAIN_TOO_LONG: errors.ChainTooLong,
    lib.DP_GERR_NESTED_INDIRECT: errors.NestedIndirect,
    lib.DP_GERR_UNEXPECTED_INDIRECT: errors.UnexpectedIndirect,
    lib.DP_GERR_BAD_INDIRECT_LENGTH: errors.BadIndirectLength,
    lib.DP_GERR_ADDRESS_OUT_OF_RANGE: errors.AddressOutOfRange,
    lib.DP_GERR_LENGTH_OVERFLOW: errors.LengthOverflow,
    lib.DP_GERR_BAD_LAYOUT: errors.BadLayout,
    lib.DP_GERR_BAD_HEADER: errors.BadHeader,
    lib.DP_GERR_BAD_STATUS: errors.BadStatus,
    lib.DP_GERR_NO_MEMORY: errors.GuestError,
    lib.DP_GERR_KICK_FD: errors.KickFdFailed,
}


def _fd(fd: int | None) -> int:
    return -1 if fd is None else fd


class NativeDatapath(Datapath):
    """The C data path over a ``CEngine``; ``poll_us`` enables adaptive polling."""

    kind = "native"

    def __init__(
        self,
        disk: Disk,
        engine: CEngine,
        queues: Iterable[int],
        log: logging.Logger,
        *,
        poll_us: int = 0,
        instruments: Instruments | None = None,
    ) -> None:
        super().__init__(disk, queues, log, instruments)
        self.engine = engine
        self.engine_name = engine.name
        err = ffi.new("int *")
        nqueues = max(self.rings, default=-1) + 1
        t = lib.dp_thread_new(self.ctl_fd, engine.handle, nqueues, engine.queue_depth, err)
        if t == ffi.NULL:
            self._close_ctl()
            raise OSError(-err[0], f"dp_thread_new: {os.strerror(-err[0])}")
        self._t = t
        serial = disk.serial[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        lib.dp_thread_set_disk(
            t, disk.sectors, disk.align, disk.read_only, disk.writeback, serial, disk.seg_max,
            disk.size_max,
        )  # fmt: skip
        ret = lib.dp_thread_set_bounce(t, disk.bounce_bytes if disk.align > 1 else 0)
        if ret < 0:
            lib.dp_thread_free(t)
            self._close_ctl()
            raise OSError(-ret, f"bounce memory of {disk.bounce_bytes} bytes: {os.strerror(-ret)}")
        lib.dp_thread_set_poll(t, poll_us * 1000)
        self._msg = ffi.new("char[]", lib.DP_ERRMSG_SIZE)
        self._narrative = Narrative(log)
        self._narr_len = ffi.new("size_t *")
        self._stats_lock = threading.Lock()  # stats_snapshot (any thread) against close
        self._final_stats: dict | None = None
        self._final_loop: dict[str, int] = {}
        self._call_full_logged: set[int] = set()
        if instruments is not None:
            if instruments.recording and lib.dp_thread_set_record(t, instruments.rec) < 0:
                lib.dp_thread_free(t)
                self._close_ctl()
                raise MemoryError("dp_thread_set_record")
            lib.dp_thread_set_trace(t, instruments.budget)

    def set_writeback(self, writeback: bool) -> None:
        lib.dp_thread_set_writeback(self._t, writeback)

    def stats(self) -> dict[str, int]:
        """Counters of the C loop (passes, waits, requests, submits, notifies, polling)."""
        with self._stats_lock:
            if self._t == ffi.NULL:  # closed (the thread ended): its last values
                return dict(self._final_loop)
            s = lib.dp_thread_stats(self._t)
            return {name: getattr(s, name) for name, _ in ffi.typeof(s[0]).fields}

    # -- the run ----------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        ms = -1 if timeout is None else max(0, round(timeout * 1000))
        flags = lib.dp_thread_run(self._t, ms)
        if flags < 0:
            raise OSError(-flags, f"dataplane thread: {os.strerror(-flags)}")
        if flags & lib.DP_RUN_TRACE:
            text = lib.dp_thread_narrative(self._t, self._narr_len)
            self._narrative.emit_text(ffi.unpack(text, self._narr_len[0]).decode(errors="replace"))
            lib.dp_thread_narrative_clear(self._t)
        if flags & lib.DP_RUN_DROPPED:
            for index in self.rings:
                if index not in self._call_full_logged and lib.dp_thread_call_full(self._t, index):
                    self._call_full_logged.add(index)
                    log_call_full(self.log, index)
        if flags & lib.DP_RUN_BROKEN:
            for ring in self.rings.values():
                code = lib.dp_thread_take_broken(self._t, ring.index, self._msg, len(self._msg))
                if code:
                    err = GUEST_ERRORS[code](ffi.string(self._msg).decode(errors="replace"))
                    self.break_ring(ring, err, signalled=True)

    # -- state ------------------------------------------------------------------------

    def inflight(self, index: int | None = None) -> int:
        if index is None:
            return lib.dp_thread_inflight(self._t)
        return lib.dp_thread_queue_inflight(self._t, index)

    def busy(self) -> bool:
        return bool(lib.dp_thread_busy(self._t))

    def set_paused(self, paused: bool) -> None:
        lib.dp_thread_set_paused(self._t, paused)

    def bounce_usage(self) -> tuple[int, int]:
        s = lib.dp_thread_stats(self._t)
        return s.bounce_peak, s.bounce_waits

    def stop_ring(self, index: int) -> None:
        lib.dp_thread_stop_ring(self._t, index)

    def is_broken(self, index: int) -> bool:
        return bool(lib.dp_thread_is_broken(self._t, index))

    def last_avail_idx(self, index: int) -> int | None:
        last = lib.dp_thread_last_avail_idx(self._t, index)
        return None if last < 0 else last

    def stats_snapshot(self) -> dict:
        with self._stats_lock:
            if self._final_stats is not None:
                return self._final_stats
            return self._read_stats()

    def _read_stats(self) -> dict:
        # Plain loads of the C thread's u64 counters while it runs (see dp_stats.h).
        t = self._t
        queues = []
        for i in sorted(self.rings):
            c = lib.dp_thread_qstats(t, i)
            queues.append(
                queue_snapshot(i, c, list(c.requests), lib.dp_thread_queue_inflight(t, i))
            )
        h = lib.dp_thread_tstats(t)
        lat = [list(h.lat[i]) for i in range(len(LAT_LAYERS))]
        return snapshot(self.kind, C_STATS_ENABLED, queues, list(h.batch), lat)

    # -- ring lifecycle hooks -----------------------------------------------------------

    def _ring_started(self, ring: Ring) -> None:
        lib.dp_thread_reset_ring(self._t, ring.index)
        self._call_full_logged.discard(ring.index)
        ret = lib.dp_thread_set_kick_fd(self._t, ring.index, _fd(ring.kick_fd))
        if ret < 0:
            raise OSError(-ret, f"epoll_ctl on the kick fd: {os.strerror(-ret)}")
        self._notifiers_changed(ring)
        lib.dp_thread_kick(self._t, ring.index)

    def _ring_forgotten(self, ring: Ring) -> None:
        lib.dp_thread_reset_ring(self._t, ring.index)

    def _attach_ring(self, ring: Ring, addrs: RingAddrs, last_avail_idx: int) -> None:
        s, mem = ring.setup, self.mem
        assert s is not None and mem is not None
        # The same translations, in the same order, as SplitQueue.__init__.
        host = []
        for gpa, size in (
            (addrs.desc, desc_table_size(s.num)),
            (addrs.avail, avail_ring_size(s.num)),
            (addrs.used, used_ring_size(s.num)),
        ):
            region, off = mem.gpa_contiguous(gpa, size)
            host.append(region.host_addr + off)
        lib.dp_thread_attach(
            self._t,
            ring.index,
            s.num,
            *host,
            last_avail_idx,
            s.event_idx,
            s.indirect,
            self.disk.max_indirect,
        )

    def _unattach_ring(self, ring: Ring) -> None:
        lib.dp_thread_unattach(self._t, ring.index)

    def _notifiers_changed(self, ring: Ring) -> None:
        lib.dp_thread_set_call_fd(self._t, ring.index, _fd(ring.call_fd))
        lib.dp_thread_set_err_fd(self._t, ring.index, _fd(ring.err_fd))

    def signal_call(self, index: int) -> None:
        lib.dp_thread_signal_call(self._t, index)  # -EAGAIN (would block): skipped

    def _memory_changed(self) -> None:
        regions = self.mem.regions if self.mem is not None else ()
        table = ffi.new("struct dp_mem_region[]", max(len(regions), 1))
        for i, r in enumerate(regions):
            table[i].gpa, table[i].size, table[i].host = r.gpa, r.size, r.host_addr
        ret = lib.dp_thread_set_memory(self._t, table, len(regions))
        if ret < 0:
            self.log.warning(
                "io_uring could not register guest memory (%s); using unregistered buffers",
                os.strerror(-ret),
            )

    def _mark_broken(self, ring: Ring) -> None:
        lib.dp_thread_break(self._t, ring.index)

    def close(self) -> None:
        s = self.stats()
        self.log.info(
            "native datapath: %d requests, %d passes, %d blocking waits, %d submits, "
            "%d interrupts; polling: %d hits, %d misses, %.3f s spent",
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
            lib.dp_thread_free(self._t)  # flushes the record buffer
            self._t = ffi.NULL
        self.log.info("%s", summary(self._final_stats))
        self._close_ctl()
        self.engine.close()

"""The guest driver: csrc/guest/dp_driver.c's loop, one thread per queue, the GIL released.

``DriverRun`` fills one ``struct dp_drv_queue`` per queue from the
connection's layout and the queue's work, starts the threads, lets the caller
watch progress, and collects each queue's stats when they end.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.layout import GuestLayout, QueueLayout
from dataplane.guest.bench.trace import KINDS
from dataplane.guest.bench.workload import QueueWork, Workload
from dataplane.guest.clib import ffi, lib

STALL_S = 30.0
SUMS = ("lat", "publish", "kick_at", "reap_at")  # QueueResult.sums: csrc/guest/dp_driver.h
_OP = struct.Struct("<QQII")
assert _OP.size == ffi.sizeof("struct dp_drv_op")

VERIFY_REASONS = {
    lib.DP_VERIFY_NO_STAMP: "no verify stamp where this run wrote one (lost write?)",
    lib.DP_VERIFY_SECTOR: "the data belongs to another sector (misdirected I/O)",
    lib.DP_VERIFY_GEN: "stale data from an older write (lost or reordered write)",
    lib.DP_VERIFY_CHECKSUM: "checksum mismatch (torn or corrupted data)",
}
_RUN_ERRORS = {
    lib.DP_DRV_E_STALL: f"no completion for {STALL_S:.0f} s with requests in flight",
    lib.DP_DRV_E_BAD_USED: "the backend returned an unknown descriptor id in the used ring",
    lib.DP_DRV_E_CONFIG: "inconsistent queue configuration (a bug in dataplane bench)",
    lib.DP_DRV_E_ABORTED: "aborted",
}


@dataclass
class QueueResult:
    index: int
    ios: int
    ops: dict[str, int]
    bytes_read: int
    bytes_written: int
    io_errors: int
    verify_errors: int
    kicks: int
    wakeups: int
    start_ns: int
    end_ns: int
    cpu_ns: int
    hist: list[int]
    error: str | None = None  # first I/O error or verify failure, as a sentence
    # The round trip's sums on this side (csrc/guest/dp_driver.h): lat, publish, kick_at, reap_at.
    sums: dict[str, int] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class RingDevice(Protocol):
    """What the driver needs of the device side: a vhost-user connection, or the ideal device."""

    layout: GuestLayout | None
    event_idx: bool
    indirect: bool
    status_init: int  # the status byte before the device writes it


class DriverRun:
    """The driver threads of one measured run."""

    def __init__(self, dev: RingDevice, works: list[QueueWork], w: Workload) -> None:
        assert dev.layout is not None
        self.dev = dev
        self.layout = dev.layout
        self._keep: list[object] = []  # cffi memory the C loops point into
        self.queues = [self._queue(self.layout.queues[qw.index], qw, w) for qw in works]
        self.rcs: list[int | None] = [None] * len(self.queues)
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"dp-bench/q{i}", daemon=True)
            for i in range(len(self.queues))
        ]

    def _queue(self, lay: QueueLayout, qw: QueueWork, w: Workload):
        dev, ram = self.dev, self.layout.ram
        q = ffi.new("struct dp_drv_queue *")
        self._keep.append(q)
        q.ram_host = self.layout.host(ram.gpa)
        q.ram_gpa = ram.gpa
        q.ram_size = ram.size
        q.desc_gpa, q.avail_gpa, q.used_gpa = lay.ring.desc, lay.ring.avail, lay.ring.used
        q.num = lay.ring.num
        q.event_idx = int(dev.event_idx)
        q.indirect = int(dev.indirect)
        q.kick_fd, q.call_fd = lay.kick, lay.call
        q.iodepth = w.iodepth
        q.buf_stride = w.buf_stride
        q.buf_offset = w.buf_offset
        q.status_init = dev.status_init
        q.notify_poll = int(w.notify == "poll")
        q.meta_gpa, q.data_gpa = lay.meta_gpa, lay.data_gpa
        q.pattern = lib.DP_DRV_RAND if w.random else lib.DP_DRV_SEQ
        q.rwmixread = w.read_percent
        q.bs = w.bs
        q.verify_nonce = int.from_bytes(os.urandom(4), "little") | 1
        q.start_sector, q.nblocks, q.seed = qw.start_sector, qw.nblocks, qw.seed
        if w.verify:
            gen_map = ffi.new("uint32_t[]", qw.nblocks)
            self._keep.append(gen_map)
            q.gen_map = gen_map
        if qw.ops is not None:
            n = len(qw.ops)
            ops = ffi.new("struct dp_drv_op[]", max(1, n))
            self._keep.append(ops)
            ffi.memmove(ops, b"".join(_OP.pack(*op) for op in qw.ops), n * _OP.size)
            q.ops, q.nops = ops, n
            q.timed = int(w.replay_timing == "original")
        q.max_ios = qw.max_ios
        q.runtime_ns = int(w.runtime_s * 1e9) if w.runtime_s is not None else 0
        q.stall_ns = int(STALL_S * 1e9)
        return q

    def _run(self, i: int) -> None:
        self.rcs[i] = lib.dp_drv_run(self.queues[i])  # cffi releases the GIL

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def wait(self, timeout: float) -> None:
        """Return when every thread has finished, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def ios(self) -> int:
        return sum(q.stats.ios for q in self.queues)

    def stop(self) -> None:
        """Ask every queue to stop issuing and drain (from any thread)."""
        for q in self.queues:
            q.stop = max(q.stop, 1)

    def abort(self) -> None:
        """Make every queue return at once, without waiting for requests in flight."""
        for q in self.queues:
            q.stop = 2

    def join(self, timeout: float | None = None) -> list[QueueResult]:
        for t in self.threads:
            t.join(timeout)
        if self.alive():
            raise BenchError("the driver threads did not finish")
        results = []
        for i, q in enumerate(self.queues):
            rc = self.rcs[i]
            if rc:
                why = _RUN_ERRORS.get(rc) or os.strerror(-rc)
                if rc == lib.DP_DRV_E_BAD_USED:
                    why += f" ({q.stats.bad_used_id})"
                raise BenchError(f"queue {i}: {why}")
            results.append(_result(i, q))
        return results


def _result(i: int, q) -> QueueResult:
    st = q.stats
    error = None
    if st.io_errors:
        error = (
            f"{st.io_errors} request(s) failed; the first: {KINDS[st.error_kind]} at sector "
            f"{st.error_sector}, status {st.error_status}"
        )
    elif st.verify_errors:
        error = (
            f"verify failed at sector {st.verify_sector}: {VERIFY_REASONS[st.verify_reason]} "
            f"(found sector {st.verify_found_sector} generation {st.verify_found_gen:#x}, "
            f"expected generation {st.verify_expected_gen:#x})"
        )
    return QueueResult(
        index=i,
        ios=st.ios,
        ops={k: st.ios_by_kind[n] for n, k in enumerate(KINDS)},
        bytes_read=st.bytes_by_kind[lib.DP_DRV_READ],
        bytes_written=st.bytes_by_kind[lib.DP_DRV_WRITE],
        io_errors=st.io_errors,
        verify_errors=st.verify_errors,
        kicks=st.kicks,
        wakeups=st.wakeups,
        start_ns=st.start_ns,
        end_ns=st.end_ns,
        cpu_ns=st.cpu_ns,
        hist=list(st.hist),
        error=error,
        sums={k: int(getattr(st, f"{k}_sum" if k in ("lat", "publish") else k)) for k in SUMS},
    )

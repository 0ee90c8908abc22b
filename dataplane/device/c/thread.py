"""csrc/device/dp_thread.h: the C dataplane thread that the C datapath drives.

``CThread`` is the one owner of a ``struct dp_thread``: every call the control
plane makes between runs, with fds as ``int | None``, errno as OSError, a
queue's guest error as the ``GuestError`` the Python reference raises for the
same input, the host's lack of memory for a request as MemoryError.  ``run`` is
one call to ``dp_thread_run`` (the GIL released).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from dataplane import errors
from dataplane.device.c import Owned, check, ffi, lib, no_fd
from dataplane.device.c.inflight import CRecovery, recovery_tuple
from dataplane.device.c.limiter import CLimiter
from dataplane.device.c.rec import Recorder, TraceBudget

BATCH_MAX: int = lib.DP_BATCH_MAX  # requests popped per ring and pass
BATCH_WAKE: int = lib.DP_BATCH_WAKE  # ... for a driver that takes interrupts
RUN_TRACE: int = lib.DP_RUN_TRACE
RUN_DROPPED: int = lib.DP_RUN_DROPPED
RUN_BROKEN: int = lib.DP_RUN_BROKEN
SERIAL_BYTES = 20  # VIRTIO_BLK_ID_BYTES: what the C thread copies for GET_ID

# enum dp_gerr -> the GuestError subclass the reference raises for the same input.
# DP_GERR_NO_MEMORY is not the guest's doing: broken_error raises MemoryError for it.
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
    lib.DP_GERR_KICK_FD: errors.KickFdFailed,
    lib.DP_GERR_DIRTY_LOG: errors.DirtyLogTooSmall,
}

__all__ = ["BATCH_MAX", "BATCH_WAKE", "GUEST_ERRORS", "CThread", "broken_error"]


def broken_error(code: int, msg: str) -> errors.GuestError:
    """What broke a ring (``code``: enum dp_gerr): the guest's error, as the reference's.

    A host out of memory (DP_GERR_NO_MEMORY: a request's or a chain's allocation failed)
    raises MemoryError instead: a host failure, which ends the dataplane thread as it
    would the reference's (IoThread.run), and its device fails, naming it.
    """
    if code == lib.DP_GERR_NO_MEMORY:
        raise MemoryError(msg)
    return GUEST_ERRORS[code](msg)


class CThread(Owned):
    """One ``struct dp_thread`` on engine ``engine_handle`` (a ``struct dp_engine *``).

    ``close`` frees it (and flushes its record buffer).
    """

    free_fn = lib.dp_thread_free

    def __init__(self, ctl_fd: int, engine_handle: Any, nqueues: int, queue_depth: int) -> None:
        err = ffi.new("int *")
        t = lib.dp_thread_new(ctl_fd, engine_handle, nqueues, queue_depth, err)
        if t == ffi.NULL:
            check(err[0] or -errno.ENOMEM, "dp_thread_new")
        super().__init__(t, "dp_thread_new")
        self._msg = ffi.new("char[]", lib.DP_ERRMSG_SIZE)
        self._narr_len = ffi.new("size_t *")
        self._limiter: CLimiter | None = None

    # -- set-up -----------------------------------------------------------------------

    def set_disk(
        self, sectors: int, align: int, read_only: bool, writeback: bool, serial: bytes,
        seg_max: int, size_max: int,
    ) -> None:  # fmt: skip
        if len(serial) != SERIAL_BYTES:  # C reads exactly this many
            raise ValueError(f"a serial of {len(serial)} bytes, not {SERIAL_BYTES}")
        lib.dp_thread_set_disk(
            self._ptr, sectors, align, read_only, writeback, serial, seg_max, size_max
        )

    def set_bounce(self, budget: int) -> None:
        """Bounce memory of ``budget`` bytes (0: none); OSError if it cannot be had."""
        check(lib.dp_thread_set_bounce(self._ptr, budget), f"bounce memory of {budget} bytes")

    def set_writeback(self, writeback: bool) -> None:
        lib.dp_thread_set_writeback(self._ptr, writeback)

    def set_capacity(self, sectors: int) -> None:
        if not 0 < sectors < 1 << 64:
            raise ValueError(f"a capacity of {sectors} sectors")
        lib.dp_thread_set_capacity(self._ptr, sectors)

    def set_limiter(self, limiter: CLimiter | None) -> None:
        """Book requests with the device's limiter (kept alive here: C holds its pointer)."""
        self._limiter = limiter
        lib.dp_thread_set_limiter(self._ptr, limiter.handle if limiter is not None else ffi.NULL)

    def set_poll_ns(self, ns: int) -> None:
        lib.dp_thread_set_poll(self._ptr, ns)

    def set_record(self, rec: Recorder) -> None:
        if lib.dp_thread_set_record(self._ptr, rec.handle) < 0:
            raise MemoryError("dp_thread_set_record")

    def set_trace(self, budget: TraceBudget | None) -> None:
        lib.dp_thread_set_trace(self._ptr, budget.handle if budget is not None else ffi.NULL)

    def set_memory(self, regions: Sequence[tuple[int, int, int]]) -> int:
        """The memory table as (gpa, size, host); 0, or the errno of a failed registration.

        A failed io_uring buffer registration is not fatal (unregistered buffers work).
        """
        table = ffi.new("struct dp_mem_region[]", max(len(regions), 1))
        for i, (gpa, size, host) in enumerate(regions):
            table[i].gpa, table[i].size, table[i].host = gpa, size, host
        ret = lib.dp_thread_set_memory(self._ptr, table, len(regions))
        return -ret if ret < 0 else 0

    def set_paused(self, paused: bool) -> None:
        lib.dp_thread_set_paused(self._ptr, paused)

    # -- rings --------------------------------------------------------------------------

    def reset_ring(self, index: int) -> None:
        lib.dp_thread_reset_ring(self._ptr, index)

    def set_kick_fd(self, index: int, fd: int | None) -> None:
        check(lib.dp_thread_set_kick_fd(self._ptr, index, no_fd(fd)), "epoll_ctl on the kick fd")

    def set_notifiers(self, index: int, call_fd: int | None, err_fd: int | None) -> None:
        lib.dp_thread_set_call_fd(self._ptr, index, no_fd(call_fd))
        lib.dp_thread_set_err_fd(self._ptr, index, no_fd(err_fd))

    def signal_call(self, index: int) -> None:
        lib.dp_thread_signal_call(self._ptr, index)  # -EAGAIN (would block): skipped

    def kick(self, index: int) -> None:
        lib.dp_thread_kick(self._ptr, index)

    def attach(
        self, index: int, num: int, desc: int, avail: int, used: int, last_avail_idx: int,
        event_idx: bool, indirect: bool, max_indirect: int,
    ) -> None:  # fmt: skip
        """Ring ``index`` at host addresses ``desc``, ``avail``, ``used`` (translated, checked)."""
        lib.dp_thread_attach(
            self._ptr, index, num, desc, avail, used, last_avail_idx, event_idx, indirect,
            max_indirect,
        )  # fmt: skip

    def set_log(self, host_addr: int, pages: int) -> None:
        """Mark written pages in the log of ``pages`` pages at ``host_addr`` (0: stop
        logging); only while nothing is in flight.  The old log is unused once this returns."""
        lib.dp_thread_set_log(self._ptr, host_addr, pages)

    def set_log_used(self, index: int, gpa: int | None) -> None:
        """Log ring ``index``'s used ring at guest address ``gpa`` (VHOST_VRING_F_LOG), or not."""
        lib.dp_thread_set_log_used(self._ptr, index, gpa or 0, gpa is not None)

    def unattach(self, index: int) -> None:
        lib.dp_thread_unattach(self._ptr, index)

    def start_inflight(self, index: int, region: int, desc_num: int) -> CRecovery | int:
        """Track attached ring ``index`` in the area at ``region`` and recover it:
        (fresh, batch_cleared, heads, last_avail_idx, used_idx), or a DP_INFLIGHT_E* code."""
        out = ffi.new("struct dp_inflight_recovery *")
        ret = lib.dp_thread_start_inflight(self._ptr, index, region, desc_num, out)
        if ret == -errno.EINVAL:
            raise ValueError(f"ring {index} is not attached")
        if ret < 0:
            return -ret
        return recovery_tuple(out, lib.dp_thread_resubmit_heads(self._ptr, index))

    def stop_ring(self, index: int) -> None:
        lib.dp_thread_stop_ring(self._ptr, index)

    def break_ring(self, index: int) -> None:
        lib.dp_thread_break(self._ptr, index)

    # -- the run and what it leaves -----------------------------------------------------

    def run(self, timeout_ms: int) -> int:
        """One ``dp_thread_run``: its DP_RUN_* flags; OSError on a host failure."""
        return check(lib.dp_thread_run(self._ptr, timeout_ms), "dataplane thread")

    def take_narrative(self) -> str:
        text = lib.dp_thread_narrative(self._ptr, self._narr_len)
        out = ffi.unpack(text, self._narr_len[0]).decode(errors="replace")
        lib.dp_thread_narrative_clear(self._ptr)
        return out

    def take_broken(self, index: int) -> errors.GuestError | None:
        """The guest error that broke ring ``index`` since the last call, or None;
        MemoryError if the host ran out of memory for it (broken_error)."""
        code = lib.dp_thread_take_broken(self._ptr, index, self._msg, len(self._msg))
        if not code:
            return None
        return broken_error(code, ffi.string(self._msg).decode(errors="replace"))

    def call_full(self, index: int) -> bool:
        return bool(lib.dp_thread_call_full(self._ptr, index))

    # -- state --------------------------------------------------------------------------

    def inflight(self, index: int | None = None) -> int:
        if index is None:
            return lib.dp_thread_inflight(self._ptr)
        return lib.dp_thread_queue_inflight(self._ptr, index)

    def busy(self) -> bool:
        return bool(lib.dp_thread_busy(self._ptr))

    def is_broken(self, index: int) -> bool:
        return bool(lib.dp_thread_is_broken(self._ptr, index))

    def last_avail_idx(self, index: int) -> int | None:
        last = lib.dp_thread_last_avail_idx(self._ptr, index)
        return None if last < 0 else last

    def loop_stats(self) -> dict[str, int]:
        """struct dp_thread_stats as a dict."""
        s = lib.dp_thread_stats(self._ptr)
        return {name: getattr(s, name) for name, _ in ffi.typeof(s[0]).fields}

    def qstats(self, index: int) -> Any:
        """Ring ``index``'s struct dp_qstats, read in place (plain loads, see dp_stats.h)."""
        return lib.dp_thread_qstats(self._ptr, index)

    def tstats(self) -> Any:
        return lib.dp_thread_tstats(self._ptr)

"""The per-request work of a dataplane thread, behind one small interface.

``IoThread`` (iothread.py) owns the control side: commands from the control
plane, applied between runs.  A ``Datapath`` owns everything else: the rings,
the engine, and the one blocking wait over kicks, completions and the control
eventfd.  Two implementations:

- ``PythonDatapath`` (python.py): the reference, in Python: the request's life
  from kick to notify, and nothing else;
- ``CDatapath`` (c.py): the same steps in C (csrc/device/dp_loop.c), one call per
  wake-up with the GIL released, and the production features besides: limits,
  bounce memory within a budget, inflight tracking, dirty logging.

This module holds what the IoThread asks of both, and the little they share:
a ring's set-up and fds (``Ring``), where its structures are in guest memory
(``ring_addrs``) and the words they log.  Both keep the same stats, record
the same trace and narrate requests in the same words (dataplane/device/stats.py,
instrument.py, narrate.py).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from dataplane.device.disk import Disk
from dataplane.device.limiter import Limiter
from dataplane.device.memory import GuestMemory
from dataplane.errors import GuestError, UsageError
from dataplane.spec.ring import RingAddrs, avail_ring_size, desc_table_size, used_ring_size

DATAPATHS = ("native", "python")  # --datapath's values: "native" is the C datapath


@dataclass(slots=True)
class RingSetup:
    """Everything the thread needs to start processing one ring."""

    index: int
    num: int
    desc_uva: int
    avail_uva: int
    used_uva: int
    last_avail_idx: int
    kick_fd: int  # owned by the thread from here on
    call_fd: int | None  # owned by the thread from here on
    err_fd: int | None  # owned by the thread from here on
    event_idx: bool
    indirect: bool
    # INFLIGHT_SHMFD (C datapath only): the host address of this queue's area and its
    # entries (0: not tracked).  The session keeps the area mapped while the ring may run.
    inflight_addr: int = 0
    inflight_desc_num: int = 0
    # VHOST_VRING_F_LOG: the used ring's guest-physical address for the dirty log (None: off).
    log_used_gpa: int | None = None


@dataclass(slots=True)
class Ring:
    """One ring's set-up and the fds the thread owns for it."""

    index: int
    setup: RingSetup | None = None
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    error: GuestError | None = None  # why the ring broke, if it did

    def start(self, setup: RingSetup) -> None:
        """Take ``setup`` and its fds (the ring was detached first)."""
        self.setup, self.error = setup, None
        self.kick_fd, self.call_fd, self.err_fd = setup.kick_fd, setup.call_fd, setup.err_fd

    def detach(self, last_avail_idx: int | None) -> int | None:
        """Close the fds and forget the set-up; the ring's last_avail_idx (None if unset):
        ``last_avail_idx`` while it was attached, else where it was set up to start."""
        if last_avail_idx is None and self.setup is not None:
            last_avail_idx = self.setup.last_avail_idx
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            if fd is not None:
                os.close(fd)
        self.kick_fd = self.call_fd = self.err_fd = None
        self.setup = None
        return last_avail_idx

    def set_notifier(self, which: str, fd: int | None) -> None:
        """Replace the ``call`` or ``err`` fd (owning ``fd`` from here on)."""
        attr = f"{which}_fd"
        old = getattr(self, attr)
        if old is not None:
            os.close(old)
        setattr(self, attr, fd)


class Datapath(ABC):
    """Rings in, engine, rings out: what a dataplane thread does between commands.

    Every method runs on the dataplane thread, except ``wake``, ``stats_snapshot``
    (any thread) and ``close`` (after the thread ended).  Dirty logging, limits
    and inflight tracking are the C datapath's alone: the ``supports_*`` flags
    say whether a datapath has them, and the methods for them here refuse.
    """

    kind: ClassVar[str]
    supports_dirty_log: ClassVar[bool] = False  # LOG_SHMFD (csrc/device/dp_log.h)
    supports_inflight: ClassVar[bool] = False  # INFLIGHT_SHMFD (csrc/device/dp_inflight.h)
    engine_name: str

    def __init__(
        self,
        disk: Disk,
        queues: Iterable[int],
        log: logging.Logger,
    ) -> None:
        self.disk = disk
        self.log = log
        self.label = "datapath"  # its thread's name (dp/DEVICE/N) once a thread runs it
        self.mem: GuestMemory | None = None
        self.rings = {i: Ring(i) for i in queues}
        self.ctl_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Called on the thread when the frontend's dirty log failed it (too small).
        self.on_frontend_error: Callable[[str], None] | None = None

    def wake(self) -> None:
        """Make ``run`` return soon (any thread): a command is waiting."""
        os.eventfd_write(self.ctl_fd, 1)

    def log_broken(self, ring: Ring, err: GuestError) -> None:
        """Record why ``ring`` broke, and log it."""
        ring.error = err
        self.log.error(
            "%s: queue %d broken by guest: %s: %s (no further requests are processed on it)",
            self.label,
            ring.index,
            type(err).__name__,
            err,
        )

    def log_call_full(self, index: int) -> None:
        """Once per ring start: its call eventfd is full, so notifications are dropped."""
        self.log.warning(
            "%s: queue %d: the call eventfd is full (nobody reads it); notifications are "
            "dropped and counted in notifies-dropped",
            self.label,
            index,
        )

    @abstractmethod
    def run(self, timeout: float | None) -> None:
        """Wait for work and process it, until the control eventfd fires.

        Also returns on ``timeout`` (seconds), when a ring broke, and when
        ``inflight`` may have dropped to zero for a paused thread or a
        stopping ring.  The Python reference returns after every pass.
        """

    # -- rings --------------------------------------------------------------------

    @abstractmethod
    def start_ring(self, setup: RingSetup) -> None:
        """Start a ring (detached first if it ran): watch its kick, attach it to guest
        memory (broken if it is not there), and mark it pending: popping starts."""

    @abstractmethod
    def stop_ring(self, index: int) -> None:
        """Pop no more from ring ``index``; its in-flight requests go on."""

    @abstractmethod
    def detach_ring(self, index: int) -> int | None:
        """Forget ring ``index`` and close its fds; return its last_avail_idx (None if unset)."""

    @abstractmethod
    def set_notifier(self, index: int, which: str, fd: int | None) -> None:
        """Replace the ring's ``call`` or ``err`` fd (the thread owns ``fd`` from here on)."""

    @abstractmethod
    def signal_call(self, index: int) -> None:
        """Write the ring's call fd once, never blocking (SET_VRING_CALL installed it)."""

    @abstractmethod
    def break_ring(self, ring: Ring, err: GuestError) -> None:
        """Mark ``ring`` broken by the guest: no more requests from it, no more writes to
        its guest memory; logged (``log_broken``), err eventfd signalled once."""

    @abstractmethod
    def is_broken(self, index: int) -> bool: ...

    @abstractmethod
    def last_avail_idx(self, index: int) -> int | None:
        """The ring's last_avail_idx while it is attached to guest memory."""

    @abstractmethod
    def set_memory(self, mem: GuestMemory | None) -> None:
        """Swap guest memory (only while nothing is in flight); rings are re-attached to it."""

    # -- the device's state ----------------------------------------------------------

    @abstractmethod
    def set_writeback(self, writeback: bool) -> None:
        """The driver flipped the write cache: writes from now on are write-through or not."""

    @abstractmethod
    def set_capacity(self, sectors: int) -> None:
        """The disk grew to ``sectors`` (resize): requests up to the new end are in range."""

    @abstractmethod
    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) popping from every ring; in-flight requests go on."""

    @abstractmethod
    def inflight(self, index: int | None = None) -> int:
        """Requests popped and not yet completed: on ring ``index``, or in the whole thread."""

    @abstractmethod
    def busy(self) -> bool:
        """Requests in flight, or rings with work the next run will pop without a kick."""

    @abstractmethod
    def stats_snapshot(self) -> dict:
        """The stats (stats.snapshot), JSON-ready; callable from any thread.

        Read while the thread runs: every counter is whole, but the set is not
        a consistent cut (see dataplane/device/stats.py).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the engine and every kernel resource; the thread has ended."""

    # -- the C datapath's alone ------------------------------------------------------

    def set_limiter(self, limiter: Limiter) -> None:
        """Book requests with the device's limiter (shared by its threads), before the
        thread starts.  A throttled request waits, and popping with it; none fails."""
        if limiter.limits.limited:
            raise UsageError(
                f"I/O limits need --datapath native (the {self.kind} datapath has none)"
            )

    def set_dirty_log(self, host_addr: int, pages: int) -> None:
        """Log the pages written into the log of ``pages`` pages at ``host_addr`` (0: stop);
        only while nothing is in flight (IoThread.set_dirty_log waits for that)."""
        raise NotImplementedError(f"the {self.kind} datapath does no dirty logging")

    def set_used_log(self, index: int, gpa: int | None) -> None:
        """SET_VRING_ADDR on a running ring: log its used ring at ``gpa`` (None: not)."""
        raise NotImplementedError(f"the {self.kind} datapath does no dirty logging")

    def dirty_pages(self) -> int:
        """Pages this thread logged (bits it set in the dirty log), ever."""
        return 0


def ring_addrs(mem: GuestMemory, setup: RingSetup) -> RingAddrs:
    """The ring's structures in guest-physical addresses; GuestError if one is not in
    guest memory (the frontend gave addresses in its own, which SET_MEM_TABLE maps)."""
    return RingAddrs(
        mem.uva_to_gpa(setup.desc_uva, desc_table_size(setup.num)),
        mem.uva_to_gpa(setup.avail_uva, avail_ring_size(setup.num)),
        mem.uva_to_gpa(setup.used_uva, used_ring_size(setup.num)),
    )

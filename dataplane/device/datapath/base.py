"""The per-request work of a dataplane thread, behind one small interface.

``IoThread`` (iothread.py) owns the control side: commands from the control
plane, applied between runs.  A ``Datapath`` owns everything else: the rings,
the engine, and the one blocking wait over kicks, completions and the control
eventfd.  Two implementations:

- ``PythonDatapath`` (python.py): the reference, in Python;
- ``NativeDatapath`` (c.py): the same steps in C (csrc/device/dp_loop.c),
  one call per wake-up with the GIL released.

This module holds what both share: a ring's set-up and its fds, attaching a
ring to guest memory, and breaking it (logged once, err eventfd signalled once).
Both keep the same stats, record the same trace and narrate requests in the
same words (dataplane/device/stats.py, instrument.py, narrate.py).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from dataplane.device.blk import Disk
from dataplane.device.inflight import Recovery
from dataplane.device.instrument import Instruments
from dataplane.device.memory import GuestMemory
from dataplane.errors import BadInflightArea, GuestError
from dataplane.spec.ring import RingAddrs, avail_ring_size, desc_table_size, used_ring_size

DATAPATHS = ("native", "python")


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
    # INFLIGHT_SHMFD: the host address of this queue's area and its entries (0: not tracked).
    # The session keeps the area mapped while the ring may run.
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


class Datapath(ABC):
    """Rings in, engine, rings out: what a dataplane thread does between commands.

    Every method runs on the dataplane thread, except ``wake`` and
    ``close`` (after the thread ended).
    """

    kind: ClassVar[str]
    # Dirty logging (live migration) lives in the C datapath alone (csrc/device/dp_log.h).
    supports_dirty_log: ClassVar[bool] = False
    engine_name: str

    def __init__(
        self,
        disk: Disk,
        queues: Iterable[int],
        log: logging.Logger,
        instruments: Instruments | None = None,
    ) -> None:
        self.disk = disk
        self.log = log
        self.label = "datapath"  # its thread's name (dp/DEVICE/N) once a thread runs it
        self.instruments = instruments  # --record, --trace-requests; owned by the caller
        self.mem: GuestMemory | None = None
        self.rings = {i: Ring(i) for i in queues}
        self.ctl_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Called on the thread when the frontend's dirty log failed it (too small).
        self.on_frontend_error: Callable[[str], None] | None = None

    def wake(self) -> None:
        """Make ``run`` return soon (any thread): a command is waiting."""
        os.eventfd_write(self.ctl_fd, 1)

    # -- what the thread does ---------------------------------------------------

    @abstractmethod
    def run(self, timeout: float | None) -> None:
        """Wait for work and process it, until the control eventfd fires.

        Also returns on ``timeout`` (seconds), when a ring broke, and when
        ``inflight`` may have dropped to zero for a paused thread or a
        stopping ring.  The Python reference returns after every pass.
        """

    @abstractmethod
    def inflight(self, index: int | None = None) -> int:
        """Requests popped and not yet completed: on ring ``index``, or in the whole thread
        (at the engine, or held for bounce memory or by the limiter)."""

    @abstractmethod
    def busy(self) -> bool:
        """Requests in flight, or rings with work the next run will pop without a kick."""

    @abstractmethod
    def set_writeback(self, writeback: bool) -> None:
        """The driver flipped the write cache: writes from now on are write-through or not."""

    @abstractmethod
    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) popping from every ring; in-flight requests go on."""

    @abstractmethod
    def set_capacity(self, sectors: int) -> None:
        """The disk grew to ``sectors`` (resize): requests up to the new end are in range."""

    @abstractmethod
    def set_limiter(self, limiter: Any) -> None:
        """Book requests with the device's limiter (device/limiter.py, shared by its threads;
        None: none) before the thread starts: ``new_limiter`` makes the kind this datapath
        takes.  A throttled request waits, and popping with it; none fails."""

    @abstractmethod
    def stop_ring(self, index: int) -> None:
        """Pop no more from ring ``index``; its in-flight requests go on."""

    @abstractmethod
    def is_broken(self, index: int) -> bool: ...

    @abstractmethod
    def signal_call(self, index: int) -> None:
        """Write the ring's call fd once, never blocking (SET_VRING_CALL installed it)."""

    @abstractmethod
    def last_avail_idx(self, index: int) -> int | None:
        """The ring's last_avail_idx while it is attached to guest memory."""

    def set_dirty_log(self, host_addr: int, pages: int) -> None:
        """Log the pages written into the log of ``pages`` pages at ``host_addr`` (0: stop);
        only while nothing is in flight (IoThread.set_dirty_log waits for that)."""
        raise NotImplementedError(f"the {self.kind} datapath does no dirty logging")

    def dirty_pages(self) -> int:
        """Pages this thread logged (bits it set in the dirty log), ever."""
        return 0

    def set_used_log(self, index: int, gpa: int | None) -> None:
        """SET_VRING_ADDR on a running ring: log its used ring at ``gpa`` (None: not)."""
        ring = self.rings[index]
        if ring.setup is not None:
            ring.setup.log_used_gpa = gpa

    @abstractmethod
    def bounce_usage(self) -> tuple[int, int]:
        """(peak bytes of bounce memory in use at once, requests that waited for it)."""

    @abstractmethod
    def stats_snapshot(self) -> dict:
        """The stats (stats.snapshot), JSON-ready; callable from any thread.

        Read while the thread runs: every counter is whole, but the set is not
        a consistent cut (see dataplane/device/stats.py).
        """

    # -- hooks for the ring lifecycle below ---------------------------------------

    @abstractmethod
    def _ring_started(self, ring: Ring) -> None:
        """A new ring with fresh fds: watch its kick, forget any old state, mark it pending."""

    @abstractmethod
    def _ring_forgotten(self, ring: Ring) -> None:
        """Stop watching the ring's kick and drop its state; its fds close after this."""

    @abstractmethod
    def _attach_ring(self, ring: Ring, addrs: RingAddrs, last_avail_idx: int) -> None:
        """Attach the ring's structures at ``addrs`` in ``self.mem``; GuestError if outside."""

    @abstractmethod
    def _start_inflight(self, ring: Ring) -> Recovery:
        """Track the attached ring in its area and recover it (InflightQueue.recover):
        the heads in flight first, popping from Recovery.last_avail_idx.  BadInflightArea."""

    @abstractmethod
    def _unattach_ring(self, ring: Ring) -> None:
        """Guest memory is gone: the ring stays set up but cannot be used."""

    @abstractmethod
    def _notifiers_changed(self, ring: Ring) -> None: ...

    @abstractmethod
    def _memory_changed(self) -> None: ...

    @abstractmethod
    def _mark_broken(self, ring: Ring) -> None:
        """Take no more requests from the ring, touch no more of its guest memory."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine and every kernel resource; the thread has ended."""

    # -- the ring lifecycle, shared ---------------------------------------------------

    def start_ring(self, setup: RingSetup) -> None:
        ring = self.rings[setup.index]
        self.detach_ring(setup.index)
        ring.setup, ring.error = setup, None
        ring.kick_fd, ring.call_fd, ring.err_fd = setup.kick_fd, setup.call_fd, setup.err_fd
        self._ring_started(ring)
        self._attach(ring)
        if setup.inflight_addr and self.last_avail_idx(ring.index) is not None:
            self._recover(ring)

    def _recover(self, ring: Ring) -> None:
        """Track the new ring in its inflight area; resubmit what the last backend left."""
        try:
            rec = self._start_inflight(ring)
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

    def detach_ring(self, index: int) -> int | None:
        """Forget ring ``index`` and close its fds; return its last_avail_idx (None if unset)."""
        ring = self.rings[index]
        last = self.last_avail_idx(index)
        if last is None and ring.setup is not None:
            last = ring.setup.last_avail_idx
        self._ring_forgotten(ring)
        for fd in (ring.kick_fd, ring.call_fd, ring.err_fd):
            if fd is not None:
                os.close(fd)
        ring.kick_fd = ring.call_fd = ring.err_fd = None
        ring.setup = None
        return last

    def set_notifier(self, index: int, which: str, fd: int | None) -> None:
        """Replace the ring's ``call`` or ``err`` fd (the thread owns ``fd`` from here on)."""
        ring = self.rings[index]
        attr = f"{which}_fd"
        old = getattr(ring, attr)
        if old is not None:
            os.close(old)
        setattr(ring, attr, fd)
        self._notifiers_changed(ring)

    def set_memory(self, mem: GuestMemory | None) -> None:
        """Swap guest memory (only while nothing is in flight); rings are re-attached to it."""
        self.mem = mem
        self._memory_changed()
        for ring in self.rings.values():
            if ring.setup is not None and not self.is_broken(ring.index):
                if mem is None:
                    self._unattach_ring(ring)
                else:
                    self._attach(ring)

    def _attach(self, ring: Ring) -> None:
        s = ring.setup
        assert s is not None
        if self.mem is None:
            self.break_ring(ring, GuestError("ring started before any guest memory was set"))
            return
        try:
            addrs = RingAddrs(
                self.mem.uva_to_gpa(s.desc_uva, desc_table_size(s.num)),
                self.mem.uva_to_gpa(s.avail_uva, avail_ring_size(s.num)),
                self.mem.uva_to_gpa(s.used_uva, used_ring_size(s.num)),
            )
            last = self.last_avail_idx(ring.index)
            self._attach_ring(ring, addrs, s.last_avail_idx if last is None else last)
        except GuestError as e:
            self.break_ring(ring, e)

    def break_ring(self, ring: Ring, err: GuestError, *, signalled: bool = False) -> None:
        """Mark ``ring`` broken by the guest: logged here, err eventfd signalled once.

        ``signalled``: the C path already broke it and wrote the err eventfd.
        """
        ring.error = err
        if not signalled:
            self._mark_broken(ring)
        self.log.error(
            "%s: queue %d broken by guest: %s: %s (no further requests are processed on it)",
            self.label,
            ring.index,
            type(err).__name__,
            err,
        )

    def _close_ctl(self) -> None:
        os.close(self.ctl_fd)


def log_call_full(log: logging.Logger, label: str, index: int) -> None:
    """Once per ring start: its call eventfd is full, so notifications are dropped."""
    log.warning(
        "%s: queue %d: the call eventfd is full (nobody reads it); notifications are dropped "
        "and counted in notifies-dropped",
        label,
        index,
    )


def drain(fd: int) -> None:
    """Clear our own control eventfd (non-blocking, never the frontend's)."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass

"""The dataplane thread: one per device, or per group of a device's queues.

The thread runs a ``Datapath`` (datapath/base.py; datapath/factory.py opens
the Python reference or the C one).  The datapath owns the rings, the engine
and the one blocking wait over kicks, completions and a control eventfd; the
thread loops on it and, each time it returns, applies the control plane's
commands.

The control plane never touches a ring.  It sends a command and waits on the
returned future; the thread applies the command between runs.

A thread that dies (a bug, or a host failure such as an engine error) fails
every command queued on it at once, and every later ``call``, with a
RuntimeError naming the cause; ``on_death`` tells its device, which fails.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.memory import GuestMemory
from dataplane.device.sandbox import load_iothread
from dataplane.errors import GuestError

Future = concurrent.futures.Future

COMM_LEN = 15  # a kernel thread name (comm) holds 15 bytes and a NUL
NAME_TIMEOUT_S = 5.0
_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None

__all__ = ["IoThread", "comm_name", "set_os_thread_name"]


@dataclass(slots=True)
class _Command:
    fn: Callable[[], object]
    future: Future = field(default_factory=Future)
    waits_for_idle: bool = False
    fatal: bool = False  # what fn raises ends the thread (the test hook: kill)


class IoThread(threading.Thread):
    """Runs ``datapath`` and applies control commands to it; owns it from here on."""

    def __init__(
        self, name: str, datapath: Datapath, log: logging.Logger, *, cpus: Sequence[int] = ()
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.datapath = datapath
        datapath.label = name  # its log lines (the shutdown summary) name the thread
        self.log = log
        self.cpus = tuple(cpus)  # pinned to these CPUs once started (pin); () = not pinned
        self._stopping: dict[int, Future] = {}
        self._commands: list[_Command] = []
        self._commands_lock = threading.Lock()
        self._exit = False
        self._closed = False  # the datapath is closed: no more commands
        self._named = threading.Event()
        self._confined = (
            False  # this thread loaded its seccomp allow-list (dataplane.device.sandbox)
        )
        self.died: BaseException | None = None  # what ended the thread, if not shutdown()
        # Called on the dying thread with the cause (BlkDevice fails the device).
        self.on_death: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        """Start the thread; it has its kernel name (``ps -L``, /proc) when this returns."""
        super().start()
        self._named.wait(NAME_TIMEOUT_S)

    @property
    def engine_name(self) -> str:
        return self.datapath.engine_name

    def stats(self) -> dict:
        """The datapath's stats snapshot, from any thread, without stopping this one.

        The counters are read while the thread runs (see dataplane/device/stats.py
        for what a snapshot may tear); after the thread ended, its last values.
        """
        return {"thread": self.name, **self.datapath.stats_snapshot()}

    # -- control plane side -------------------------------------------------

    @property
    def dead(self) -> bool:
        return self.died is not None

    def _death(self) -> RuntimeError:
        return RuntimeError(f"dataplane thread {self.name} died: {self.died!r}")

    def call(
        self, fn: Callable[[], object], *, waits_for_idle: bool = False, fatal: bool = False
    ) -> Future:
        """Run ``fn`` on the thread between runs; its result resolves the future.

        With ``waits_for_idle`` the thread first stops popping and waits for
        every in-flight request to finish.  RuntimeError if the thread died.
        """
        cmd = _Command(fn, waits_for_idle=waits_for_idle, fatal=fatal)
        with self._commands_lock:
            if self.died is not None:
                raise self._death() from self.died
            if self._closed:
                raise RuntimeError(f"dataplane thread {self.name} has ended")
            self._commands.append(cmd)
            # Under the lock: the thread may run the command at once, end, and close the
            # datapath (and its control eventfd) only after it took the lock itself.
            self.datapath.wake()
        return cmd.future

    def kill(self, exc: BaseException) -> Future:
        """Make the thread die of ``exc`` as of a bug (the management socket's test hook)."""

        def die() -> None:
            raise exc

        return self.call(die, fatal=True)

    def break_ring(self, index: int, err: GuestError) -> Future:
        """Break ring ``index`` (logged once, err eventfd signalled) if it is set up."""

        def brk() -> None:
            ring = self.datapath.rings[index]
            if ring.setup is not None and not self.datapath.is_broken(index):
                self.datapath.break_ring(ring, err)

        return self.call(brk)

    def pin(self) -> None:
        """Bind the started thread to ``cpus`` (by its kernel thread id); OSError if refused."""
        if self.cpus:
            assert self.native_id is not None, "pin() after start()"
            os.sched_setaffinity(self.native_id, self.cpus)

    def start_ring(self, setup: RingSetup) -> Future:
        return self.call(lambda: self._start_ring(setup))

    def stop_ring(self, index: int) -> Future:
        """Stop popping from ring ``index``; resolves to last_avail_idx once it is idle."""
        fut: Future = Future()

        def failed(cmd: Future) -> None:  # the thread died before running the command
            if not cmd.cancelled() and cmd.exception() is not None and not fut.done():
                fut.set_exception(cmd.exception())

        self.call(lambda: self._stop_ring(index, fut)).add_done_callback(failed)
        return fut

    def set_call_fd(self, index: int, fd: int | None) -> Future:
        """SET_VRING_CALL: install ``fd`` (owned by the thread from here on) and signal it."""
        return self.call(lambda: self._set_call_fd(index, fd))

    def set_err_fd(self, index: int, fd: int | None) -> Future:
        return self.call(lambda: self.datapath.set_notifier(index, "err", fd))

    def set_writeback(self, writeback: bool) -> Future:
        """The guest flipped the write cache (config space): the datapath follows."""
        return self.call(lambda: self.datapath.set_writeback(writeback))

    def set_capacity(self, sectors: int) -> Future:
        """The disk grew (resize): the datapath's bounds follow."""
        return self.call(lambda: self.datapath.set_capacity(sectors))

    def set_memory(self, mem: GuestMemory | None) -> Future:
        """Swap guest memory once nothing is in flight; rings are re-attached to it."""
        return self.call(lambda: self.datapath.set_memory(mem), waits_for_idle=True)

    def set_dirty_log(self, host_addr: int, pages: int) -> Future:
        """Dirty logging into the log at ``host_addr`` (0: off), once nothing is in flight;
        the thread no longer uses the previous log when this resolves."""
        return self.call(lambda: self.datapath.set_dirty_log(host_addr, pages), waits_for_idle=True)

    def set_used_log(self, index: int, gpa: int | None) -> Future:
        """SET_VRING_ADDR's VHOST_VRING_F_LOG on a running ring (``gpa`` None: off)."""
        return self.call(lambda: self.datapath.set_used_log(index, gpa))

    def confine(self) -> Future:
        """Load the thread's allow-list on it (once), now that the control plane has its own."""
        return self.call(self._confine)

    def shutdown(self) -> None:
        """Finish in-flight I/O, stop every ring, end the thread and close the datapath.

        A dead thread has already released everything: only joined.
        """
        try:
            self.call(self._request_exit, waits_for_idle=True).result()
        except RuntimeError:
            if not self.dead:
                raise
        self.join()

    # -- thread side ----------------------------------------------------------

    def run(self) -> None:
        set_os_thread_name(self.name)  # before the allow-list, which has no prctl
        self._named.set()
        try:
            self._confine()
            while not self._exit:
                self.datapath.run(None)
                self._run_commands()
        except BaseException as e:  # a bug or a host failure, not guest input
            self._die(e)
        finally:
            try:
                self._close()
            except Exception as e:
                self.log.error("dataplane thread %s: closing its datapath failed: %r", self.name, e)

    def _die(self, e: BaseException) -> None:
        """Fail every waiting command and stop at once; tell the device."""
        with self._commands_lock:
            self.died = e
            cmds, self._commands = self._commands, []
        self.log.error("dataplane thread %s died: %s: %s", self.name, type(e).__name__, e)
        self.log.debug("dataplane thread %s died", self.name, exc_info=e)
        for fut in [c.future for c in cmds] + list(self._stopping.values()):
            if not fut.done():
                fut.set_exception(self._death())
        self._stopping.clear()
        if self.on_death is not None:
            try:
                self.on_death(e)
            except Exception as err:  # the event loop is gone already (shutdown)
                self.log.error("thread %s: could not report its death: %r", self.name, err)

    def _run_commands(self) -> None:
        with self._commands_lock:
            cmds, self._commands = self._commands, []
        idle = not self.datapath.inflight()
        keep: list[_Command] = []
        for n, cmd in enumerate(cmds):
            if cmd.waits_for_idle and not idle:
                keep.append(cmd)
                continue
            try:
                _resolve(cmd.future, cmd.fn())
            except Exception as e:
                if cmd.fatal:
                    # The thread dies: what it had not run yet waits in the queue, for _die.
                    with self._commands_lock:
                        self._commands[:0] = keep + cmds[n:]
                    raise
                if not cmd.future.cancelled():
                    cmd.future.set_exception(e)
        self.datapath.set_paused(bool(keep))
        if keep:
            with self._commands_lock:
                self._commands[:0] = keep
        for index in list(self._stopping):
            if self.datapath.inflight(index) == 0:
                self._detach(index)

    # -- commands, run on the thread -----------------------------------------

    def _confine(self) -> None:
        if not self._confined:
            self._confined = load_iothread(self.engine_name)

    def _start_ring(self, s: RingSetup) -> None:
        self._detach(s.index)
        self.datapath.start_ring(s)

    def _set_call_fd(self, index: int, fd: int | None) -> None:
        # libvhost-user signals every call fd SET_VRING_CALL installs, so that a guest never
        # waits on a completion whose interrupt it missed across a reconnect; QEMU's
        # vhost-user-blk test waits for that interrupt.  A ring that is not running keeps no
        # fd: the session hands the ring its own copy when it starts.
        self.datapath.set_notifier(index, "call", fd)
        self.datapath.signal_call(index)
        if self.datapath.rings[index].setup is None:
            self.datapath.set_notifier(index, "call", None)

    def _stop_ring(self, index: int, fut: Future) -> None:
        if self.datapath.rings[index].setup is None:
            _resolve(fut, None)
            return
        self._stopping[index] = fut
        self.datapath.stop_ring(index)
        if self.datapath.inflight(index) == 0:
            self._detach(index)

    def _detach(self, index: int) -> None:
        """Forget ring ``index``: close its fds and resolve a pending stop."""
        last = self.datapath.detach_ring(index)
        fut = self._stopping.pop(index, None)
        if fut is not None:
            _resolve(fut, last)

    def _request_exit(self) -> None:
        for index in self.datapath.rings:
            self._detach(index)
        self._exit = True

    def _close(self) -> None:
        with self._commands_lock:
            self._closed = True
        for index in self.datapath.rings:
            self._detach(index)
        self.datapath.close()


def comm_name(name: str) -> str:
    """``name`` cut to the kernel's 15-byte thread name, keeping its last ``/`` part.

    ``dp/a-long-device-name/1`` -> ``dp/a-long-devi/1``.
    """
    raw = name.encode()
    if len(raw) <= COMM_LEN:
        return name
    head, sep, tail = name.rpartition("/")
    tail_b = (sep + tail).encode()
    if not head or len(tail_b) >= COMM_LEN:
        return raw[:COMM_LEN].decode(errors="ignore")
    return head.encode()[: COMM_LEN - len(tail_b)].decode(errors="ignore") + sep + tail


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for ``ps -L``, top and /proc/<pid>/task/<tid>/comm."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(comm_name(name).encode()), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _resolve(fut: Future, value: object) -> None:
    """Set a result unless the waiter gave up (its asyncio task was cancelled)."""
    if not fut.cancelled():
        fut.set_result(value)

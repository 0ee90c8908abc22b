"""The dataplane thread: one per device (or per group of queues).

The thread owns its queues' ring state and its own I/O engine.  It makes one
blocking wait (epoll) covering its kick eventfds, its engine's completion fd
and a control eventfd.  Each pass:

1. reap engine completions: status byte, ``add_used``;
2. pop every available chain from kicked queues, parse, and submit the whole
   batch to the engine in one call (requests with a known status complete
   at once);
3. per queue that completed anything: publish ``used->idx`` and signal the
   call eventfd once, if ``should_notify`` says so.

The control plane never touches a ring.  It sends a command and waits on the
returned future; the thread applies the command between passes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dataplane.blk import BlkRequest, Disk, complete_request, parse_request
from dataplane.engines.base import Engine, IoRequest
from dataplane.errors import GuestError
from dataplane.memory import GuestMemory
from dataplane.virtqueue import RingAddrs, SplitQueue

Future = concurrent.futures.Future


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


@dataclass(slots=True)
class _Queue:
    index: int
    vq: SplitQueue | None = None
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    inflight: int = 0
    broken: bool = False
    stopping: Future | None = None
    setup: RingSetup | None = None
    needs_notify: bool = False


@dataclass(slots=True)
class _Command:
    fn: Callable[[], object]
    future: Future = field(default_factory=Future)
    waits_for_idle: bool = False


class IoThread(threading.Thread):
    """Processes the rings of ``queues`` against ``engine``."""

    def __init__(
        self,
        name: str,
        disk: Disk,
        engine: Engine,
        queues: Iterable[int],
        log: logging.Logger,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.disk = disk
        self.engine = engine
        self.log = log
        self.mem: GuestMemory | None = None
        self._queues = {i: _Queue(i) for i in queues}
        self._by_kick: dict[int, _Queue] = {}
        self._pending: set[int] = set()
        self._inflight: dict[int, tuple[_Queue, BlkRequest]] = {}
        self._next_token = 1
        self._commands: list[_Command] = []
        self._commands_lock = threading.Lock()
        self._ctl_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self._ctl_fd, select.EPOLLIN)
        self._epoll.register(engine.completion_fd, select.EPOLLIN)
        self._exit = False
        self._paused = False

    # -- control plane side -------------------------------------------------

    def call(self, fn: Callable[[], object], *, waits_for_idle: bool = False) -> Future:
        """Run ``fn`` on the thread between passes; its result resolves the future.

        With ``waits_for_idle`` the thread first stops popping and waits for
        every in-flight request to finish.
        """
        cmd = _Command(fn, waits_for_idle=waits_for_idle)
        with self._commands_lock:
            self._commands.append(cmd)
        os.eventfd_write(self._ctl_fd, 1)
        return cmd.future

    def start_ring(self, setup: RingSetup) -> Future:
        return self.call(lambda: self._start_ring(setup))

    def stop_ring(self, index: int) -> Future:
        """Stop popping from ring ``index``; resolves to last_avail_idx once it is idle."""
        fut: Future = Future()
        self.call(lambda: self._stop_ring(index, fut))
        return fut

    def set_call_fd(self, index: int, fd: int | None) -> Future:
        return self.call(lambda: self._set_fd(index, "call_fd", fd))

    def set_err_fd(self, index: int, fd: int | None) -> Future:
        return self.call(lambda: self._set_fd(index, "err_fd", fd))

    def set_memory(self, mem: GuestMemory | None) -> Future:
        """Swap guest memory once nothing is in flight; rings are re-attached to it."""
        return self.call(lambda: self._set_memory(mem), waits_for_idle=True)

    def shutdown(self) -> None:
        """Finish in-flight I/O, stop every ring and end the thread."""
        self.call(self._request_exit, waits_for_idle=True).result()
        self.join()

    # -- thread side ----------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._exit:
                self._pass()
        except BaseException:  # pragma: no cover - a bug, not guest input
            self.log.exception("dataplane thread %s died", self.name)
            raise
        finally:
            self._close()

    def _pass(self) -> None:
        timeout = 0 if self._pending and not self._paused else -1
        for fd, _ in self._epoll.poll(timeout):
            if fd == self._ctl_fd:
                _drain(fd)
            elif fd == self.engine.completion_fd:
                pass  # reaped below, every pass
            else:
                q = self._by_kick.get(fd)
                if q is not None:
                    _drain(fd)
                    self._pending.add(q.index)
        touched: set[int] = set()
        for token, result in self.engine.reap():
            q, req = self._inflight.pop(token)
            self._finish(q, req, result)
            touched.add(q.index)
        if not self._paused:
            batch: list[IoRequest] = []
            for index in sorted(self._pending):
                self._pop_queue(self._queues[index], batch, touched)
            if batch:
                self.engine.submit(batch)
        for index in touched:
            self._notify(self._queues[index])
        self._run_commands()

    def _pop_queue(self, q: _Queue, batch: list[IoRequest], touched: set[int]) -> None:
        vq = q.vq
        if vq is None or q.broken or q.stopping is not None:
            self._pending.discard(q.index)
            return
        budget = vq.num
        try:
            while budget:
                chain = vq.pop()
                if chain is None:
                    if vq.enable_notification():
                        continue
                    self._pending.discard(q.index)
                    return
                budget -= 1
                req = parse_request(chain, self.disk)
                q.inflight += 1
                if req.io is None:
                    self._finish(q, req, None)
                    touched.add(q.index)
                else:
                    req.io.token = self._next_token
                    self._inflight[self._next_token] = (q, req)
                    self._next_token += 1
                    batch.append(req.io)
        except GuestError as e:
            self._break(q, e)
        # Budget spent: stay pending so other queues get a turn first.

    def _finish(self, q: _Queue, req: BlkRequest, result: int | None) -> None:
        q.inflight -= 1
        if q.broken or q.vq is None:
            # A broken queue gets no more guest writes; just release the request.
            if req.bounce is not None:
                req.bounce.close()
            return
        complete_request(req, result)
        q.vq.add_used(req.head, req.used_len)
        q.needs_notify = True

    def _notify(self, q: _Queue) -> None:
        if not q.needs_notify or q.vq is None or q.broken:
            return
        q.needs_notify = False
        q.vq.flush_used()
        if q.vq.should_notify() and q.call_fd is not None:
            os.eventfd_write(q.call_fd, 1)

    def _break(self, q: _Queue, err: GuestError) -> None:
        q.broken = True
        self._pending.discard(q.index)
        self.log.error(
            "queue %d broken by guest: %s: %s (no further requests are processed on it)",
            q.index,
            type(err).__name__,
            err,
        )
        if q.err_fd is not None:
            os.eventfd_write(q.err_fd, 1)

    def _run_commands(self) -> None:
        with self._commands_lock:
            cmds, self._commands = self._commands, []
        idle = not self._inflight
        keep: list[_Command] = []
        for cmd in cmds:
            if cmd.waits_for_idle and not idle:
                keep.append(cmd)
                continue
            try:
                _resolve(cmd.future, cmd.fn())
            except Exception as e:
                if not cmd.future.cancelled():
                    cmd.future.set_exception(e)
        self._paused = bool(keep)
        if keep:
            with self._commands_lock:
                self._commands[:0] = keep
        for q in self._queues.values():
            if q.stopping is not None and q.inflight == 0:
                self._detach(q)

    # -- commands, run on the thread -----------------------------------------

    def _start_ring(self, s: RingSetup) -> None:
        q = self._queues[s.index]
        self._detach(q)
        q.setup, q.broken, q.inflight = s, False, 0
        q.kick_fd, q.call_fd, q.err_fd = s.kick_fd, s.call_fd, s.err_fd
        self._by_kick[s.kick_fd] = q
        self._epoll.register(s.kick_fd, select.EPOLLIN)
        self._attach(q)
        self._pending.add(q.index)

    def _attach(self, q: _Queue) -> None:
        s = q.setup
        assert s is not None
        if self.mem is None:
            self._break(q, GuestError("ring started before any guest memory was set"))
            return
        try:
            addrs = RingAddrs(
                self.mem.uva_to_gpa(s.desc_uva, 16 * s.num),
                self.mem.uva_to_gpa(s.avail_uva, 6 + 2 * s.num),
                self.mem.uva_to_gpa(s.used_uva, 6 + 8 * s.num),
            )
            last = q.vq.last_avail_idx if q.vq is not None else s.last_avail_idx
            q.vq = SplitQueue(
                s.num,
                addrs,
                self.mem,
                last_avail_idx=last,
                event_idx=s.event_idx,
                indirect=s.indirect,
                max_indirect=self.disk.queue_size,
            )
        except GuestError as e:
            self._break(q, e)

    def _stop_ring(self, index: int, fut: Future) -> None:
        q = self._queues[index]
        if q.setup is None:
            _resolve(fut, None)
            return
        q.stopping = fut
        self._pending.discard(index)
        if q.inflight == 0:
            self._detach(q)

    def _detach(self, q: _Queue) -> None:
        """Forget ring ``q``: resolve a pending stop and close the fds it owns."""
        last = None
        if q.vq is not None:
            last = q.vq.last_avail_idx
        elif q.setup is not None:
            last = q.setup.last_avail_idx
        if q.kick_fd is not None:
            self._epoll.unregister(q.kick_fd)
            del self._by_kick[q.kick_fd]
        for fd in (q.kick_fd, q.call_fd, q.err_fd):
            if fd is not None:
                os.close(fd)
        q.kick_fd = q.call_fd = q.err_fd = None
        q.vq, q.setup = None, None
        self._pending.discard(q.index)
        if q.stopping is not None:
            _resolve(q.stopping, last)
            q.stopping = None

    def _set_fd(self, index: int, attr: str, fd: int | None) -> None:
        q = self._queues[index]
        old = getattr(q, attr)
        if old is not None:
            os.close(old)
        setattr(q, attr, fd)

    def _set_memory(self, mem: GuestMemory | None) -> None:
        self.mem = mem
        for q in self._queues.values():
            if q.setup is not None and not q.broken:
                if mem is None:
                    q.vq = None
                else:
                    self._attach(q)

    def _request_exit(self) -> None:
        for q in self._queues.values():
            self._detach(q)
        self._exit = True

    def _close(self) -> None:
        for q in self._queues.values():
            if q.kick_fd is not None or q.call_fd is not None or q.err_fd is not None:
                self._detach(q)
        self._epoll.close()
        os.close(self._ctl_fd)


def _resolve(fut: Future, value: object) -> None:
    """Set a result unless the waiter gave up (its asyncio task was cancelled)."""
    if not fut.cancelled():
        fut.set_result(value)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass

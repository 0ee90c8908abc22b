"""One vhost-user connection applied to one virtio-blk device: ``Session``.

The session keeps the frontend's view of each vring (size, addresses, base,
fds) and its state in the lifecycle of dataplane/vhost/vring_states.py, whose
table turns each message into start/stop commands for the device's dataplane
threads.  GET_VRING_BASE stops a ring and replies only when its in-flight
requests have finished.

The memory the frontend shares (SET_MEM_TABLE, CONFIGURE_MEM_SLOTS' ADD_MEM_REG and
REM_MEM_REG; INFLIGHT_SHMFD's area; LOG_SHMFD's dirty log) reaches every dataplane thread
of the device the same way, whatever message made it: each thread swaps it in once
nothing is in flight (``BlkDevice.set_memory``), and what was replaced is unmapped only
after that (no use after unmap).

The config space: GET_CONFIG and SET_CONFIG from the frontend, and the backend channel
(BACKEND_REQ: SET_BACKEND_REQ_FD) on which the session tells the frontend the space
changed (resize's CONFIG_CHANGE_MSG).

Write ownership of an image file follows the running rings (live migration,
device/image.py): the last GET_VRING_BASE gives it up, and a ring that starts
takes it, or drops the connection when the other end of a migration holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from dataplane.device.blkdev import (
    MAX_MEM_SLOTS,
    BlkDevice,
    DirtyLog,
    GuestMemory,
    InflightArea,
    RingSetup,
    check_eventfd,
    drain_eventfd,
)
from dataplane.device.settings import check_queue_size
from dataplane.errors import GuestMemoryLost, ImageTaken, ProtocolError
from dataplane.serve import backend_channel
from dataplane.spec.ring import VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC
from dataplane.vhost.messages import (
    REQUESTS,
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_VRING_F_LOG,
    BackendReqFd,
    Config,
    Inflight,
    LogBase,
    MemReg,
    MemTable,
    ProtocolFeature,
    RegionSpec,
    Request,
    VringAddr,
    VringFile,
    VringState,
)
from dataplane.vhost.protocol import BackendConnection, Message
from dataplane.vhost.vring_states import Action, RingEvent, RingState, transition

PROTOCOL_FEATURES = sum(
    1 << f
    for f in (
        ProtocolFeature.MQ,
        ProtocolFeature.REPLY_ACK,
        ProtocolFeature.CONFIG,
        ProtocolFeature.CONFIGURE_MEM_SLOTS,
        ProtocolFeature.BACKEND_REQ,  # for resize's CONFIG_CHANGE_MSG (backend_channel.py)
    )
)
# Live migration: the C datapath logs the pages it writes (csrc/device/dp_log.h); the Python
# reference does not, so it offers neither, and QEMU blocks migration of its guest.
DIRTY_LOG_PROTOCOL_FEATURES = 1 << ProtocolFeature.LOG_SHMFD
DIRTY_LOG_FEATURES = 1 << VHOST_F_LOG_ALL
# INFLIGHT_SHMFD: likewise, the C datapath tracks its rings in the area (csrc/device/dp_inflight.h)
# and recovers from it when a ring starts; the Python reference does not, and offers none.
INFLIGHT_PROTOCOL_FEATURES = 1 << ProtocolFeature.INFLIGHT_SHMFD


@dataclass(slots=True)
class _Vring:
    num: int = 0
    addr: VringAddr | None = None
    base: int = 0
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    state: RingState = RingState.DISABLED

    @property
    def running(self) -> bool:
        return self.state is RingState.STARTED


class Session:
    """Applies the messages of one connection to ``device``."""

    def __init__(self, device: BlkDevice, log: logging.Logger) -> None:
        self.device = device
        self.log = log
        self.conn = BackendConnection()
        self.features = 0
        self.mem: GuestMemory | None = None
        self.vrings = [_Vring() for _ in range(device.num_queues)]
        self.backend: backend_channel.BackendChannel | None = None  # SET_BACKEND_REQ_FD
        self.inflight: InflightArea | None = None
        # fds that go out with the next reply (GET_INFLIGHT_FD), closed once sent.
        self.reply_fds: list[int] = []
        self.dirty_log: DirtyLog | None = None  # SET_LOG_BASE's
        self._logging: tuple[int, int] = (0, 0)  # what the threads log into: (address, pages)
        self._retired_logs: list[DirtyLog] = []  # replaced; unmapped once no thread uses them

    def _rings_running(self) -> bool:
        return any(vr.running for vr in self.vrings)

    @property
    def _protocol_features_acked(self) -> bool:
        return bool(self.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES))

    async def handle(self, msg: Message) -> bytes:
        """Apply one request; return the reply bytes (possibly empty)."""
        handler = _HANDLERS[msg.request]
        result = await handler(self, msg.payload)
        if REQUESTS[msg.request].has_reply:
            return self.conn.reply(msg, result)
        return self.conn.ack(msg, result is not False)

    # -- feature negotiation --------------------------------------------------

    async def _get_features(self, _: None) -> int:
        features = self.device.features | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        return features | (DIRTY_LOG_FEATURES if self.device.dirty_log_capable else 0)

    async def _set_features(self, features: int) -> None:
        offered = await self._get_features(None)
        if features & ~offered:
            raise ProtocolError(f"SET_FEATURES {features:#x} has bits we never offered")
        self.features = features
        await self._apply_dirty_log()  # LOG_ALL on or off, while the rings run

    async def _get_protocol_features(self, _: None) -> int:
        dirty = DIRTY_LOG_PROTOCOL_FEATURES if self.device.dirty_log_capable else 0
        inflight = INFLIGHT_PROTOCOL_FEATURES if self.device.inflight_capable else 0
        return PROTOCOL_FEATURES | dirty | inflight

    async def _set_protocol_features(self, features: int) -> None:
        if features & ~await self._get_protocol_features(None):
            raise ProtocolError(f"SET_PROTOCOL_FEATURES {features:#x} has bits we never offered")
        self.conn.set_protocol_features(features)  # its own ack goes out under them

    async def _get_queue_num(self, _: None) -> int:
        return self.device.num_queues

    async def _set_owner(self, _: None) -> None:
        return None

    async def _reset_owner(self, _: None) -> None:
        for i in range(len(self.vrings)):
            await self._ring_event(i, RingEvent.RESET_OWNER)
        self.features = 0
        await self._apply_dirty_log()

    # -- shared memory: guest RAM ------------------------------------------------

    async def _set_mem_table(self, table: MemTable) -> None:
        try:
            for i, fd in enumerate(table.fds):
                warn_unsealed(self.log, self.device.name, i, fd)
            mem = await map_off_loop(table)
        finally:
            for fd in table.fds:
                os.close(fd)
        try:
            self._check_dirty_log(mem)
        except ProtocolError:
            mem.close()
            raise
        await self._set_memory_everywhere(mem)
        old, self.mem = self.mem, mem
        if old is not None:
            old.close()

    async def _get_max_mem_slots(self, _: None) -> int:
        return MAX_MEM_SLOTS

    async def _add_mem_reg(self, m: MemReg) -> None:
        """ADD_MEM_REG: the table plus one region, swapped in as SET_MEM_TABLE swaps."""
        assert m.fd is not None
        old = self.mem if self.mem is not None else GuestMemory(())
        try:
            warn_unsealed(self.log, self.device.name, len(old.regions), m.fd)
            mem = await add_off_loop(old, m.region, m.fd)
        finally:
            os.close(m.fd)
        try:
            self._check_dirty_log(mem)
        except ProtocolError:
            GuestMemory(r for r in mem.regions if r not in old.regions).close()
            raise
        await self._set_memory_everywhere(mem)
        self.mem = mem  # the old table's regions live on in the new one: not closed
        self._log_region("added", m)

    async def _rem_mem_reg(self, m: MemReg) -> None:
        """REM_MEM_REG: every thread lets go of the region before it is unmapped."""
        if self.mem is None:
            raise ProtocolError("REM_MEM_REG before any memory region was added")
        mem, gone = self.mem.remove_region(m.region)
        await self._set_memory_everywhere(mem)
        self.mem = mem
        gone.close()  # no thread holds the old table now: no use after unmap
        self._log_region("removed", m)

    def _log_region(self, what: str, m: MemReg) -> None:
        r = m.region
        self.log.info(
            "%s: memory region %s: guest %#x-%#x (%d MiB); %d regions mapped",
            self.device.name, what, r.guest_phys_addr, r.guest_phys_addr + r.memory_size - 1,
            r.memory_size >> 20, len(self.mem.regions) if self.mem else 0,
        )  # fmt: skip

    async def _set_memory_everywhere(self, mem: GuestMemory | None) -> None:
        """Every dataplane thread of the device gets the new table (each one owns rings)."""
        await asyncio.wrap_future(self.device.set_memory(mem))

    # -- shared memory: inflight I/O tracking ------------------------------------

    def _replace_inflight(self, area: InflightArea | None, what: str) -> None:
        if self._rings_running():
            if area is not None:
                area.close()
            raise ProtocolError(f"{what} while rings run (they track in the current area)")
        old, self.inflight = self.inflight, area
        if old is not None:
            old.close()

    async def _get_inflight_fd(self, i: Inflight) -> Inflight:
        area = InflightArea.allocate(i.num_queues, i.queue_size, max_queues=self.device.num_queues)
        self._replace_inflight(area, "GET_INFLIGHT_FD")
        self.reply_fds.append(os.dup(area.fd))
        return Inflight(area.mmap_size, 0, i.num_queues, i.queue_size, self.reply_fds[-1])

    async def _set_inflight_fd(self, i: Inflight) -> None:
        assert i.fd is not None
        area = InflightArea.adopt(
            i.fd, i.mmap_size, i.mmap_offset, i.num_queues, i.queue_size,
            max_queues=self.device.num_queues,
        )  # fmt: skip
        self._replace_inflight(area, "SET_INFLIGHT_FD")

    # -- dirty logging (live migration) -------------------------------------------

    async def _set_log_base(self, msg: LogBase) -> int:
        """Map the new log and switch the threads to it (if logging) before the old one is
        unmapped; the reply (0) says it is in use."""
        try:
            if self.mem is None:
                raise ProtocolError("SET_LOG_BASE before SET_MEM_TABLE")
            log = DirtyLog(msg.fd, msg.mmap_size, msg.mmap_offset)
        finally:
            os.close(msg.fd)
        try:
            log.check_covers(self.mem)
        except BaseException:
            log.close()
            raise
        old, self.dirty_log = self.dirty_log, log
        if old is not None:
            self._retired_logs.append(old)
        await self._apply_dirty_log()
        self._close_retired_logs()  # no thread logs into them now
        return 0

    def _close_retired_logs(self) -> None:
        for log in self._retired_logs:
            log.close()
        self._retired_logs = []

    def _check_dirty_log(self, mem: GuestMemory) -> None:
        # QEMU grows its log before it sends more memory (hw/virtio/vhost.c vhost_commit).
        if self.dirty_log is not None and self._logging != (0, 0):
            self.dirty_log.check_covers(mem, "new guest memory while logging")

    async def _apply_dirty_log(self) -> None:
        """Every thread logs into the current log while LOG_ALL is on, and into none else."""
        log = self.dirty_log if self.features & DIRTY_LOG_FEATURES else None
        want = (log.host_addr, log.pages) if log is not None else (0, 0)
        if want == self._logging:
            return
        await asyncio.wrap_future(self.device.set_dirty_log(*want))
        self._logging = want
        if log is not None:
            self.log.info("%s: dirty logging on (%d pages of log)", self.device.name, log.pages)
        else:
            self.log.info("%s: dirty logging off", self.device.name)

    # -- vrings -----------------------------------------------------------------

    def _vring(self, index: int) -> _Vring:
        if index >= len(self.vrings):
            raise ProtocolError(f"vring {index} does not exist ({len(self.vrings)} queues)")
        return self.vrings[index]

    async def _ring_event(
        self, index: int, event: RingEvent, change: Callable[[_Vring], None] | None = None
    ) -> None:
        """Move ring ``index`` along the lifecycle table: stop it, ``change`` it, start it."""
        vr = self._vring(index)
        new, action = transition(vr.state, event, index)
        if action in (Action.STOP, Action.RESTART):
            await self._stop(index)
            vr.state = RingState.STOPPED
        if change is not None:
            change(vr)
        if action in (Action.START, Action.RESTART):
            vr.state = RingState.STOPPED  # kick fd and enabled: so it stays if the start fails
            await self._start(index)
        vr.state = new

    async def _set_vring_num(self, s: VringState) -> None:
        self._vring(s.index)
        if not check_queue_size(s.num) or s.num > self.device.opts.queue_size:
            raise ProtocolError(
                f"vring {s.index} size {s.num} is not a power of two up to "
                f"{self.device.opts.queue_size} (see --queue-size)"
            )
        await self._ring_event(s.index, RingEvent.SET_VRING_NUM, lambda vr: _set(vr, num=s.num))

    async def _set_vring_addr(self, a: VringAddr) -> None:
        await self._ring_event(a.index, RingEvent.SET_VRING_ADDR, lambda vr: _set(vr, addr=a))
        # QEMU switches the used ring's logging this way (on a device that can log).
        if self.vrings[a.index].running and self.device.dirty_log_capable:
            await asyncio.wrap_future(self.device.set_used_log(a.index, _log_used_gpa(a)))

    async def _set_vring_base(self, s: VringState) -> None:
        self._vring(s.index)
        if s.num > 0xFFFF:
            raise ProtocolError(f"vring {s.index} base {s.num} is not a 16-bit index")
        await self._ring_event(s.index, RingEvent.SET_VRING_BASE, lambda vr: _set(vr, base=s.num))

    async def _get_vring_base(self, s: VringState) -> VringState:
        def take_kick(vr: _Vring) -> None:
            _close(vr.kick)
            vr.kick = None

        await self._ring_event(s.index, RingEvent.GET_VRING_BASE, take_kick)
        if not self._rings_running():
            # Every ring stopped and drained, as at a migration's switch-over: the
            # destination's backend may write the image from here on.
            self.device.give_up_writes()
        return VringState(s.index, self.vrings[s.index].base)

    def _vring_taking(self, f: VringFile) -> _Vring:
        """The vring ``f`` names; its fd is closed if the index is bad."""
        try:
            return self._vring(f.index)
        except ProtocolError:
            _close(f.fd)
            raise

    def _check_notifier(self, f: VringFile, which: str) -> None:
        """Kick, call and err fds must be eventfds; anything else is closed, a protocol error."""
        if f.fd is None:
            return
        try:
            check_eventfd(f.fd, f"vring {f.index} {which} fd")
        except ProtocolError:
            _close(f.fd)
            raise

    async def _set_vring_kick(self, f: VringFile) -> None:
        vr = self._vring_taking(f)
        if f.fd is None:
            raise ProtocolError(f"vring {f.index}: polling mode (kick with NOFD) is not supported")
        self._check_notifier(f, "kick")

        def new_kick(vr: _Vring) -> None:
            _close(vr.kick)
            vr.kick = f.fd

        event = (
            RingEvent.SET_VRING_KICK
            if self._protocol_features_acked
            else RingEvent.SET_VRING_KICK_ENABLING
        )
        try:
            await self._ring_event(f.index, event, new_kick)
        finally:
            if vr.kick != f.fd:  # the ring could not stop: the new fd was never taken
                _close(f.fd)

    async def _set_vring_call(self, f: VringFile) -> None:
        await self._set_notifier(f, "call")

    async def _set_vring_err(self, f: VringFile) -> None:
        await self._set_notifier(f, "err")

    async def _set_notifier(self, f: VringFile, which: str) -> None:
        vr = self._vring_taking(f)
        self._check_notifier(f, which)
        event = RingEvent.SET_VRING_CALL if which == "call" else RingEvent.SET_VRING_ERR
        transition(vr.state, event, f.index)  # allowed in every state: nothing to close here
        _close(getattr(vr, which))
        setattr(vr, which, f.fd)
        # A new call fd goes to the thread even when the ring is not running: the thread
        # signals it once (IoThread.set_call_fd), on its side of the command path.
        if vr.running or (which == "call" and f.fd is not None):
            setter = self.device.set_call_fd if which == "call" else self.device.set_err_fd
            await asyncio.wrap_future(setter(f.index, _dup(f.fd)))

    async def _set_vring_enable(self, s: VringState) -> None:
        self._vring(s.index)
        if s.num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE {s.num} is neither 0 nor 1")
        await self._ring_event(s.index, RingEvent.ENABLE if s.num else RingEvent.DISABLE)

    async def _start(self, index: int) -> None:
        vr = self.vrings[index]
        assert vr.kick is not None
        if vr.addr is None or vr.num == 0:
            raise ProtocolError(f"vring {index} started before SET_VRING_NUM/SET_VRING_ADDR")
        if self.mem is None:
            raise ProtocolError(f"vring {index} started before SET_MEM_TABLE")
        if not self.device.take_writes():
            raise ImageTaken(
                f"vring {index} not started: image {self.device.opts.image} is written by "
                "another backend (the other end of a live migration took it); two must never "
                "write it at once"
            )
        setup = RingSetup(
            index=index,
            num=vr.num,
            desc_uva=vr.addr.desc_user_addr,
            avail_uva=vr.addr.avail_user_addr,
            used_uva=vr.addr.used_user_addr,
            last_avail_idx=vr.base,
            kick_fd=os.dup(vr.kick),
            call_fd=_dup(vr.call),
            err_fd=_dup(vr.err),
            event_idx=bool(self.features & (1 << VIRTIO_RING_F_EVENT_IDX)),
            indirect=bool(self.features & (1 << VIRTIO_RING_F_INDIRECT_DESC)),
            log_used_gpa=_log_used_gpa(vr.addr),
        )
        area = self.inflight
        if area is not None and index < area.num_queues:
            setup.inflight_addr = area.queue_addr(index)
            setup.inflight_desc_num = area.queue_size
        await asyncio.wrap_future(self.device.start_ring(setup))

    async def _stop(self, index: int) -> None:
        """Stop the running ring ``index``; its base becomes where the thread got to."""
        vr = self.vrings[index]
        last = await asyncio.wrap_future(self.device.stop_ring(index))
        if last is not None:
            vr.base = last

    # -- config space -----------------------------------------------------------

    async def _get_config(self, c: Config) -> Config:
        space = self.device.disk.config_space()
        return Config(c.offset, c.size, c.flags, space[c.offset : c.offset + c.size])

    async def _set_config(self, c: Config) -> bool:
        if self.device.disk.read_only:
            return False
        disk = self.device.disk
        if not disk.write_config(c.offset, c.data):
            return False
        # A data-path change like any other: through each thread's command queue.
        await asyncio.wrap_future(self.device.set_writeback(disk.writeback))
        return True

    async def _set_backend_req_fd(self, b: BackendReqFd) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend = backend_channel.open_channel(b.fd, self.conn.protocol_features)

    async def config_changed(self) -> None:
        """Tell the frontend the config space changed (resize); BackendChannelError if not."""
        await backend_channel.config_changed(self.backend, self.conn.protocol_features)

    # -- teardown -----------------------------------------------------------------

    async def break_rings(self, why: str) -> None:
        """Guest RAM is gone (a contained SIGBUS): every running ring breaks, logged once."""
        for index, vr in enumerate(self.vrings):
            if vr.running:
                err = GuestMemoryLost(f"guest RAM shrank under the mapping ({why})")
                with contextlib.suppress(RuntimeError):  # a dead thread breaks nothing
                    await asyncio.wrap_future(self.device.break_ring(index, err))

    def _unblock_notifiers(self) -> None:
        """Read every call and err eventfd once, never blocking.

        A thread whose eventfd write raced with a hostile frontend that filled
        the eventfd and cleared O_NONBLOCK is blocked in that write
        (csrc/device/dp_fdio.h); reading the eventfd through our fd of the same file
        description wakes it.  The connection is gone, so nobody misses the count.
        """
        for vr in self.vrings:
            for fd in (vr.call, vr.err):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        drain_eventfd(fd)

    async def close(self) -> None:
        """The connection is gone: stop every ring, drop memory, close every fd.

        Robust to a dead dataplane thread: its rings and memory are released by
        the thread's own exit; guest memory is unmapped only once every live
        thread has let go of it.
        """
        self._unblock_notifiers()
        try:
            for i, vr in enumerate(self.vrings):
                _, action = transition(vr.state, RingEvent.DISCONNECT, i)
                if action is Action.STOP and self.device.ring_alive(i):
                    await self._stop(i)
        finally:
            try:
                if self.dirty_log is not None or self._retired_logs:
                    await asyncio.wrap_future(self.device.set_dirty_log(0, 0))
                    self._logging = (0, 0)
                    if self.dirty_log is not None:
                        self._retired_logs.append(self.dirty_log)
                        self.dirty_log = None
                    self._close_retired_logs()
                if self.mem is not None:
                    await self._set_memory_everywhere(None)
                    self.mem.close()
                    self.mem = None
            finally:
                if self.inflight is not None:  # no ring runs now: nothing tracks in it
                    self.inflight.close()
                    self.inflight = None
                for fd in self.reply_fds:
                    _close(fd)
                self.reply_fds = []
                for vr in self.vrings:
                    for fd in (vr.kick, vr.call, vr.err):
                        _close(fd)
                self.vrings = [_Vring() for _ in self.vrings]
                if self.backend is not None:
                    self.backend.close()
                self.conn.close()


# -- mapping what the frontend shares ---------------------------------------------


def warn_unsealed(log: logging.Logger, device: str, index: int, fd: int) -> None:
    """One warning line for a region whose file may shrink under the mapping.

    QEMU's memory-backend-memfd seals its memfds against shrinking by
    default; a region that is not sealed can be truncated by the frontend
    while mapped, which the SIGBUS containment (csrc/device/dp_sigbus.h) turns
    into a dropped connection instead of a dead process.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = None  # not a memfd (a file, hugetlbfs...): nothing stops it shrinking
    if seals is None or not seals & fcntl.F_SEAL_SHRINK:
        log.warning(
            "%s: memory region %d is not sealed against shrinking (F_SEAL_SHRINK%s): "
            "a frontend that truncates it costs its connection",
            device,
            index,
            "; not a memfd" if seals is None else "",
        )


async def map_off_loop(table: MemTable) -> GuestMemory:
    """Map the regions on a worker thread: fstat and mmap of a file on a hung filesystem
    (FUSE) would block the loop.  Cancelled meanwhile (the connection dropped), it still
    waits for the mapping to finish, and undoes it, before the caller closes the fds."""
    return await _off_loop(lambda: GuestMemory.map_fds(table.regions, table.fds), lambda m: m)


async def add_off_loop(mem: GuestMemory, spec: RegionSpec, fd: int) -> GuestMemory:
    """ADD_MEM_REG's ``mem.add_region``, mapped off the loop as ``map_off_loop`` maps; a
    cancelled one unmaps only the region it added (the others are ``mem``'s)."""

    def added(new: GuestMemory) -> GuestMemory:
        return GuestMemory(r for r in new.regions if r not in mem.regions)

    return await _off_loop(lambda: mem.add_region(spec, fd), added)


async def _off_loop(
    fn: Callable[[], GuestMemory], undo: Callable[[GuestMemory], GuestMemory]
) -> GuestMemory:
    """``fn()`` on a worker thread; if cancelled, ``undo(result)`` is closed once it is done."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled() and fut.exception() is None:
            undo(fut.result()).close()
        raise


def _log_used_gpa(addr: VringAddr) -> int | None:
    """The used ring's guest-physical address for the dirty log, if SET_VRING_ADDR asks."""
    return addr.log_guest_addr if addr.flags & (1 << VHOST_VRING_F_LOG) else None


def _set(vr: _Vring, **fields: object) -> None:
    for name, value in fields.items():
        setattr(vr, name, value)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _dup(fd: int | None) -> int | None:
    return None if fd is None else os.dup(fd)


_HANDLERS = {
    Request.GET_FEATURES: Session._get_features,
    Request.SET_FEATURES: Session._set_features,
    Request.SET_OWNER: Session._set_owner,
    Request.RESET_OWNER: Session._reset_owner,
    Request.SET_MEM_TABLE: Session._set_mem_table,
    Request.SET_VRING_NUM: Session._set_vring_num,
    Request.SET_VRING_ADDR: Session._set_vring_addr,
    Request.SET_VRING_BASE: Session._set_vring_base,
    Request.GET_VRING_BASE: Session._get_vring_base,
    Request.SET_VRING_KICK: Session._set_vring_kick,
    Request.SET_VRING_CALL: Session._set_vring_call,
    Request.SET_VRING_ERR: Session._set_vring_err,
    Request.GET_PROTOCOL_FEATURES: Session._get_protocol_features,
    Request.SET_PROTOCOL_FEATURES: Session._set_protocol_features,
    Request.GET_QUEUE_NUM: Session._get_queue_num,
    Request.SET_VRING_ENABLE: Session._set_vring_enable,
    Request.GET_CONFIG: Session._get_config,
    Request.SET_CONFIG: Session._set_config,
    Request.SET_BACKEND_REQ_FD: Session._set_backend_req_fd,
    Request.GET_MAX_MEM_SLOTS: Session._get_max_mem_slots,
    Request.ADD_MEM_REG: Session._add_mem_reg,
    Request.REM_MEM_REG: Session._rem_mem_reg,
    Request.GET_INFLIGHT_FD: Session._get_inflight_fd,
    Request.SET_INFLIGHT_FD: Session._set_inflight_fd,
    Request.SET_LOG_BASE: Session._set_log_base,
}

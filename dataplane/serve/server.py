"""The control plane: an asyncio (uvloop) server, one UNIX socket per device.

Each socket serves one vhost-user connection at a time; when QEMU drops it
(or breaks the protocol), the device's rings are stopped, its memory is
unmapped, and the next connection is accepted.

No connection can stop the process: whatever a session raises ends that
connection only (one log line with the device's name) and the device accepts
the next one.  The control plane can also drop a connection itself
(``DeviceServer.drop``): when guest RAM shrank under the mapping, or when the
device failed because a dataplane thread died.  A failed device accepts no
more connections; ``remove-device`` still removes it.
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import socket

from dataplane.device.blkdev import BlkDevice
from dataplane.errors import ImageTaken, ProtocolError
from dataplane.serve.backend_channel import BackendChannelError
from dataplane.serve.session import Session
from dataplane.serve.sockets import BoundSocket
from dataplane.vhost.messages import VHOST_MEMORY_BASELINE_NREGIONS

_FD_SIZE = array.array("i").itemsize
ACCEPT_RETRY_S = 1.0


async def _recv_with_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    while True:
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                size,
                socket.CMSG_SPACE(VHOST_MEMORY_BASELINE_NREGIONS * _FD_SIZE),
                socket.MSG_CMSG_CLOEXEC,
            )
            break
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writable=False)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            fds.extend(arr)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("a message carried more fds than any request allows")
    return data, fds


async def _ready(sock: socket.socket, *, writable: bool) -> None:
    """Wait until ``sock`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    add, remove = (
        (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    )
    ready = loop.create_future()
    add(sock.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        remove(sock.fileno())


async def _send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """Send one reply with ``fds`` (SCM_RIGHTS on its first byte), then close them."""
    try:
        while True:
            try:
                sent = socket.send_fds(sock, [data], fds)
                break
            except (BlockingIOError, InterruptedError):
                await _ready(sock, writable=True)
    finally:
        for fd in fds:
            os.close(fd)
        fds.clear()
    if sent < len(data):
        await asyncio.get_running_loop().sock_sendall(sock, data[sent:])


async def finish(coro) -> None:
    """Run ``coro`` to completion even if this task is cancelled meanwhile (shutdown)."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class DeviceServer:
    """Serves ``device`` on the listening socket ``bound``, one connection at a time (a
    front.py ``DeviceFront``)."""

    def __init__(self, device: BlkDevice, bound: BoundSocket, log: logging.Logger):
        self.device = device
        self.bound = bound
        self.sock = bound.sock
        self.path = bound.path
        self.log = log
        self.connections = 0
        self.connected = False  # a frontend is connected now
        self.session: Session | None = None
        self._conn_task: asyncio.Task | None = None
        self._drop_reason: str | None = None
        self._refused_logged = False

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        self.device.on_failure = lambda reason: loop.call_soon_threadsafe(self._failed, reason)
        self.device.on_frontend_error = lambda reason: loop.call_soon_threadsafe(
            self._frontend_failed, reason
        )
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # EMFILE and the like: the host's state, not a frontend's
                self.log.error(
                    "%s: accept failed: %s; retrying in %g s",
                    self.device.name,
                    e.strerror,
                    ACCEPT_RETRY_S,
                )
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self.device.failed is not None:
                conn.close()
                if not self._refused_logged:
                    self._refused_logged = True
                    self.log.warning(
                        "%s: connection refused: the device failed (%s); remove it",
                        self.device.name,
                        self.device.failed,
                    )
                continue
            self.connections += 1
            self.connected = True
            self._drop_reason = None
            self._conn_task = asyncio.ensure_future(self._serve_connection(conn))
            try:
                await self._conn_task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # removal or shutdown, not a drop
            finally:
                self.connected = False
                self._conn_task = None

    async def config_changed(self) -> bool | str:
        """Tell the connected frontend the config space changed (CONFIG_CHANGE_MSG on the
        backend channel): True, or why it was not told."""
        session = self.session
        if session is None:
            return "no frontend is connected (it reads the new size when it connects)"
        try:
            await session.config_changed()
        except BackendChannelError as e:
            return str(e)
        return True

    def drop(self, reason: str) -> None:
        """End the current connection (if any); ``reason`` is logged.  On the event loop."""
        if self._conn_task is not None and not self._conn_task.done():
            self._drop_reason = reason
            self._conn_task.cancel()

    def _failed(self, reason: str) -> None:
        self.log.error(
            "%s: device failed: %s; it accepts no more connections (remove-device removes it)",
            self.device.name,
            reason,
        )
        self.drop(f"device failed: {reason}")

    def _frontend_failed(self, reason: str) -> None:
        """A dataplane thread found the frontend at fault (its dirty log is too small): the
        connection goes, as for a protocol error."""
        if self.session is not None and self.session.dirty_log is not None:
            self.drop(f"protocol error: {reason}")

    def guest_memory_faulted(self) -> None:
        """SIGBUS containment woke us: drop the connection whose guest RAM (or inflight area)
        shrank, if it is ours."""
        session = self.session
        if session is None:
            return
        where = session.mem.faulted() if session.mem is not None else None
        if where is None and session.inflight is not None and session.inflight.faulted():
            where = "SIGBUS in the inflight area"
        if where is None and session.dirty_log is not None and session.dirty_log.faulted():
            where = "SIGBUS in the dirty log"
        if where is not None:
            asyncio.ensure_future(self._lose_memory(session, where))

    async def _lose_memory(self, session: Session, where: str) -> None:
        await session.break_rings(where)
        if self.session is session:
            self.drop(f"guest RAM shrank under the mapping ({where})")

    async def _serve_connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        session = self.session = Session(self.device, self.log)
        name = self.device.name
        self.log.info("%s: frontend connected", name)
        reason, level = "frontend disconnected", logging.INFO
        try:
            while True:
                # Never read past the current message: its fds must stay its own.
                data, fds = await _recv_with_fds(conn, max(session.conn.bytes_wanted(), 1))
                if not data:
                    for fd in fds:
                        os.close(fd)
                    break
                session.conn.receive_data(data, fds)
                while (msg := session.conn.next_message()) is not None:
                    reply = await session.handle(msg)
                    if session.reply_fds:
                        await _send_with_fds(conn, reply, session.reply_fds)
                    elif reply:
                        await loop.sock_sendall(conn, reply)
        except ProtocolError as e:
            reason, level = f"protocol error, connection dropped: {e}", logging.WARNING
        except ImageTaken as e:
            reason, level = f"connection dropped: {e}", logging.ERROR
        except asyncio.CancelledError:
            if self._drop_reason is None:
                raise  # removal or shutdown
            reason, level = f"connection dropped: {self._drop_reason}", logging.WARNING
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                reason, level = _internal(e), logging.ERROR
        except Exception as e:  # a bug, or a host failure: this connection only
            reason, level = _internal(e), logging.ERROR
            self.log.debug("%s: the session raised", name, exc_info=True)
        finally:
            try:
                await finish(session.close())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.error("%s: closing the session failed: %s: %s", name, type(e).__name__, e)
            finally:
                self.session = None
                conn.close()
                self.log.log(level, "%s: %s", name, reason)

    def close(self) -> None:
        self.bound.close()


def _internal(e: BaseException) -> str:
    return f"internal error, connection dropped: {type(e).__name__}: {e}"

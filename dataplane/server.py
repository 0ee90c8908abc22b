"""The control plane: an asyncio (uvloop) server, one UNIX socket per device.

Each socket serves one vhost-user connection at a time; when QEMU drops it
(or breaks the protocol), the device's rings are stopped, its memory is
unmapped, and the next connection is accepted.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from dataplane.device import BlkDevice
from dataplane.errors import ProtocolError, UsageError
from dataplane.session import Session
from dataplane.socket_access import MAX_SOCKET_PATH, SocketAccess
from dataplane.vhost.messages import VHOST_MEMORY_BASELINE_NREGIONS

_FD_SIZE = array.array("i").itemsize


def claim_socket_path(path: Path, access: SocketAccess | None = None) -> socket.socket:
    """Bind and listen on ``path``, replacing a stale socket but never a live one.

    ``access``: the mode, owner and group to give the socket file once bound.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; a UNIX socket path holds "
            f"at most {MAX_SOCKET_PATH}: choose a shorter one"
        )
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"socket path {path} exists and is not a socket: choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: nobody listens there
        except OSError as e:
            raise UsageError(f"socket path {path} is not usable: {e.strerror}") from None
        else:
            raise UsageError(
                f"socket path {path} is in use by a running server: stop it or choose another path"
            )
        finally:
            probe.close()
    if not path.parent.is_dir():
        raise UsageError(f"socket directory {path.parent} does not exist: create it first")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot bind socket {path}: {e.strerror or e}") from None
    if access:
        try:
            access.apply(path)
        except BaseException:
            sock.close()
            path.unlink(missing_ok=True)
            raise
    sock.listen(1)
    sock.setblocking(False)
    return sock


async def _recv_with_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                size, socket.CMSG_SPACE(VHOST_MEMORY_BASELINE_NREGIONS * _FD_SIZE)
            )
            break
        except (BlockingIOError, InterruptedError):
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
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


async def _finish(coro) -> None:
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
    """Serves ``device`` on the listening socket ``sock``, one connection at a time.

    ``path``: the socket file to remove at close; None for an inherited socket, whose
    file belongs to whoever bound it (systemd keeps it for the next activation).
    """

    def __init__(
        self, device: BlkDevice, sock: socket.socket, path: Path | None, log: logging.Logger
    ):
        self.device = device
        self.sock = sock
        self.path = path
        self.log = log
        self.connections = 0
        self.connected = False  # a frontend is connected now

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self.connections += 1
            self.connected = True
            try:
                await self._serve_connection(conn)
            finally:
                self.connected = False

    async def _serve_connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        session = Session(self.device, self.log)
        self.log.info("%s: frontend connected", self.device.name)
        reason = "frontend disconnected"
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
                    if reply:
                        await loop.sock_sendall(conn, reply)
        except ProtocolError as e:
            reason = f"protocol error, connection dropped: {e}"
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
        finally:
            try:
                await _finish(session.close())
            finally:
                conn.close()
                level = logging.WARNING if reason.startswith("protocol") else logging.INFO
                self.log.log(level, "%s: %s", self.device.name, reason)

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

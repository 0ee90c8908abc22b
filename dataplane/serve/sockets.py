"""The listening UNIX sockets of the process, device and management alike: claimed safely
(a stale socket replaced, a live one refused, owner, group and mode set before anyone can
connect) and removed only while they are still ours.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from dataplane.errors import UsageError
from dataplane.serve.socket_access import MAX_SOCKET_PATH, SocketAccess

SOCKET_MODE = 0o600  # device and management sockets, whatever the umask

__all__ = ["SOCKET_MODE", "BoundSocket", "check_socket_path", "claim_socket_path"]


@dataclass(slots=True)
class BoundSocket:
    """A listening UNIX socket and the file it bound: ``close`` removes that file only.

    The path is unlinked only while it still names the socket file this
    process created (same device and inode), never a file another process
    put there since, nor a live server's socket found at start-up.  An
    inherited socket (``socket=fd:N``, systemd) has no path of ours: its file
    belongs to whoever bound it (systemd keeps it for the next activation).
    """

    sock: socket.socket
    path: Path | None
    dev: int = 0
    ino: int = 0

    @classmethod
    def inherited(cls, sock: socket.socket) -> BoundSocket:
        sock.setblocking(False)
        return cls(sock, None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def abandon(self) -> None:
        """Undo a claim that came to nothing: an inherited fd stays open for its owner."""
        if self.path is None:
            self.sock.detach()
        else:
            self.close()

    def close(self) -> None:
        self.sock.close()
        if self.path is None:
            return
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == (self.dev, self.ino):
            try:
                self.path.unlink(missing_ok=True)
            except PermissionError:  # serve --user USER, and a directory USER may not write
                logging.getLogger("dataplane").warning(
                    "cannot remove socket %s: its directory is not writable by uid %d "
                    "(--user: give the user a directory of its own)",
                    self.path,
                    os.getuid(),
                )


def check_socket_path(path: Path) -> None:
    """UsageError unless ``path`` is free, or a stale socket (removed here), in an existing dir.

    The probe never blocks: a non-blocking connect to a live server whose
    backlog is full fails with EAGAIN, which also means "in use".
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; a UNIX socket path holds "
            f"at most {MAX_SOCKET_PATH}: choose a shorter one"
        )
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"socket path {path} exists and is not a socket: choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: nobody listens there
        except BlockingIOError:
            raise UsageError(
                f"socket path {path} is in use by a running server (busy): stop it or choose "
                "another path"
            ) from None
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


def claim_socket_path(
    path: Path,
    *,
    backlog: int = 1,
    mode: int = SOCKET_MODE,
    access: SocketAccess | None = None,
) -> BoundSocket:
    """Bind and listen on ``path``, replacing a stale socket only.

    The file gets ``access`` (socket-owner, -group, -mode), its mode ``mode``
    when ``access`` names none, between bind and listen: nobody can connect
    while the file still has the umask's mode (connect to a socket that does
    not listen yet is refused).
    """
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot bind socket {path}: {e.strerror or e}") from None
    st = path.lstat()
    bound = BoundSocket(sock, path, st.st_dev, st.st_ino)
    given = access or SocketAccess()
    try:
        # Owner, group and mode before listen: nobody connects while the umask's mode holds.
        SocketAccess(
            given.mode if given.mode is not None else mode, given.owner, given.group
        ).apply(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        bound.close()
        raise UsageError(f"cannot listen on socket {path}: {e.strerror}") from None
    except BaseException:
        bound.close()
        raise
    return bound

"""Inherited listening sockets (``socket=fd:N``, systemd socket activation) and ``sd_notify``.

systemd's protocol (sd_listen_fds(3), sd_notify(3)), implemented here in its documented
few lines rather than through a library:

- **Socket activation.**  ``LISTEN_PID`` is our pid and ``LISTEN_FDS`` the number of
  sockets passed, as fds 3, 4, ...; ``LISTEN_FDNAMES`` names them, colon-separated
  (``FileDescriptorName=`` in the .socket unit, else the unit's name).  The variables are
  read once and removed from the environment, so that no child takes them for its own.
  A device takes the fd named after it (``name=``), or the one its ``socket=fd:NAME`` or
  ``socket=fd:N`` names.
- **Readiness.**  ``$NOTIFY_SOCKET`` is a datagram socket path, or an abstract one when it
  starts with ``@``; one datagram of ``KEY=VALUE`` lines: ``READY=1`` once every device
  listens, ``STOPPING=1`` when shutting down, ``STATUS=...`` for ``systemctl status``.

A socket passed with ``socket=fd:N`` (QEMU's tests pass one so, as for qemu-storage-daemon's
``addr.type=fd``) must be a listening UNIX stream socket; the server adopts it and never
unlinks its path, which belongs to whoever bound it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.errors import UsageError

SD_LISTEN_FDS_START = 3


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """A listening socket this process was given: its fd and, from systemd, its name."""

    fd: int
    name: str = ""

    def __str__(self) -> str:
        return f"fd:{self.fd}"

    def describe(self) -> str:
        return f"fd {self.fd}" + (f" ({self.name})" if self.name else "")


_listen_fds: list[InheritedSocket] | None = None


def listen_fds() -> list[InheritedSocket]:
    """The sockets systemd passed (``LISTEN_FDS``), read once; [] when none were passed."""
    global _listen_fds
    if _listen_fds is None:
        _listen_fds = _read_listen_env(os.environ)
    return _listen_fds


def _read_listen_env(env: os._Environ[str] | dict[str, str]) -> list[InheritedSocket]:
    pid, count = env.pop("LISTEN_PID", None), env.pop("LISTEN_FDS", None)
    names_text = env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            return []  # meant for another process (we were started by the one it was for)
        n = int(count)
    except ValueError:
        raise UsageError(f"LISTEN_PID={pid!r} LISTEN_FDS={count!r}: not numbers") from None
    names = names_text.split(":") if names_text else []
    if names and len(names) != n:
        raise UsageError(f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS is {n}")
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
        # systemd's default name for an unnamed fd is "unknown": no device is called that.
        name = names[i] if names and names[i] != "unknown" else ""
        out.append(InheritedSocket(fd, name))
    return out


def parse_fd_socket(text: str, key: str = "socket") -> InheritedSocket:
    """``fd:N`` (an inherited fd number) or ``fd:NAME`` (a systemd socket by name)."""
    ref = text.removeprefix("fd:")
    if ref.isdigit():
        fd = int(ref)
        for s in listen_fds():
            if s.fd == fd:
                return s
        if fd < SD_LISTEN_FDS_START:
            raise ValueError(f"{key}={text}: fd {fd} is stdin, stdout or stderr, not a socket")
        return InheritedSocket(fd)
    for s in listen_fds():
        if s.name == ref:
            return s
    names = ", ".join(s.name for s in listen_fds() if s.name)
    raise ValueError(
        f"{key}={text}: no inherited socket is named {ref!r} "
        + (f"(LISTEN_FDNAMES: {names})" if names else "(no sockets were passed by systemd)")
    )


def socket_named(name: str) -> InheritedSocket | None:
    """The systemd socket whose name (``FileDescriptorName=``) is ``name``, if any."""
    return next((s for s in listen_fds() if s.name and s.name == name), None)


def unclaimed_sockets(used: Iterable[object]) -> list[InheritedSocket]:
    """The systemd sockets not among ``used`` (logged: a unit names a device we lack)."""
    taken = {s.fd for s in used if isinstance(s, InheritedSocket)}
    return [s for s in listen_fds() if s.fd not in taken]


def adopt_socket(inherited: InheritedSocket) -> socket.socket:
    """The inherited fd as a non-blocking listening socket (UsageError if it is not one)."""
    where = f"socket={inherited}"
    try:
        sock = socket.socket(fileno=inherited.fd)
    except OSError as e:
        raise UsageError(
            f"{where}: fd {inherited.fd} is not an open socket ({e.strerror})"
        ) from None
    try:
        ok = (
            sock.family == socket.AF_UNIX
            and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        ok = False
    if not ok:
        sock.detach()  # not ours to close: whoever passed it may need it
        raise UsageError(f"{where}: fd {inherited.fd} is not a listening UNIX stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def notify(*states: str) -> bool:
    """Send ``states`` (``READY=1``, ...) to ``$NOTIFY_SOCKET``; False when there is none."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]  # the abstract namespace
    elif not target.startswith("/"):
        return False  # vsock addresses (vsock:CID:PORT) are for VMs; we are not one
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto("\n".join(states).encode(), target)
        except OSError:
            return False  # the manager went away: nothing to tell
    return True

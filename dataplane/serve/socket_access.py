"""Who may connect to a device's socket: ``socket-mode=``, ``socket-group=``, ``socket-owner=``.

A vhost-user socket is a door into the device: whoever can connect to it is the frontend.
libvirt runs QEMU as its own user (Debian: ``libvirt-qemu``), so the socket must be
given to that user or its group; these keys do it right after the socket is bound, before
any frontend can be served.  Changing the owner needs root (chown); the group, root or a
member of that group.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from dataplane.errors import UsageError

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL


@dataclass(frozen=True, slots=True)
class SocketAccess:
    """The mode, owner and group to give a socket file (None: leave as bound)."""

    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    def __bool__(self) -> bool:
        return self.mode is not None or self.owner is not None or self.group is not None

    def apply(self, path: Path) -> None:
        """chown, then chmod ``path``; UsageError naming what the OS refused."""
        uid = -1 if self.owner is None else user_id(self.owner)
        gid = -1 if self.group is None else group_id(self.group)
        try:
            if uid != -1 or gid != -1:
                os.chown(path, uid, gid, follow_symlinks=False)
            if self.mode is not None:
                os.chmod(path, self.mode)
        except OSError as e:
            raise UsageError(
                f"cannot give socket {path} {self._describe()}: {e.strerror}"
                + (" (socket-owner needs root)" if uid != -1 and os.geteuid() != 0 else "")
            ) from None

    def _describe(self) -> str:
        parts = []
        if self.owner is not None:
            parts.append(f"owner {self.owner}")
        if self.group is not None:
            parts.append(f"group {self.group}")
        if self.mode is not None:
            parts.append(f"mode {self.mode:04o}")
        return ", ".join(parts)


def parse_mode(key: str, value: object) -> int:
    """``"0660"``, ``"660"`` or a TOML ``0o660``: permission bits, at most 0777."""
    if isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not an octal mode like 0660")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and value.strip().isdigit():
        try:
            mode = int(value.strip(), 8)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not an octal mode like 0660") from None
    else:
        raise ValueError(f"{key}={value!r} is not an octal mode like 0660")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{key}={value!r} is not an octal mode from 0000 to 0777")
    return mode


def user_id(user: str) -> int:
    """A user name or number -> uid (ValueError if there is no such user)."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"no user named {user!r}") from None


def group_id(group: str) -> int:
    """A group name or number -> gid (ValueError if there is no such group)."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r}") from None


def parse_user(key: str, value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text:
        raise ValueError(f"{key}={value!r} must be a user name or number")
    try:
        user_id(text)
    except ValueError as e:
        raise ValueError(f"{key}={text}: {e}") from None
    return text


def parse_group(key: str, value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text:
        raise ValueError(f"{key}={value!r} must be a group name or number")
    try:
        group_id(text)
    except ValueError as e:
        raise ValueError(f"{key}={text}: {e}") from None
    return text

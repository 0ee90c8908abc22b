"""Confinement after start-up: another user, no new privileges, seccomp allow-lists.

``dataplane serve`` calls ``no_new_privs`` first thing, and ``confine`` once every
socket is bound and every image is open: the user switch (``--user``), then the
control list on every thread (control.py).  Each dataplane thread loads its own,
narrower list (iothread.py) on itself: ``IoThread`` calls ``load_iothread`` before its
first run, or, for a thread that already ran, as a command.  A filter applies to
the thread that loads it and the threads it starts later.

Modes (``--sandbox``): ``on`` kills the process on a call outside the list
(SIGSYS); ``log`` allows it and the kernel logs it (``audit: type=1326 ... syscall=N``
in dmesg); ``off`` loads nothing.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import threading

from dataplane.device.sandbox import control, iothread
from dataplane.errors import UsageError

MODES = ("on", "off", "log")
SANDBOX_ENV = "DATAPLANE_SANDBOX"  # the default of --sandbox (the suite runs with it set)
_PR_SET_NO_NEW_PRIVS = 38

_mode = "off"  # what confine() loaded; dataplane threads follow
_lock = threading.Lock()

__all__ = ["MODES", "confine", "default_mode", "load_iothread", "no_new_privs", "check_user"]


def default_mode() -> str:
    """``--sandbox``'s default: $DATAPLANE_SANDBOX if set, else on."""
    mode = os.environ.get(SANDBOX_ENV, "on") or "on"
    if mode not in MODES:
        raise UsageError(f"${SANDBOX_ENV}={mode!r}: expected one of on, off, log")
    return mode


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS on this thread (and, through TSYNC or inheritance, every later one)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def check_user(spec: str) -> tuple[str, int, int]:
    """``USER[:GROUP]`` (names or numbers) as (user name, uid, gid); UsageError if unknown,
    or if this process is not root and not that user already."""
    user, _, group = spec.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--user {spec}: no user {user!r} on this host (getent passwd)") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(
                f"--user {spec}: no group {group!r} on this host (getent group)"
            ) from None
    return pw.pw_name, pw.pw_uid, gid


def _switch_user(spec: str) -> None:
    name, uid, gid = check_user(spec)
    if os.geteuid() != 0:
        return  # already that user (check_user)
    # The user's own supplementary groups, as a login would give: what add-device may open.
    groups = os.getgrouplist(name, gid)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # glibc applies it to every thread; capabilities are cleared


def load(names: list[str], *, log: bool, tsync: bool) -> None:
    """Load an allow-list of ``names`` on this thread (every thread with ``tsync``)."""
    from dataplane.device.c import sandbox  # the extension, only once confining

    sandbox.load(names, log=log, tsync=tsync)


def confine(mode: str, user: str | None) -> None:
    """After start-up: switch to ``user`` (if any), then load the control list (``mode``)."""
    global _mode
    if user is not None:
        _switch_user(user)
    if mode == "off":
        return
    with _lock:
        load(sorted(control.ALLOW), log=mode == "log", tsync=True)
        _mode = mode


def load_iothread(engine: str) -> bool:
    """On a dataplane thread: its list (with ``engine``'s extras); False if the sandbox is off."""
    names = dict(iothread.ALLOW)
    names.update(iothread.ENGINE_ALLOW.get(engine, {}))
    with _lock:  # not between confine()'s TSYNC and its mode: TSYNC needs one filter tree
        if _mode == "off":
            return False
        load(sorted(names), log=_mode == "log", tsync=False)
    return True

"""csrc/device/dp_sandbox.h: loading a seccomp allow-list (through libseccomp)."""

from __future__ import annotations

from dataplane.device.c import check, ffi, lib

__all__ = ["load"]


def load(names: list[str], *, log: bool, tsync: bool) -> None:
    """Allow only the system calls ``names`` on this thread (every thread with ``tsync``);
    ``log``: a call outside them is logged, not killed.  ValueError names an unknown call."""
    keep = [ffi.new("char[]", n.encode()) for n in names]
    bad = ffi.new("int *")
    rc = lib.dp_sandbox_load(ffi.new("const char *[]", keep), len(names), log, tsync, bad)
    if rc < 0 and bad[0] >= 0:
        raise ValueError(f"seccomp: unknown system call {names[bad[0]]!r} in an allow-list")
    check(rc, "seccomp: loading the allow-list failed")

"""csrc/dp_sandbox.h: load a seccomp allow-list of system call names."""

from __future__ import annotations

import os

from dataplane.device.c import ffi, lib

__all__ = ["load"]


def load(names: list[str], *, log: bool, tsync: bool) -> None:
    """Load an allow-list of ``names`` on this thread (every thread with ``tsync``)."""
    keep = [ffi.new("char[]", n.encode()) for n in names]
    arr = ffi.new("const char *[]", keep)
    bad = ffi.new("int *")
    rc = lib.dp_sandbox_load(arr, len(names), int(log), int(tsync), bad)
    if rc < 0:
        if bad[0] >= 0:
            raise ValueError(f"seccomp: unknown system call {names[bad[0]]!r} in an allow-list")
        raise OSError(-rc, f"seccomp: loading the allow-list failed: {os.strerror(-rc)}")

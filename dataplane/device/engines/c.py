"""The C engines of the native data path: null, threads, io_uring and Linux AIO.

The native data path (``dataplane.device.datapath.c``) submits and reaps in C,
so it needs engines that C can drive: ``struct dp_engine`` (csrc/dp_engine.c).
They have the names and the semantics of the Python engines in this package,
and ``open_c_engine`` falls back exactly as ``open_engine`` does.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dataplane.clib import ffi, lib
from dataplane.device.engines import open_engine
from dataplane.device.engines.uring import _why_unavailable
from dataplane.errors import EngineUnavailable, UsageError

KINDS: dict[str, int] = {
    "io_uring": lib.DP_ENGINE_URING,
    "native": lib.DP_ENGINE_AIO,
    "threads": lib.DP_ENGINE_THREADS,
    "null": lib.DP_ENGINE_NULL,
}

# io_uring set-up options (csrc/dp_uring.h); see bench/RESULTS.md for what each one is worth.
URING_OPTIONS: dict[str, int] = {
    "single-issuer": lib.DP_URING_SINGLE_ISSUER,
    "coop-taskrun": lib.DP_URING_COOP_TASKRUN,
    "defer-taskrun": lib.DP_URING_DEFER_TASKRUN,
    "fixed-file": lib.DP_URING_FIXED_FILE,
    "fixed-buffers": lib.DP_URING_FIXED_BUFFERS,
}
# Measured on a page-cached image (bench/RESULTS.md): DEFER_TASKRUN (which needs
# SINGLE_ISSUER) runs completions in our thread when we reap, instead of interrupting it;
# registered files and buffers gained nothing measurable and buffers pin all of guest RAM.
DEFAULT_URING_FLAGS = lib.DP_URING_SINGLE_ISSUER | lib.DP_URING_DEFER_TASKRUN
# For measuring the options: e.g. DATAPLANE_URING_OPTIONS=single-issuer,fixed-file.
URING_OPTIONS_ENV = "DATAPLANE_URING_OPTIONS"


def uring_flags_from_env() -> int:
    """The io_uring options named in $DATAPLANE_URING_OPTIONS, else the default."""
    names = os.environ.get(URING_OPTIONS_ENV)
    if names is None:
        return DEFAULT_URING_FLAGS
    flags = 0
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in URING_OPTIONS:
            raise UsageError(
                f"{URING_OPTIONS_ENV}: unknown option {name!r}: choose from "
                f"{', '.join(URING_OPTIONS)}"
            )
        flags |= URING_OPTIONS[name]
    return flags


class CEngine:
    """One ``struct dp_engine``, opened on an image fd; the native data path drives it."""

    def __init__(self, name: str, fd: int, queue_depth: int, uring_flags: int = 0) -> None:
        err = ffi.new("int *")
        handle = lib.dp_engine_open(KINDS[name], fd, queue_depth, uring_flags, err)
        if handle == ffi.NULL:
            raise EngineUnavailable(_why(name, queue_depth, -err[0]))
        self.name = name
        self.fd = fd
        self.queue_depth = queue_depth
        self.handle: Any = handle

    def close(self) -> None:
        if self.handle != ffi.NULL:
            lib.dp_engine_close(self.handle)
            self.handle = ffi.NULL


def _why(name: str, queue_depth: int, err: int) -> str:
    if name == "io_uring":
        return _why_unavailable(err)
    if name == "native":
        return f"Linux AIO io_setup({queue_depth}) failed: {os.strerror(err)}"
    return f"{name} engine: {os.strerror(err)}"


def open_c_engine(
    name: str,
    fd: int,
    queue_depth: int,
    log: logging.Logger,
    uring_flags: int | None = None,
) -> CEngine:
    """Open C engine ``name``, falling back (with one warning each) as ``open_engine`` does."""
    if uring_flags is None:
        uring_flags = uring_flags_from_env()
    constructors = {n: _constructor(n, uring_flags) for n in KINDS}
    return open_engine(name, fd, queue_depth, log, engines=constructors)


def _constructor(name: str, uring_flags: int):
    return lambda fd, queue_depth: CEngine(name, fd, queue_depth, uring_flags)

"""The C datapath's engines on an image file: null, threads, io_uring and Linux AIO.

The C datapath (``dataplane.device.datapath.c``) submits and reaps in C, so it
needs engines that C can drive: ``struct dp_engine`` (csrc/device/dp_engine.c, bound in
device/c/engine.py).  They have the names and the semantics of the Python engines
in this package, and ``open_local_engine`` falls back exactly as ``open_engine``
does (engines/fallback.py).  Its remote twins (NBD, RBD) are in remote.py.
"""

from __future__ import annotations

import logging
import os

from dataplane.device.c.engine import KINDS, EngineHandle, open_local
from dataplane.device.c.uring import OPTIONS as URING_OPTIONS
from dataplane.device.engines.fallback import open_with_fallback
from dataplane.errors import UsageError

# Measured on a page-cached image (bench/RESULTS.md): DEFER_TASKRUN (which needs
# SINGLE_ISSUER) runs completions in our thread when we reap, instead of interrupting it;
# registered files and buffers gained nothing measurable and buffers pin all of guest RAM.
DEFAULT_URING_FLAGS = URING_OPTIONS["single-issuer"] | URING_OPTIONS["defer-taskrun"]
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


class LocalEngine(EngineHandle):
    """One ``struct dp_engine``, opened on an image fd; the C datapath drives it."""

    def __init__(self, name: str, fd: int, queue_depth: int, uring_flags: int = 0) -> None:
        super().__init__(name, open_local(name, fd, queue_depth, uring_flags), queue_depth)
        self.fd = fd


def open_local_engine(
    name: str,
    fd: int,
    queue_depth: int,
    log: logging.Logger,
    uring_flags: int | None = None,
) -> LocalEngine:
    """Open C engine ``name``, falling back (with one warning each) as ``open_engine`` does."""
    if uring_flags is None:
        uring_flags = uring_flags_from_env()
    constructors = {n: _constructor(n, uring_flags) for n in KINDS}
    return open_with_fallback(name, fd, queue_depth, log, constructors)


def _constructor(name: str, uring_flags: int):
    return lambda fd, queue_depth: LocalEngine(name, fd, queue_depth, uring_flags)

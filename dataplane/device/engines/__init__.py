"""I/O engines behind one interface (see base.py), and how to open one by name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from dataplane.device.engines.aio import AioEngine
from dataplane.device.engines.base import Engine
from dataplane.device.engines.null import NullEngine
from dataplane.device.engines.threads import ThreadsEngine
from dataplane.device.engines.uring import UringEngine
from dataplane.device.io_request import IoRequest, Op
from dataplane.errors import EngineUnavailable, UsageError

ENGINES: dict[str, type[Engine]] = {
    cls.name: cls for cls in (UringEngine, AioEngine, ThreadsEngine, NullEngine)
}

E = TypeVar("E")

# Where to go when an engine cannot be set up on this host.
FALLBACK: dict[str, str] = {"io_uring": AioEngine.name, AioEngine.name: "threads"}


def open_engine(
    name: str,
    fd: int,
    queue_depth: int,
    log: logging.Logger,
    engines: Mapping[str, Callable[[int, int], E]] = ENGINES,
) -> E:
    """Open engine ``name`` on ``fd``, falling back (with one warning each) when unavailable.

    ``engines`` maps names to constructors: the Python engines by default, or
    the C datapath's (``dataplane.device.engines.local``).
    """
    if name not in engines:
        raise UsageError(f"unknown engine {name!r}: choose one of {', '.join(engines)}")
    while True:
        try:
            return engines[name](fd, queue_depth)
        except EngineUnavailable as e:
            fallback = FALLBACK.get(name)
            if fallback is None:
                raise
            log.warning("%s is unavailable (%s); falling back to %s", name, e, fallback)
            name = fallback


__all__ = [
    "ENGINES",
    "AioEngine",
    "Engine",
    "EngineUnavailable",
    "IoRequest",
    "NullEngine",
    "Op",
    "ThreadsEngine",
    "UringEngine",
    "open_engine",
]

"""I/O engines behind one interface (see base.py), and how to open one by name."""

from __future__ import annotations

import logging

from dataplane.device.engines.aio import AioEngine
from dataplane.device.engines.base import Engine
from dataplane.device.engines.fallback import open_with_fallback
from dataplane.device.engines.null import NullEngine
from dataplane.device.engines.threads import ThreadsEngine
from dataplane.device.engines.uring import UringEngine
from dataplane.device.io_request import IoRequest, Op
from dataplane.errors import EngineUnavailable

ENGINES: dict[str, type[Engine]] = {
    cls.name: cls for cls in (UringEngine, AioEngine, ThreadsEngine, NullEngine)
}


def open_engine(name: str, fd: int, queue_depth: int, log: logging.Logger) -> Engine:
    """Open Python engine ``name`` on ``fd``, falling back as engines/fallback.py says."""
    return open_with_fallback(name, fd, queue_depth, log, ENGINES)


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

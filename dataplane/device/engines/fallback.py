"""Opening an engine by name, falling back where this host cannot set it up.

io_uring falls back to Linux AIO, and Linux AIO to threads, with one warning each.
The Python engines (``engines.open_engine``) and the C datapath's
(``engines.local.open_local_engine``) open through it alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from dataplane.errors import EngineUnavailable, UsageError
from dataplane.spec.choices import IO_URING, LINUX_AIO, THREADS

E = TypeVar("E")

# Where to go when an engine cannot be set up on this host.
FALLBACK: dict[str, str] = {IO_URING: LINUX_AIO, LINUX_AIO: THREADS}


def open_with_fallback(
    name: str,
    fd: int,
    queue_depth: int,
    log: logging.Logger,
    engines: Mapping[str, Callable[[int, int], E]],
) -> E:
    """Open engine ``name`` on ``fd``, falling back (with one warning each) when unavailable.

    ``engines`` maps names to constructors (``fd, queue_depth``).
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

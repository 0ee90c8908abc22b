"""The datapath factory: the Python reference or the C datapath, on the engine asked for."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from dataplane.device.datapath.base import DATAPATHS, Datapath
from dataplane.device.disk import Disk
from dataplane.device.engines.delay import TestDelay, set_c_test_delay
from dataplane.device.engines.remote import REMOTE_POLL_US
from dataplane.device.instrument import Instruments
from dataplane.errors import UsageError
from dataplane.spec.choices import DEFAULT_POLL_US

if TYPE_CHECKING:
    from dataplane.device.engines.local import LocalEngine
    from dataplane.device.engines.remote import RemoteEngine

# Adaptive polling on by default, as QEMU's iothreads poll by default (poll-max-ns).  QEMU's
# 32 µs is shorter than an interrupt-driven guest's turnaround on a VM host, where waking an
# idle vCPU took 15-50 µs (bench/RESULTS.md): a window that short expires, and both sides sleep.
# (The number is in spec/choices.py, where the bench reads it too.)

__all__ = [
    "DATAPATHS",
    "DEFAULT_POLL_US",
    "REMOTE_POLL_US",
    "open_datapath",
    "open_remote_datapath",
]


def open_datapath(
    kind: str,
    disk: Disk,
    engine: str,
    image_fd: int,
    queue_depth: int,
    queues: Iterable[int],
    log: logging.Logger,
    *,
    poll_us: int | None = None,
    instruments: Instruments | None = None,
    test_delay: TestDelay | None = None,
) -> Datapath:
    """The ``kind`` data path ("native": C, or "python") with engine ``engine`` on ``image_fd``.

    The engine falls back as ``open_engine`` says; ``poll_us`` (adaptive
    polling; None: DEFAULT_POLL_US) and ``test_delay`` (TEST ONLY: every Nth
    completion of the engine held back) exist only on the C datapath.
    ``instruments`` (--record, --trace-requests) must outlive the datapath.
    """
    if kind == "native":
        from dataplane.device.engines.local import open_local_engine

        local = open_local_engine(engine, image_fd, queue_depth, log)
        try:
            if test_delay is not None:
                set_c_test_delay(local.handle, test_delay)
        except BaseException:
            local.close()
            raise
        return _c_datapath(disk, local, queues, log, DEFAULT_POLL_US, poll_us, instruments)
    if kind == "python":
        from dataplane.device.datapath.python import PythonDatapath
        from dataplane.device.engines import open_engine

        if poll_us:
            raise UsageError("--poll-us needs --datapath native")
        if test_delay is not None:
            raise UsageError("test-delay needs --datapath native")
        eng = open_engine(engine, image_fd, queue_depth, log)
        try:
            return PythonDatapath(disk, eng, queues, log, instruments)
        except BaseException:
            eng.close()
            raise
    raise UsageError(f"unknown datapath {kind!r}: choose one of {', '.join(DATAPATHS)}")


def open_remote_datapath(
    disk: Disk,
    engine: RemoteEngine,
    queues: Iterable[int],
    log: logging.Logger,
    *,
    poll_us: int | None = None,
    instruments: Instruments | None = None,
) -> Datapath:
    """The C data path over ``engine``, a remote disk's connection (remote disks have no
    Python path), which the datapath owns from here on.  ``poll_us`` None: REMOTE_POLL_US."""
    return _c_datapath(disk, engine, queues, log, REMOTE_POLL_US, poll_us, instruments)


def _c_datapath(
    disk: Disk,
    engine: LocalEngine | RemoteEngine,
    queues: Iterable[int],
    log: logging.Logger,
    default_poll_us: int,
    poll_us: int | None,
    instruments: Instruments | None,
) -> Datapath:
    """The C data path over ``engine``, which it owns from here on (closed here if the
    datapath cannot be built)."""
    from dataplane.device.datapath.c import CDatapath

    try:
        return CDatapath(
            disk, engine, queues, log,
            poll_us=default_poll_us if poll_us is None else poll_us, instruments=instruments,
        )  # fmt: skip
    except BaseException:
        engine.close()
        raise

"""SET_MEM_TABLE's host side: a warning for regions that may shrink, mapping off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Callable

from dataplane.device.memory import GuestMemory
from dataplane.vhost.messages import MemTable, RegionSpec

__all__ = ["add_off_loop", "map_off_loop", "warn_unsealed"]


def warn_unsealed(log: logging.Logger, device: str, index: int, fd: int) -> None:
    """One warning line for a region whose file may shrink under the mapping.

    QEMU's memory-backend-memfd seals its memfds against shrinking by
    default; a region that is not sealed can be truncated by the frontend
    while mapped, which the SIGBUS containment (csrc/device/dp_sigbus.h) turns
    into a dropped connection instead of a dead process.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = None  # not a memfd (a file, hugetlbfs...): nothing stops it shrinking
    if seals is None or not seals & fcntl.F_SEAL_SHRINK:
        log.warning(
            "%s: memory region %d is not sealed against shrinking (F_SEAL_SHRINK%s): "
            "a frontend that truncates it costs its connection",
            device,
            index,
            "; not a memfd" if seals is None else "",
        )


async def map_off_loop(table: MemTable) -> GuestMemory:
    """Map the regions on a worker thread: fstat and mmap of a file on a hung filesystem
    (FUSE) would block the loop.  Cancelled meanwhile (the connection dropped), it still
    waits for the mapping to finish, and undoes it, before the caller closes the fds."""
    return await _off_loop(lambda: GuestMemory.map_fds(table.regions, table.fds), lambda m: m)


async def add_off_loop(mem: GuestMemory, spec: RegionSpec, fd: int) -> GuestMemory:
    """ADD_MEM_REG's ``mem.add_region``, mapped off the loop as ``map_off_loop`` maps; a
    cancelled one unmaps only the region it added (the others are ``mem``'s)."""

    def added(new: GuestMemory) -> GuestMemory:
        return GuestMemory(r for r in new.regions if r not in mem.regions)

    return await _off_loop(lambda: mem.add_region(spec, fd), added)


async def _off_loop(
    fn: Callable[[], GuestMemory], undo: Callable[[GuestMemory], GuestMemory]
) -> GuestMemory:
    """``fn()`` on a worker thread; if cancelled, ``undo(result)`` is closed once it is done."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled() and fut.exception() is None:
            undo(fut.result()).close()
        raise

"""The messages about memory the frontend shares with the session: the guest's RAM
(SET_MEM_TABLE, and CONFIGURE_MEM_SLOTS' GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG)
and the inflight area (INFLIGHT_SHMFD's GET_INFLIGHT_FD, SET_INFLIGHT_FD).

A new table reaches every dataplane thread of the device the same way, whatever message
made it: each thread swaps it in once nothing is in flight and re-attaches its rings
(IoThread.set_memory), and a region taken out is unmapped only after that (no use after
unmap).  Part of handler.Session, which holds the state these use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from dataplane.device.inflight import InflightArea
from dataplane.device.memory import MAX_MEM_SLOTS, GuestMemory
from dataplane.errors import ProtocolError
from dataplane.serve.mem_table import add_off_loop, map_off_loop, warn_unsealed
from dataplane.vhost.messages import Inflight, MemReg, MemTable

if TYPE_CHECKING:
    from dataplane.serve.blkdev import BlkDevice

__all__ = ["SharedMemoryMessages"]


class SharedMemoryMessages:
    """The memory messages of handler.Session."""

    device: BlkDevice
    log: logging.Logger
    mem: GuestMemory | None
    inflight: InflightArea | None
    reply_fds: list[int]

    def _rings_running(self) -> bool:
        raise NotImplementedError

    def _check_dirty_log(self, mem: GuestMemory) -> None:
        """ProtocolError if the threads log dirty pages and ``mem`` outgrows the log."""
        raise NotImplementedError

    # -- memory -----------------------------------------------------------------

    async def _set_mem_table(self, table: MemTable) -> None:
        try:
            for i, fd in enumerate(table.fds):
                warn_unsealed(self.log, self.device.name, i, fd)
            mem = await map_off_loop(table)
        finally:
            for fd in table.fds:
                os.close(fd)
        try:
            self._check_dirty_log(mem)
        except ProtocolError:
            mem.close()
            raise
        await self._set_memory_everywhere(mem)
        old, self.mem = self.mem, mem
        if old is not None:
            old.close()

    async def _get_max_mem_slots(self, _: None) -> int:
        return MAX_MEM_SLOTS

    async def _add_mem_reg(self, m: MemReg) -> None:
        """ADD_MEM_REG: the table plus one region, swapped in as SET_MEM_TABLE swaps."""
        assert m.fd is not None
        old = self.mem if self.mem is not None else GuestMemory(())
        try:
            warn_unsealed(self.log, self.device.name, len(old.regions), m.fd)
            mem = await add_off_loop(old, m.region, m.fd)
        finally:
            os.close(m.fd)
        try:
            self._check_dirty_log(mem)
        except ProtocolError:
            GuestMemory(r for r in mem.regions if r not in old.regions).close()
            raise
        await self._set_memory_everywhere(mem)
        self.mem = mem  # the old table's regions live on in the new one: not closed
        self._log_region("added", m)

    async def _rem_mem_reg(self, m: MemReg) -> None:
        """REM_MEM_REG: every thread lets go of the region before it is unmapped."""
        if self.mem is None:
            raise ProtocolError("REM_MEM_REG before any memory region was added")
        mem, gone = self.mem.remove_region(m.region)
        await self._set_memory_everywhere(mem)
        self.mem = mem
        gone.close()  # no thread holds the old table now: no use after unmap
        self._log_region("removed", m)

    def _log_region(self, what: str, m: MemReg) -> None:
        r = m.region
        self.log.info(
            "%s: memory region %s: guest %#x-%#x (%d MiB); %d regions mapped",
            self.device.name, what, r.guest_phys_addr, r.guest_phys_addr + r.memory_size - 1,
            r.memory_size >> 20, len(self.mem.regions) if self.mem else 0,
        )  # fmt: skip

    async def _set_memory_everywhere(self, mem: GuestMemory | None) -> None:
        """Every dataplane thread of the device gets the new table (each one owns rings)."""
        await asyncio.gather(*(asyncio.wrap_future(t.set_memory(mem)) for t in self.device.threads))

    # -- inflight I/O tracking ----------------------------------------------------

    def _replace_inflight(self, area: InflightArea | None, what: str) -> None:
        if self._rings_running():
            if area is not None:
                area.close()
            raise ProtocolError(f"{what} while rings run (they track in the current area)")
        old, self.inflight = self.inflight, area
        if old is not None:
            old.close()

    async def _get_inflight_fd(self, i: Inflight) -> Inflight:
        area = InflightArea.allocate(i.num_queues, i.queue_size, max_queues=self.device.num_queues)
        self._replace_inflight(area, "GET_INFLIGHT_FD")
        self.reply_fds.append(os.dup(area.fd))
        return Inflight(area.mmap_size, 0, i.num_queues, i.queue_size, self.reply_fds[-1])

    async def _set_inflight_fd(self, i: Inflight) -> None:
        assert i.fd is not None
        area = InflightArea.adopt(
            i.fd, i.mmap_size, i.mmap_offset, i.num_queues, i.queue_size,
            max_queues=self.device.num_queues,
        )  # fmt: skip
        self._replace_inflight(area, "SET_INFLIGHT_FD")

"""The dirty log of live migration: the bitmap SET_LOG_BASE shares, mapped and checked.

While QEMU migrates a guest it sends a log (VHOST_USER_PROTOCOL_F_LOG_SHMFD): a memfd
holding one bit per 4 KiB guest-physical page (QEMU's VHOST_LOG_PAGE), which the device
sets for every page it writes while VHOST_F_LOG_ALL is on (the layout:
dataplane/spec/dirty_log.py).  The C datapath writes it (csrc/device/dp_log.h); this module maps
it, after checking everything the frontend said about it, and keeps it mapped until no
dataplane thread uses it.

The frontend keeps the fd, and may shrink the file under the mapping: the mapping is
registered with the SIGBUS containment of csrc/device/dp_sigbus.h, as guest RAM is, and a fault
in it costs the connection (``faulted``).
"""

from __future__ import annotations

import fcntl
import mmap
import os

from dataplane.device.c import address_of, pinned, sigbus
from dataplane.device.memory import GuestMemory
from dataplane.errors import ProtocolError
from dataplane.spec.dirty_log import LOG_PAGE, PAGES_PER_BYTE, log_bytes_for

__all__ = ["DirtyLog"]


class DirtyLog:
    """The log of SET_LOG_BASE, mapped: ``host_addr`` and ``pages`` go to the C threads."""

    def __init__(self, fd: int, size: int, offset: int) -> None:
        """Map ``size`` bytes at ``offset`` of ``fd`` (the caller keeps ``fd``); ProtocolError
        if the fd is not a memfd or too small, or the log is empty."""
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            raise ProtocolError("SET_LOG_BASE: the log fd is not a memfd") from None
        if size <= 0:
            raise ProtocolError("SET_LOG_BASE: a log of 0 bytes")
        fd_size = os.fstat(fd).st_size
        if offset > fd_size or size > fd_size - offset:
            raise ProtocolError(
                f"SET_LOG_BASE: a log of {size} bytes at offset {offset} runs past the end "
                f"of its memfd ({fd_size} bytes)"
            )
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            self._map = mmap.mmap(fd, offset - base + size, offset=base)
        except (OSError, ValueError) as e:  # ValueError: the memfd shrank since fstat
            raise ProtocolError(f"SET_LOG_BASE: cannot map the log: {e}") from None
        self.size = size
        self.pages = size * PAGES_PER_BYTE
        self.view = memoryview(self._map)[offset - base :]
        self._ptr = pinned(self.view)
        self.host_addr = address_of(self._ptr)
        self._watch: sigbus.Watch | None = None
        try:
            self._watch = sigbus.Watch(self.host_addr - (offset - base), len(self._map))
        except BaseException:
            self.close()
            raise

    def check_covers(self, mem: GuestMemory, what: str = "SET_LOG_BASE") -> None:
        """ProtocolError (saying ``what`` did it) unless every page of guest RAM has its bit
        in the log."""
        end = max((r.gpa + r.size for r in mem.regions), default=0)
        if end > self.pages * LOG_PAGE:
            raise ProtocolError(
                f"{what}: a log of {self.size} bytes covers {self.pages * LOG_PAGE:#x} "
                f"bytes of guest RAM, which ends at {end:#x} (it needs {log_bytes_for(end)})"
            )

    def faulted(self) -> bool:
        """True once the frontend shrank the memfd under the mapping (a contained SIGBUS)."""
        return self._watch is not None and self._watch.faulted()

    def close(self) -> None:
        """Unmap: only once no thread logs into it (IoThread.set_dirty_log returned)."""
        if self._watch is not None:
            self._watch.close()
        self._ptr = None
        self.view.release()
        self._map.close()

"""The frontend's side of dirty logging: what QEMU does while it migrates a guest.

When migration starts, QEMU (hw/virtio/vhost.c vhost_migration_log) allocates a log for
guest RAM in a sealed memfd, shares it with SET_LOG_BASE (LOG_SHMFD), turns VHOST_F_LOG_ALL
on with SET_FEATURES, and sends every ring's SET_VRING_ADDR again with VHOST_VRING_F_LOG and
the used ring's guest-physical address; when it ends, it sends both without them.  The
benchmark's ``--dirty-log`` and the tests play that part with ``MigrationLog``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Iterable

from dataplane.errors import ProtocolError
from dataplane.guest.frontend import Frontend
from dataplane.guest.ring import DriverRing, GuestRam
from dataplane.guest.virtio_blk import vring_addr
from dataplane.spec.dirty_log import log_bytes_for, logged_pages
from dataplane.vhost.messages import VHOST_F_LOG_ALL, LogBase, ProtocolFeature

__all__ = ["MigrationLog"]


class MigrationLog:
    """A log for guest RAM below ``ram_end``, in a memfd sealed as QEMU seals its own."""

    def __init__(self, ram_end: int) -> None:
        self.size = log_bytes_for(ram_end)
        self.fd = os.memfd_create("vhost-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
            self._map = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise

    def pages(self) -> set[int]:
        """The pages the device logged so far."""
        return logged_pages(memoryview(self._map))

    def start(
        self, fe: Frontend, features: int, ram: GuestRam, rings: Iterable[tuple[int, DriverRing]]
    ) -> None:
        """SET_LOG_BASE, SET_FEATURES with LOG_ALL, SET_VRING_ADDR with the log flag on
        every ring (index, ring): dirty logging on, in QEMU's order."""
        if not fe.protocol_features & (1 << ProtocolFeature.LOG_SHMFD):
            raise ProtocolError("the backend does not offer LOG_SHMFD: it cannot log")
        fe.set_log_base(LogBase(self.size, 0, self.fd))
        fe.set_features(features | 1 << VHOST_F_LOG_ALL)
        for index, ring in rings:
            fe.set_vring_addr(vring_addr(ram, index, ring, log=True))

    @staticmethod
    def stop(
        fe: Frontend, features: int, ram: GuestRam, rings: Iterable[tuple[int, DriverRing]]
    ) -> None:
        """SET_FEATURES without LOG_ALL, SET_VRING_ADDR without the log flag: logging off."""
        fe.set_features(features & ~(1 << VHOST_F_LOG_ALL))
        for index, ring in rings:
            fe.set_vring_addr(vring_addr(ram, index, ring))

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)

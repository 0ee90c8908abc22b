"""The benchmark's vhost-user side: what QEMU does before a guest can use the disk.

``BenchConnection`` connects to a vhost-user-blk socket, negotiates features
(VERSION_1, EVENT_IDX and INDIRECT_DESC when offered; protocol features MQ,
REPLY_ACK and CONFIG), reads the capacity with GET_CONFIG, shares a memfd as
guest RAM with SET_MEM_TABLE, and starts each ring (NUM, BASE, ADDR, KICK,
CALL, ENABLE) as QEMU's vhost_virtqueue_start does.  With ``dirty_log`` it then turns
dirty logging on as a migrating QEMU does (guest/dirty_log.py).  The rings and request
slots are laid out in that RAM (layout.py); the C driver then owns them.
"""

from __future__ import annotations

from pathlib import Path

from dataplane.errors import DataplaneError
from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.layout import GuestLayout, QueueLayout, RingShape
from dataplane.guest.bench.procstat import peer_pid
from dataplane.guest.dirty_log import MigrationLog
from dataplane.guest.frontend import Frontend
from dataplane.guest.virtio_blk import negotiate, start_vring, stop_vring
from dataplane.vhost.messages import MemTable, ProtocolFeature

STATUS_UNSET = 0xFF  # what a status byte holds until the backend writes it


class BenchConnection:
    """One frontend connection with its guest RAM and ``num_queues`` started rings."""

    status_init = STATUS_UNSET

    def __init__(
        self,
        socket_path: Path,
        shape: RingShape,
        *,
        connect_wait: float = 10.0,
        dirty_log: bool = False,
    ) -> None:
        try:
            self.fe = Frontend.connect(socket_path, wait=connect_wait)
        except OSError as e:
            raise BenchError(f"cannot connect to {socket_path}: {e.strerror or e}") from None
        self.layout: GuestLayout | None = None
        self.dirty_log: MigrationLog | None = None
        self.started = False
        try:
            self.backend_pid = peer_pid(self.fe.sock)
            self._negotiate(shape.num_queues, shape.event_idx, shape.indirect, dirty_log)
            self.layout = GuestLayout(shape, event_idx=self.event_idx)
            ram = self.layout.ram
            self.fe.set_mem_table(MemTable((ram.spec,), (ram.fd,)))
            for q in self.queues:
                start_vring(self.fe, ram, q.index, q.ring, q.kick, q.call, base=0)
            self.started = True
            if dirty_log:  # as QEMU when migration starts, with the rings running
                self.dirty_log = MigrationLog(ram.gpa + ram.size)
                rings = [(q.index, q.ring) for q in self.queues]
                self.dirty_log.start(self.fe, self.features, ram, rings)
        except (DataplaneError, OSError) as e:
            self.close()
            if isinstance(e, BenchError):
                raise
            raise BenchError(f"vhost-user set-up with {socket_path} failed: {e}") from None
        except BaseException:
            self.close()
            raise

    def _negotiate(self, num_queues: int, event_idx: bool, indirect: bool, log: bool) -> None:
        n = negotiate(
            self.fe, num_queues=num_queues, event_idx=event_idx, indirect=indirect,
            also=(ProtocolFeature.LOG_SHMFD,) if log else (),
        )  # fmt: skip
        self.features, self.event_idx, self.indirect = n.features, n.event_idx, n.indirect
        self.max_queues, self.capacity = n.max_queues, n.capacity

    @property
    def queues(self) -> list[QueueLayout]:
        return self.layout.queues if self.layout is not None else []

    def stop(self) -> None:
        """Stop every ring as QEMU does (disable, then GET_VRING_BASE waits for in-flight I/O)."""
        if not self.started:
            return
        self.started = False
        for q in self.queues:
            stop_vring(self.fe, q.index)

    def close(self) -> None:
        try:
            self.stop()
        except (DataplaneError, OSError):
            pass
        self.fe.close()
        if self.dirty_log is not None:
            self.dirty_log.close()
            self.dirty_log = None
        if self.layout is not None:
            self.layout.close()
            self.layout = None

    def __enter__(self) -> BenchConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The benchmark's vhost-user side: what QEMU does before a guest can use the disk.

``BenchConnection`` connects to a vhost-user-blk socket, negotiates features
(VERSION_1, EVENT_IDX and INDIRECT_DESC when offered; protocol features MQ,
REPLY_ACK and CONFIG), reads the capacity with GET_CONFIG, shares a memfd as
guest RAM with SET_MEM_TABLE, and starts each ring (NUM, BASE, ADDR, KICK,
CALL, ENABLE) as QEMU's vhost_virtqueue_start does.  The rings and request
slots are laid out in that RAM; the C driver then owns them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dataplane.bench.errors import BenchError
from dataplane.bench.procstat import peer_pid
from dataplane.blkdriver import negotiate, start_vring, stop_vring
from dataplane.driver import DriverRing, GuestRam
from dataplane.errors import DataplaneError
from dataplane.native import ffi, lib
from dataplane.vhost.frontend import Frontend
from dataplane.vhost.messages import MemTable
from dataplane.virtqueue import avail_ring_size, desc_table_size, used_ring_size

PAGE = 4096
META_SIZE = lib.DP_DRV_META_SIZE


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(slots=True)
class QueueLayout:
    """One queue's ring, eventfds and request slots in guest RAM (guest-physical addresses)."""

    index: int
    ring: DriverRing
    kick: int
    call: int
    meta_gpa: int = 0
    data_gpa: int = 0


def ram_size_for(num_queues: int, queue_size: int, iodepth: int, buf_stride: int) -> int:
    """Guest RAM that rings plus ``iodepth`` slots per queue need, with slack for alignment."""
    ring = desc_table_size(queue_size) + avail_ring_size(queue_size) + used_ring_size(queue_size)
    per_queue = _round_up(ring + 3 * 64, PAGE) + iodepth * META_SIZE + PAGE + iodepth * buf_stride
    return _round_up(num_queues * (per_queue + PAGE) + (1 << 20), 2 << 20)


class BenchConnection:
    """One frontend connection with its guest RAM and ``num_queues`` started rings."""

    def __init__(
        self,
        socket_path: Path,
        *,
        num_queues: int,
        queue_size: int,
        iodepth: int,
        buf_stride: int,
        event_idx: bool = True,
        indirect: bool = True,
        connect_wait: float = 10.0,
    ) -> None:
        try:
            self.fe = Frontend.connect(socket_path, wait=connect_wait)
        except OSError as e:
            raise BenchError(f"cannot connect to {socket_path}: {e.strerror or e}") from None
        self.ram: GuestRam | None = None
        self.queues: list[QueueLayout] = []
        self.started = False
        try:
            self.backend_pid = peer_pid(self.fe.sock)
            self._negotiate(num_queues, event_idx, indirect)
            self.ram = GuestRam(ram_size_for(num_queues, queue_size, iodepth, buf_stride))
            lib.dp_memzero(self._host(self.ram.gpa), self.ram.size)  # fault the pages in once
            self.fe.set_mem_table(MemTable((self.ram.spec,), (self.ram.fd,)))
            for i in range(num_queues):
                self.queues.append(self._layout(i, queue_size, iodepth, buf_stride))
            for q in self.queues:
                self._start(q)
            self.started = True
        except (DataplaneError, OSError) as e:
            self.close()
            if isinstance(e, BenchError):
                raise
            raise BenchError(f"vhost-user set-up with {socket_path} failed: {e}") from None
        except BaseException:
            self.close()
            raise

    def _negotiate(self, num_queues: int, event_idx: bool, indirect: bool) -> None:
        n = negotiate(self.fe, num_queues=num_queues, event_idx=event_idx, indirect=indirect)
        self.features, self.event_idx, self.indirect = n.features, n.event_idx, n.indirect
        self.max_queues, self.capacity = n.max_queues, n.capacity

    def _host(self, gpa: int) -> int:
        assert self.ram is not None
        return int(ffi.cast("uintptr_t", ffi.from_buffer(self.ram.map))) + self.ram.off(gpa)

    def _layout(self, index: int, queue_size: int, iodepth: int, buf_stride: int) -> QueueLayout:
        assert self.ram is not None
        ring = DriverRing(self.ram, queue_size, event_idx=self.event_idx)
        q = QueueLayout(index, ring, os.eventfd(0, os.EFD_CLOEXEC), -1)
        q.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        q.meta_gpa = self.ram.alloc(iodepth * META_SIZE, 64)
        q.data_gpa = self.ram.alloc(iodepth * buf_stride, PAGE)
        return q

    def _start(self, q: QueueLayout) -> None:
        assert self.ram is not None
        start_vring(self.fe, self.ram, q.index, q.ring, q.kick, q.call, base=0)

    def host_base(self) -> int:
        """Where guest RAM is mapped in this process."""
        assert self.ram is not None
        return self._host(self.ram.gpa)

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
        for q in self.queues:
            for fd in (q.kick, q.call):
                if fd >= 0:
                    os.close(fd)
        self.queues = []
        if self.ram is not None:
            self.ram.close()
            self.ram = None

    def __enter__(self) -> BenchConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

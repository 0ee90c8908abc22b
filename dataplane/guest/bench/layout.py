"""Guest RAM for a measured run: the rings, eventfds and request slots of every queue.

``GuestLayout`` is what the C driver works on, whichever device is on the
other side: a vhost-user backend (``connection.BenchConnection`` hands it over
with SET_MEM_TABLE and SET_VRING_*) or the ideal device of ``limit.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dataplane.guest.c_ring import ram_host
from dataplane.guest.clib import lib
from dataplane.guest.ring import DriverRing, GuestRam
from dataplane.spec.ring import avail_ring_size, desc_table_size, used_ring_size

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


@dataclass(frozen=True, slots=True)
class RingShape:
    """What a run asks of its rings, whichever device serves them."""

    num_queues: int
    queue_size: int
    iodepth: int
    buf_stride: int
    event_idx: bool = True
    indirect: bool = True


class GuestLayout:
    """Guest RAM (a memfd, faulted in once) and ``num_queues`` laid-out queues.

    ``event_idx`` is what was negotiated (``shape.event_idx`` is what was asked for).
    """

    def __init__(self, shape: RingShape, *, event_idx: bool) -> None:
        num_queues, iodepth, buf_stride = shape.num_queues, shape.iodepth, shape.buf_stride
        # Sealed as QEMU seals guest RAM: a backend has no reason to warn about it.
        self.ram = GuestRam(
            ram_size_for(num_queues, shape.queue_size, iodepth, buf_stride), seal=True
        )
        self.queues: list[QueueLayout] = []
        try:
            lib.dp_drv_prefault(self.host(self.ram.gpa), self.ram.size)
            for i in range(num_queues):
                ring = DriverRing(self.ram, shape.queue_size, event_idx=event_idx)
                q = QueueLayout(i, ring, os.eventfd(0, os.EFD_CLOEXEC), -1)
                self.queues.append(q)
                q.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                q.meta_gpa = self.ram.alloc(iodepth * META_SIZE, 64)
                q.data_gpa = self.ram.alloc(iodepth * buf_stride, PAGE)
        except BaseException:
            self.close()
            raise

    def host(self, gpa: int) -> int:
        """Where guest-physical ``gpa`` is mapped in this process."""
        return ram_host(self.ram) + self.ram.off(gpa)

    def close(self) -> None:
        for q in self.queues:
            for fd in (q.kick, q.call):
                if fd >= 0:
                    os.close(fd)
        self.queues = []
        self.ram.close()

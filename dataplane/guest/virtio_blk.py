"""A guest's virtio-blk driver over vhost-user, for tests and the replay benchmark.

``BlkDriver`` connects to a vhost-user-blk backend as the frontend, shares a
memfd as guest RAM, sets up its virtqueues with kick and call eventfds, and
issues virtio-blk requests through ``DriverRing``.  It plays both QEMU and
the guest driver, in one process.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass, field
from pathlib import Path

from dataplane.errors import ProtocolError
from dataplane.guest.frontend import Frontend
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec import blk
from dataplane.spec.blk import CAPACITY, DWZ_SEGMENT, HEADER
from dataplane.spec.ring import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
)
from dataplane.vhost.messages import (
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_VRING_F_LOG,
    MemTable,
    ProtocolFeature,
    VringAddr,
)

_RING_FEATURES = (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
WANTED_PROTOCOL_FEATURES = sum(
    1 << f for f in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG)
)


@dataclass(slots=True)
class Completion:
    head: int
    used_len: int
    status: int
    data: bytes = b""


@dataclass(slots=True)
class _Pending:
    hdr: int
    status: int
    data_gpa: int = 0
    data_len: int = 0
    is_read: bool = False


@dataclass(slots=True)
class _Queue:
    ring: DriverRing
    kick: int
    call: int
    pending: dict[int, _Pending] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What feature negotiation settled with a vhost-user-blk backend."""

    features: int
    event_idx: bool
    indirect: bool
    max_queues: int
    capacity: int  # in 512-byte sectors


def negotiate(
    fe: Frontend,
    *,
    num_queues: int = 1,
    event_idx: bool = True,
    indirect: bool = True,
    also: tuple[ProtocolFeature, ...] = (),
) -> Negotiated:
    """Feature and protocol negotiation, SET_OWNER and the capacity, as QEMU does at connect.

    Keeps every device feature the backend offers (as a Linux guest would) and
    the ring features asked for, and the protocol features ``also`` names.  Raises
    ProtocolError for a backend that cannot serve: no VERSION_1, no protocol
    features or CONFIG, too few queues, or one of ``also`` missing.
    """
    offered = fe.get_features()
    if not offered & (1 << VIRTIO_F_VERSION_1):
        raise ProtocolError("the backend does not offer VIRTIO_F_VERSION_1")
    if not offered & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
        raise ProtocolError("the backend does not offer vhost-user protocol features")
    want = _RING_FEATURES & offered
    if not event_idx:
        want &= ~(1 << VIRTIO_RING_F_EVENT_IDX)
    if not indirect:
        want &= ~(1 << VIRTIO_RING_F_INDIRECT_DESC)
    # LOG_ALL is no virtio feature: QEMU sets it only while it migrates (guest/dirty_log.py).
    features = (offered & ~_RING_FEATURES & ~(1 << VHOST_F_LOG_ALL)) | want
    wanted = WANTED_PROTOCOL_FEATURES | sum(1 << f for f in also)
    protocol = fe.get_protocol_features() & wanted
    for f in also:
        if not protocol & (1 << f):
            raise ProtocolError(f"the backend does not offer {f.name}")
    fe.set_protocol_features(protocol)
    if not protocol & (1 << ProtocolFeature.CONFIG):
        raise ProtocolError("the backend does not offer the CONFIG protocol feature")
    max_queues = fe.get_queue_num() if protocol & (1 << ProtocolFeature.MQ) else 1
    if num_queues > max_queues:
        raise ProtocolError(f"the backend offers {max_queues} queue(s); {num_queues} wanted")
    fe.set_owner()
    capacity = CAPACITY.unpack_from(fe.get_config(0, 8))[0]
    fe.set_features(features)
    return Negotiated(
        features,
        bool(features & (1 << VIRTIO_RING_F_EVENT_IDX)),
        bool(features & (1 << VIRTIO_RING_F_INDIRECT_DESC)),
        max_queues,
        capacity,
    )


def start_vring(
    fe: Frontend,
    ram: GuestRam,
    index: int,
    ring: DriverRing,
    kick: int,
    call: int,
    *,
    base: int | None = None,
) -> None:
    """SET_VRING_NUM/BASE/ADDR/KICK/CALL and ENABLE, as QEMU's vhost_virtqueue_start does."""
    fe.set_vring_num(index, ring.num)
    fe.set_vring_base(index, ring.avail_idx if base is None else base)
    fe.set_vring_addr(vring_addr(ram, index, ring))
    fe.set_vring_kick(index, kick)
    fe.set_vring_call(index, call)
    fe.set_vring_enable(index, True)


def vring_addr(ram: GuestRam, index: int, ring: DriverRing, *, log: bool = False) -> VringAddr:
    """SET_VRING_ADDR's body for ``ring``; ``log``: with VHOST_VRING_F_LOG and the used
    ring's guest-physical address, as QEMU sends it while it migrates."""
    uva = ram.uva_of
    flags = 1 << VHOST_VRING_F_LOG if log else 0
    return VringAddr(
        index, flags, uva(ring.desc), uva(ring.used), uva(ring.avail), ring.used if log else 0
    )


def stop_vring(fe: Frontend, index: int) -> int:
    """SET_VRING_ENABLE 0 then GET_VRING_BASE (which waits for in-flight I/O), as QEMU stops."""
    fe.set_vring_enable(index, False)
    return fe.get_vring_base(index)


class BlkDriver:
    """Plays QEMU and a Linux virtio-blk driver against one backend socket."""

    def __init__(
        self,
        socket_path: Path,
        *,
        num_queues: int = 1,
        queue_size: int = 128,
        ram_size: int = 64 << 20,
        event_idx: bool = True,
        indirect: bool = True,
        also: tuple[ProtocolFeature, ...] = (),
    ) -> None:
        self.fe = Frontend.connect(socket_path)
        self.ram = GuestRam(ram_size)
        self.queue_size = queue_size
        self.indirect = indirect
        n = negotiate(
            self.fe, num_queues=num_queues, event_idx=event_idx, indirect=indirect, also=also
        )
        self.features, self.event_idx = n.features, n.event_idx
        self.max_queues, self.capacity = n.max_queues, n.capacity
        self.config = self.fe.get_config(0, 60)
        self.fe.set_mem_table(MemTable((self.ram.spec,), (self.ram.fd,)))
        self.queues: list[_Queue] = []
        for i in range(num_queues):
            ring = DriverRing(self.ram, queue_size, event_idx=self.event_idx)
            q = _Queue(ring, os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK))
            self.queues.append(q)
            self.start_queue(i)
        self._heap_start = self.ram.alloc(0, 4096)

    # -- ring lifecycle ---------------------------------------------------------

    def start_queue(self, i: int, base: int | None = None) -> None:
        q = self.queues[i]
        start_vring(self.fe, self.ram, i, q.ring, q.kick, q.call, base=base)

    def stop_queue(self, i: int) -> int:
        return stop_vring(self.fe, i)

    def close(self) -> None:
        self.fe.close()
        for q in self.queues:
            os.close(q.kick)
            os.close(q.call)
        self.ram.close()

    def __enter__(self) -> BlkDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------

    def submit(
        self,
        rtype: int,
        sector: int = 0,
        *,
        data: bytes = b"",
        read_len: int = 0,
        queue: int = 0,
        kick: bool = True,
    ) -> int:
        """Publish one request; return its head.  Reads use ``read_len`` bytes."""
        q = self.queues[queue]
        hdr = self.ram.alloc(HEADER.size)
        self.ram.write(hdr, HEADER.pack(rtype, 0, sector))
        bufs = [Buf(hdr, HEADER.size)]
        p = _Pending(hdr, 0)
        if data:
            gpa = self.ram.alloc(len(data), 4096)
            self.ram.write(gpa, data)
            bufs.append(Buf(gpa, len(data)))
        if read_len:
            gpa = self.ram.alloc(read_len, 4096)
            bufs.append(Buf(gpa, read_len, writable=True))
            p.data_gpa, p.data_len, p.is_read = gpa, read_len, True
        p.status = self.ram.alloc(1, 1)
        self.ram.write(p.status, b"\xff")
        bufs.append(Buf(p.status, 1, writable=True))
        head = q.ring.add_chain(bufs, indirect=self.indirect and len(bufs) > 2)
        q.pending[head] = p
        old = q.ring.avail_idx
        q.ring.publish([head])
        if kick and q.ring.needs_kick(old):
            os.eventfd_write(q.kick, 1)
        return head

    def kick(self, queue: int = 0) -> None:
        """Notify the device unconditionally (as after a batch published with kick=False)."""
        os.eventfd_write(self.queues[queue].kick, 1)

    def wait(self, n: int = 1, *, queue: int = 0, timeout: float = 10.0) -> list[Completion]:
        """Wait for ``n`` completions on ``queue`` (through its call eventfd)."""
        q = self.queues[queue]
        done: list[Completion] = []
        deadline = time.monotonic() + timeout
        while True:
            if self.event_idx:
                q.ring.set_used_event(q.ring.last_used_idx)
            for head, length in q.ring.get_used():
                p = q.pending.pop(head)
                data = self.ram.read(p.data_gpa, p.data_len) if p.is_read else b""
                done.append(Completion(head, length, self.ram.read(p.status, 1)[0], data))
            if len(done) >= n:
                break
            if q.ring.used_idx() != q.ring.last_used_idx:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(done)} of {n} completions after {timeout} s")
            r, _, _ = select.select([q.call], [], [], left)
            if r:
                os.eventfd_read(q.call)
        if not any(p for qq in self.queues for p in qq.pending.values()):
            self.ram.reset_alloc(self._heap_start)
        return done

    def do(self, rtype: int, sector: int = 0, **kw) -> Completion:
        queue = kw.get("queue", 0)
        self.submit(rtype, sector, **kw)
        return self.wait(1, queue=queue)[0]

    def read(self, sector: int, length: int, queue: int = 0) -> Completion:
        return self.do(blk.VIRTIO_BLK_T_IN, sector, read_len=length, queue=queue)

    def write(self, sector: int, data: bytes, queue: int = 0) -> Completion:
        return self.do(blk.VIRTIO_BLK_T_OUT, sector, data=data, queue=queue)

    def flush(self, queue: int = 0) -> Completion:
        return self.do(blk.VIRTIO_BLK_T_FLUSH, queue=queue)

    def get_id(self) -> Completion:
        return self.do(blk.VIRTIO_BLK_T_GET_ID, read_len=blk.VIRTIO_BLK_ID_BYTES)

    def discard(self, sector: int, count: int, *, flags: int = 0) -> Completion:
        return self.do(blk.VIRTIO_BLK_T_DISCARD, data=DWZ_SEGMENT.pack(sector, count, flags))

    def write_zeroes(self, sector: int, count: int, *, unmap: bool = False) -> Completion:
        return self.do(
            blk.VIRTIO_BLK_T_WRITE_ZEROES, data=DWZ_SEGMENT.pack(sector, count, int(unmap))
        )

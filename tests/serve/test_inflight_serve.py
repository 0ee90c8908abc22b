"""SIGKILL under load over the socket: ``serve`` dies with requests in flight behind
completed ones (test-delay holds every third completion back) and comes back on the
same socket and image; the frontend keeps the inflight area, as QEMU does, and hands
it back with SET_INFLIGHT_FD, rewinding SET_VRING_BASE to used->idx.

The guest keeps writes in flight, each a versioned stamp of its block; a block gets
its next version only after the last one completed.  No completion may arrive for a
request the guest does not have outstanding (a completed request run again), every
request completes in the end (none lost), and every block reads back, from the host,
as the newest version written.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import signal
import struct
from dataclasses import dataclass

import pytest
from guest_support import start_dataplane

from dataplane import test_hooks
from dataplane.device.inflight import region_size
from dataplane.guest.frontend import Frontend
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.guest.virtio_blk import BlkDriver, negotiate, start_vring
from dataplane.vhost.messages import Inflight, MemTable, ProtocolFeature

BLOCKS = 32
BLOCK = 4096
QUEUE = 64
DEPTH = 16
LIVES = 4  # three kills, then a life that drains
HDR = struct.Struct("<IIQ")
STAMP = struct.Struct("<QQ")  # block, version
VIRTIO_BLK_T_OUT = 1
HANG = 20.0  # seconds: only ends a hang


@dataclass
class Write:
    block: int
    version: int
    status: int  # gpa of its status byte


class Guest:
    """Guest RAM, one ring and the writes it has outstanding."""

    def __init__(self) -> None:
        self.ram = GuestRam(8 << 20)
        self.ring = DriverRing(self.ram, QUEUE)
        self.kick, self.call = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2))
        self.buffers = [(self.ram.alloc(16), self.ram.alloc(BLOCK, BLOCK)) for _ in range(QUEUE)]
        self.status = [self.ram.alloc(1, 1) for _ in range(QUEUE)]
        self.outstanding: dict[int, Write] = {}
        self.version = [0] * BLOCKS
        self.busy: set[int] = set()  # blocks with a write outstanding
        self.completed = 0

    def submit(self, rng: random.Random) -> None:
        heads = []
        while len(self.outstanding) < DEPTH:
            block = rng.choice([b for b in range(BLOCKS) if b not in self.busy])
            self.version[block] += 1
            head = self.ring.free[0]
            hdr, data = self.buffers[head]
            self.ram.write(hdr, HDR.pack(VIRTIO_BLK_T_OUT, 0, block * BLOCK // 512))
            self.ram.write(data, stamp(block, self.version[block]))
            self.ram.write(self.status[head], b"\xff")
            bufs = [Buf(hdr, 16), Buf(data, BLOCK), Buf(self.status[head], 1, True)]
            assert self.ring.add_chain(bufs, indirect=True) == head
            self.outstanding[head] = Write(block, self.version[block], self.status[head])
            self.busy.add(block)
            heads.append(head)
        self.ring.publish(heads)
        os.eventfd_write(self.kick, 1)

    def harvest(self, timeout: float) -> int:
        if select.select([self.call], [], [], timeout)[0]:
            os.eventfd_read(self.call)
        n = 0
        for head, _ in self.ring.get_used():
            w = self.outstanding.pop(head, None)
            assert w is not None, f"a completion for head {head}, which was not outstanding"
            assert self.ram.read(w.status, 1) == b"\0", f"write of block {w.block} failed"
            self.busy.discard(w.block)
            n += 1
        self.completed += n
        return n

    def close(self) -> None:
        for fd in (self.kick, self.call):
            os.close(fd)
        self.ram.close()


def stamp(block: int, version: int) -> bytes:
    return STAMP.pack(block, version) * (BLOCK // STAMP.size)


def connect(sock, guest: Guest, area: Inflight | None) -> tuple[Frontend, Inflight]:
    """What QEMU does at (re)connect: the area first (kept across backends), then the ring."""
    fe = Frontend.connect(sock)
    negotiate(fe, event_idx=False, also=(ProtocolFeature.INFLIGHT_SHMFD,))
    if area is None:
        area = fe.get_inflight_fd(1, QUEUE)
    else:
        fe.set_inflight_fd(area)
    fe.set_mem_table(MemTable((guest.ram.spec,), (guest.ram.fd,)))
    # The backend died: QEMU cannot ask it where it got to, and rewinds to used->idx.
    base = guest.ring.used_idx()
    start_vring(fe, guest.ram, 0, guest.ring, guest.kick, guest.call, base=base)
    return fe, area


def test_sigkill_under_load_loses_nothing_and_reruns_nothing(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    img = tmp_path / "img"
    img.write_bytes(bytes(BLOCKS * BLOCK))
    sock = short_socket_dir() / "s.sock"
    keys = {"test-delay": "3:300000", "queue-size": str(QUEUE)}  # C's alone: native datapath
    guest, area, fe = Guest(), None, None
    recovered = []
    try:
        for life in range(LIVES):
            b = start_dataplane(
                sock, img, aio="io_uring", log_path=tmp_path / f"log{life}", keys=keys,
                env=test_hooks.ON,
            )  # fmt: skip
            fe, area = connect(sock, guest, area)
            last = life == LIVES - 1
            # At least DEPTH completions a life (the total is checked below), then a random
            # moment for the kill.
            target = guest.completed + DEPTH + rng.randint(0, 2 * DEPTH)
            while guest.completed < target or (last and guest.outstanding):
                if not last or guest.completed < target:
                    guest.submit(rng)
                assert guest.harvest(HANG) or guest.outstanding, "no progress"
            recovered.append("in flight resubmitted first" in b.log_text())
            if last:
                fe.close()
                assert b.stop() == 0, b.log_text()
            else:
                os.kill(b.pid, signal.SIGKILL)
                b.proc.wait()
                fe.close()
        assert not guest.outstanding
        assert any(recovered[1:]), "no life found requests left in flight: nothing was tested"
        assert guest.completed >= LIVES * DEPTH
        data = img.read_bytes()
        for block in range(BLOCKS):
            if guest.version[block]:
                got = STAMP.unpack_from(data, block * BLOCK)
                assert got == (block, guest.version[block]), f"block {block} reads {got}"
    finally:
        if area is not None and area.fd is not None:
            os.close(area.fd)
        guest.close()


def test_get_inflight_fd_hands_out_a_sealed_area_and_a_bad_one_drops_the_connection(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(BLOCKS * BLOCK))
    sock = short_socket_dir() / "s.sock"
    b = start_dataplane(sock, img, log_path=tmp_path / "log", num_queues=2)
    try:
        with Frontend.connect(sock) as fe:
            negotiate(fe, num_queues=2, also=(ProtocolFeature.INFLIGHT_SHMFD,))
            area = fe.get_inflight_fd(2, QUEUE)
            try:
                assert (area.mmap_offset, area.num_queues, area.queue_size) == (0, 2, QUEUE)
                assert area.mmap_size == region_size(2, QUEUE) == os.fstat(area.fd).st_size
                seals = fcntl.fcntl(area.fd, fcntl.F_GET_SEALS)
                assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
                assert os.pread(area.fd, area.mmap_size, 0) == bytes(area.mmap_size)
            finally:
                os.close(area.fd)
        with Frontend.connect(sock) as fe:
            negotiate(fe, also=(ProtocolFeature.INFLIGHT_SHMFD,))
            small = os.memfd_create("small")
            try:
                with pytest.raises(ConnectionError):  # too small for 64 entries: dropped
                    fe.set_inflight_fd(Inflight(64, 0, 1, QUEUE, small))
            finally:
                os.close(small)
        b.wait_ready(lambda: "smaller than" in b.log_text(), "logging why it dropped", HANG)
    finally:
        assert b.stop() == 0, b.log_text()


def test_an_inflight_area_that_shrinks_under_the_ring_costs_only_its_connection(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(BLOCKS * BLOCK))
    sock = short_socket_dir() / "s.sock"
    b = start_dataplane(sock, img, log_path=tmp_path / "log", keys={"queue-size": str(QUEUE)})
    guest = Guest()
    area = os.memfd_create("unsealed-inflight")  # a frontend that did not seal it
    os.ftruncate(area, region_size(1, QUEUE))
    try:
        fe, _ = connect(sock, guest, Inflight(region_size(1, QUEUE), 0, 1, QUEUE, area))
        with fe:
            os.ftruncate(area, 0)
            guest.submit(random.Random(1))  # the pop marks the head in flight: SIGBUS
            b.wait_ready(lambda: "SIGBUS in the inflight area" in b.log_text(), "the drop", HANG)
        with BlkDriver(sock, queue_size=QUEUE) as again:  # the process and device serve on
            assert again.write(0, b"\1" * 512).status == 0
    finally:
        os.close(area)
        guest.close()
        assert b.stop() == 0, b.log_text()


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_inflight_shmfd_is_offered_on_the_c_datapath_alone(tmp_path, datapath):
    """Inflight tracking is the C datapath's: on the Python reference, as LOG_SHMFD, a device
    does not offer it (QEMU then keeps no inflight area across a reconnect)."""
    img = tmp_path / "img"
    img.write_bytes(bytes(BLOCKS * BLOCK))
    sock = short_socket_dir() / "s.sock"
    b = start_dataplane(sock, img, log_path=tmp_path / "log", keys={"datapath": datapath})
    try:
        with Frontend.connect(sock) as fe:
            offered = fe.get_protocol_features() & (1 << ProtocolFeature.INFLIGHT_SHMFD)
        assert bool(offered) == (datapath == "native")
    finally:
        assert b.stop() == 0, b.log_text()

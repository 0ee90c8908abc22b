"""CONFIGURE_MEM_SLOTS over the socket: GET_MAX_MEM_SLOTS, ADD_MEM_REG and REM_MEM_REG
while a ring runs (I/O from and into an added region, in flight across the changes),
and the per-connection cap: a frontend that adds one region too many loses its
connection, and another device in the same process keeps serving."""

from __future__ import annotations

import os
import select
import struct

import pytest
from guest_support import start_dataplane

from dataplane import test_hooks
from dataplane.device.memory import MAX_MEM_SLOTS
from dataplane.guest.frontend import Frontend
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.guest.virtio_blk import BlkDriver, negotiate, start_vring
from dataplane.vhost.messages import ProtocolFeature, RegionSpec

SECTORS = 8192
HDR = struct.Struct("<IIQ")
T_IN, T_OUT = 0, 1
QUEUE = 32
HANG = 10.0  # seconds: only ends a hang
SLOTS = (ProtocolFeature.CONFIGURE_MEM_SLOTS,)


class Ring:
    """One ring in ``base`` RAM; request buffers may be in any region."""

    def __init__(self, fe: Frontend, base: GuestRam) -> None:
        self.fe, self.base = fe, base
        self.ring = DriverRing(base, QUEUE)
        self.kick, self.call = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2))
        start_vring(fe, base, 0, self.ring, self.kick, self.call, base=0)
        self.status: dict[int, int] = {}

    def submit(self, ram: GuestRam, rtype: int, sector: int, data: bytes | int) -> int:
        """A write of ``data`` or a read of ``data`` bytes, its buffer in ``ram``."""
        n = data if isinstance(data, int) else len(data)
        hdr, buf, st = self.base.alloc(16), ram.alloc(n, 512), self.base.alloc(1, 1)
        self.base.write(hdr, HDR.pack(rtype, 0, sector))
        if not isinstance(data, int):
            ram.write(buf, data)
        bufs = [Buf(hdr, 16), Buf(buf, n, rtype == T_IN), Buf(st, 1, True)]
        head = self.ring.add_chain(bufs, indirect=True)
        self.status[head] = st
        self.ring.publish([head])
        os.eventfd_write(self.kick, 1)
        return buf

    def wait(self, n: int) -> None:
        done = 0
        while done < n:
            assert select.select([self.call], [], [], HANG)[0], "no completion"
            os.eventfd_read(self.call)
            for head, _ in self.ring.get_used():
                assert self.base.read(self.status.pop(head), 1) == b"\0"
                done += 1

    def close(self) -> None:
        for fd in (self.kick, self.call):
            os.close(fd)


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(SECTORS * 512))
    return img


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_regions_added_and_removed_while_the_ring_runs(tmp_path, image, datapath):
    sock = short_socket_dir() / "s.sock"
    keys = {"datapath": datapath}
    if datapath == "native":  # requests in flight across ADD (test-delay is C's alone)
        keys["test-delay"] = "2:200000"
    b = start_dataplane(sock, image, log_path=tmp_path / "log", keys=keys, env=test_hooks.ON)
    base = GuestRam(1 << 20, gpa=0x100000, uva=0x7F0000000000)
    dimms = [GuestRam(1 << 20, gpa=(1 + i) << 30, uva=0x7F1000000000 + (i << 30)) for i in (0, 1)]
    try:
        with Frontend.connect(sock) as fe:
            negotiate(fe, event_idx=False, also=SLOTS)
            assert fe.get_max_mem_slots() == MAX_MEM_SLOTS >= 256
            fe.add_mem_reg(base.spec, base.fd)
            r = Ring(fe, base)
            try:
                data = [os.urandom(4096) for _ in range(4)]
                for i, d in enumerate(data[:2]):
                    r.submit(base, T_OUT, 8 * i, d)
                fe.add_mem_reg(dimms[0].spec, dimms[0].fd)  # with writes in flight
                r.wait(2)
                for i, d in enumerate(data[2:], 2):
                    r.submit(dimms[0], T_OUT, 8 * i, d)  # written from DIMM memory
                fe.add_mem_reg(dimms[1].spec, dimms[1].fd)
                r.wait(2)
                reads = [r.submit(dimms[1], T_IN, 8 * i, 4096) for i in range(4)]  # into DIMM
                r.wait(4)
                assert [dimms[1].read(a, 4096) for a in reads] == data
                fe.rem_mem_reg(dimms[0].spec)
                r.submit(base, T_OUT, 64, b"\x5a" * 512)  # the ring runs on without it
                r.wait(1)
                fe.rem_mem_reg(dimms[1].spec)
                with pytest.raises(ConnectionError):  # a region it does not hold: dropped
                    fe.rem_mem_reg(dimms[1].spec)
            finally:
                r.close()
        on_disk = image.read_bytes()
        assert [on_disk[8 * i * 512 : 8 * i * 512 + 4096] for i in range(4)] == data
        assert on_disk[64 * 512 : 65 * 512] == b"\x5a" * 512
        b.wait_ready(lambda: "REM_MEM_REG: no region" in b.log_text(), "logging the drop", HANG)
    finally:
        for ram in (base, *dimms):
            ram.close()
        assert b.stop() == 0, b.log_text()


def test_one_region_past_the_cap_drops_that_connection_only(tmp_path, image):
    other = tmp_path / "other"
    other.write_bytes(bytes(SECTORS * 512))
    d = short_socket_dir()
    extra = ("--device", f"socket={d / 'b.sock'},image={other}")
    b = start_dataplane(d / "a.sock", image, log_path=tmp_path / "log", keys={}, extra_args=extra)
    many = os.memfd_create("many")
    os.ftruncate(many, (MAX_MEM_SLOTS + 1) * 4096)
    try:
        with Frontend.connect(d / "a.sock") as fe, BlkDriver(d / "b.sock") as victim:
            negotiate(fe, also=SLOTS)
            for i in range(MAX_MEM_SLOTS):
                fe.add_mem_reg(RegionSpec(i << 20, 4096, 0x10000000 + (i << 20), i * 4096), many)
            assert victim.write(8, b"\1" * 4096).status == 0
            with pytest.raises(ConnectionError):
                spec = RegionSpec(MAX_MEM_SLOTS << 20, 4096, 0x1000, MAX_MEM_SLOTS * 4096)
                fe.add_mem_reg(spec, many)
            assert victim.read(8, 4096).data == b"\1" * 4096  # the other device serves on
        why = f"all {MAX_MEM_SLOTS} memory slots are in use"
        b.wait_ready(lambda: why in b.log_text(), "logging the drop", HANG)
        with BlkDriver(d / "a.sock") as again:  # its slots came back with the connection
            assert again.write(0, b"\2" * 512).status == 0
    finally:
        os.close(many)
        assert b.stop() == 0, b.log_text()

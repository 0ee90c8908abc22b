"""The RBD engine (csrc/device/dp_rbd.c) against a real Ceph cluster, no mocks.

One throwaway cluster for the module (scripts/ceph-dev.sh: one monitor, one manager,
two BlueStore OSDs, pool rbd with size 2), stopped at the end.  Each test drives the
C engine through submit and reap and checks the data as ``rbd export`` reads it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import struct
import time

import pytest
from engine_support import Buffers, check_mixed_batch, collect, mixed_batch, pattern, run, run_one
from remote_servers import CEPH_PROGRAMS, CephCluster, missing
from ringutil import Req, start_rig
from ringutil import run as ring_run
from waits import WAIT_S

from dataplane.device.datapath.c import CDatapath
from dataplane.device.disk import Disk
from dataplane.device.engines import IoRequest, Op
from dataplane.device.engines.remote import RemoteEngine, check_iothreads, image_kind, open_rbd
from dataplane.errors import TargetUnavailable, UsageError
from dataplane.guest.ring import DriverRing
from dataplane.spec.blk import (
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)

pytestmark = [
    pytest.mark.remote,
    pytest.mark.skipif(bool(missing(CEPH_PROGRAMS)), reason=str(missing(CEPH_PROGRAMS))),
]

SIZE = 4 << 20
BLOCK = 4096
log = logging.getLogger("test")
_names = itertools.count()


@pytest.fixture
def cluster(ceph_cluster) -> CephCluster:
    return ceph_cluster  # one cluster for the session (conftest.py)


@pytest.fixture
def image(cluster) -> str:
    """A new image of SIZE bytes holding pattern(SIZE, 3); its rbd: spec."""
    name = f"img{os.getpid()}-{next(_names)}"
    cluster.rbd("import", "-", f"rbd/{name}", input=pattern(SIZE, seed=3))
    return f"rbd:rbd/{name}"


@pytest.fixture
def engines(cluster):
    opened: list[RemoteEngine] = []

    def open_(spec: str, depth: int = 64, **kw) -> RemoteEngine:
        e = open_rbd(spec, depth, conf=cluster.conf, **kw)
        opened.append(e)
        return e

    yield open_
    for e in opened:
        e.close()


def write(buf: Buffers, offset: int, data: bytes, token: int, *pieces: int, **kw) -> IoRequest:
    buf.mem[: len(data)] = data
    req = IoRequest(Op.WRITE, offset=offset, length=len(data), token=token, **kw)
    req.iov = buf.iov(*(pieces or (len(data),)))
    return req


def read(buf: Buffers, offset: int, length: int, token: int, *pieces: int, at: int = 0):
    req = IoRequest(Op.READ, offset=offset, length=length, token=token)
    req.iov = buf.iov(*(pieces or (length,)), start=at)
    return req


def exported(cluster: CephCluster, spec: str) -> bytes:
    return cluster.export(spec.removeprefix("rbd:"))


def test_open_reports_what_rbd_offers(image, engines):
    e = engines(image)
    info = e.info
    assert image_kind(image) == "rbd"
    assert info.size == SIZE and not info.read_only and info.connected
    assert info.can_flush and info.can_trim and info.can_zero
    assert not info.can_fua  # write-through is a write, then a flush
    assert not info.can_multi_conn
    assert info.block_opt == 4 << 20  # the object size
    assert e.completion_fd >= 0 and not e.ready()
    with pytest.raises(UsageError, match="iothreads=2 .* RBD image is served through one"):
        check_iothreads(info, 2, image)


def test_each_op_lands_on_the_image(cluster, image, engines):
    e = engines(image)
    buf = Buffers(1 << 20)
    one, three = pattern(2 * BLOCK, seed=11), pattern(3 * BLOCK, seed=12)
    assert run_one(e, write(buf, 0, one, 1)) == len(one)
    assert run_one(e, write(buf, 8 * BLOCK, three, 2, 1000, 2 * BLOCK, BLOCK - 1000)) == len(three)
    assert run_one(e, write(buf, 40 * BLOCK, one, 3, dsync=True)) == len(one)
    assert run_one(e, IoRequest(Op.FLUSH, token=4)) == 0
    discard = IoRequest(Op.DISCARD, offset=16 * BLOCK, length=4 * BLOCK, token=5)
    assert run_one(e, discard) == 4 * BLOCK
    zeroes = IoRequest(Op.WRITE_ZEROES, offset=24 * BLOCK, length=2 * BLOCK, token=6)
    assert run_one(e, zeroes) == 2 * BLOCK
    unmap = IoRequest(Op.WRITE_ZEROES, offset=28 * BLOCK, length=2 * BLOCK, token=7, unmap=True)
    assert run_one(e, unmap) == 2 * BLOCK

    want = bytearray(pattern(SIZE, seed=3))
    want[0 : len(one)] = one
    want[8 * BLOCK : 8 * BLOCK + len(three)] = three
    want[40 * BLOCK : 40 * BLOCK + len(one)] = one
    want[24 * BLOCK : 26 * BLOCK] = bytes(2 * BLOCK)
    want[28 * BLOCK : 30 * BLOCK] = bytes(2 * BLOCK)
    seen = bytearray(exported(cluster, image))
    assert seen[16 * BLOCK : 20 * BLOCK] in (bytes(4 * BLOCK), want[16 * BLOCK : 20 * BLOCK])
    seen[16 * BLOCK : 20 * BLOCK] = want[16 * BLOCK : 20 * BLOCK]  # discard may keep the data
    assert seen == want

    assert run_one(e, read(buf, 8 * BLOCK, len(three), 8, 512, 2 * BLOCK, BLOCK - 512, at=1 << 19))
    assert buf.mem[1 << 19 : (1 << 19) + len(three)] == three


def test_a_batch_of_mixed_requests_completes_each_token_once(cluster, image, engines):
    e = engines(image, depth=64)
    buf = Buffers(1 << 20)
    reqs = mixed_batch(buf, BLOCK)
    reqs += [IoRequest(Op.FLUSH, token=100)]
    assert run(e, reqs) == {r.token: r.length for r in reqs}
    disk = exported(cluster, image)
    original = pattern(SIZE, seed=3)
    check_mixed_batch(reqs[:48], buf, disk, original, BLOCK)


def test_a_snapshot_is_served_read_only(cluster, image, engines):
    name = image.removeprefix("rbd:")
    cluster.rbd("snap", "create", f"{name}@before")
    e = engines(image)
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, 0, pattern(BLOCK, seed=77), 1)) == BLOCK

    snap = engines(f"{image}@before")
    assert snap.info.read_only and snap.info.size == SIZE
    assert run_one(snap, read(buf, 0, BLOCK, 2, at=BLOCK)) == BLOCK
    assert buf.mem[BLOCK : 2 * BLOCK] == pattern(SIZE, seed=3)[:BLOCK]  # as it was
    assert run_one(snap, write(buf, 0, pattern(BLOCK, seed=78), 3)) == -errno.EROFS
    zeroes = IoRequest(Op.WRITE_ZEROES, offset=0, length=BLOCK, token=4)
    assert run_one(snap, zeroes) == -errno.EROFS
    assert exported(cluster, f"{image}@before") == pattern(SIZE, seed=3)

    ro = engines(image, read_only=True)
    assert ro.info.read_only
    assert run_one(ro, write(buf, 0, pattern(BLOCK, seed=79), 5)) == -errno.EROFS
    assert exported(cluster, image)[:BLOCK] == pattern(BLOCK, seed=77)


def test_past_the_end_is_an_io_error(image, engines):
    e = engines(image)
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, SIZE - BLOCK // 2, pattern(BLOCK), 1)) == -errno.EIO
    assert run_one(e, read(buf, SIZE, BLOCK, 2)) == -errno.EIO
    assert e.info.size == SIZE


def test_bad_targets_give_one_clear_line(cluster, image, tmp_path):
    garbage = tmp_path / "garbage.conf"
    garbage.write_text("[global\nmon_host = = =\n")
    nowhere = tmp_path / "nowhere.conf"
    nowhere.write_text("[global]\nmon_host = v2:127.0.0.1:1\nauth_client_required = none\n")
    cases = [
        ("rbd:nopool/x", {}, "rbd:nopool/x: no pool nopool: it does not exist"),
        ("rbd:rbd/absent", {}, "rbd:rbd/absent: no image absent in pool rbd"),
        (f"{image}@nosnap", {}, f"{image}@nosnap: image {image[8:]} has no snapshot nosnap"),
        (image, {"conf": garbage}, f"{image}: cannot read the Ceph configuration {garbage}"),
        (image, {"conf": tmp_path / "absent.conf"}, f"{image}: ceph-conf={tmp_path}/absent.conf"),
        (image, {"conf": nowhere, "timeout_s": 1}, f"{image}: cannot connect to the Ceph cluster"),
        (image, {"keyring": tmp_path / "absent"}, f"{image}: ceph-keyring={tmp_path}/absent"),
    ]
    for spec, kw, reason in cases:
        kw.setdefault("conf", cluster.conf)
        start = time.monotonic()
        with pytest.raises(TargetUnavailable) as err:
            open_rbd(spec, 8, **kw)
        assert str(err.value).startswith(reason), str(err.value)
        assert "\n" not in str(err.value)
        assert time.monotonic() - start < 2 * WAIT_S  # each ends on its own timeout, no hang
    for spec, reason in {
        "rbd:": "is not an RBD image",
        "rbd:pool": "is not an RBD image",
        "rbd:pool/img:conf=x": "is not an RBD image",
        "rbd:a/b/c/d": "is not an RBD image",
    }.items():
        with pytest.raises(UsageError, match=reason):
            open_rbd(spec, 8, conf=cluster.conf)
    with pytest.raises(UsageError, match="not a Ceph client id"):
        open_rbd(image, 8, conf=cluster.conf, user="client.")


def test_the_dataplane_thread_serves_an_image(ram, cluster, image):
    """The engine in a real dataplane thread: librbd's eventfd in the thread's one wait."""
    engine = open_rbd(image, 64, conf=cluster.conf)
    disk = Disk(engine.info.sectors, queue_size=16)
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], -1, disk, dp=CDatapath(disk, engine, [0], log))
    try:
        payload = pattern(16384, seed=91)
        w = Req(ram, VIRTIO_BLK_T_OUT, 8, data=payload, split=4)
        f = Req(ram, VIRTIO_BLK_T_FLUSH, 0)
        assert ring_run(ram, ring, rig, [w, f]) == [1, 1]
        r = Req(ram, VIRTIO_BLK_T_IN, 8, read_len=16384, split=2)
        d = Req(ram, VIRTIO_BLK_T_DISCARD, 0, data=struct.pack("<QII", 64, 8, 0))
        z = Req(ram, VIRTIO_BLK_T_WRITE_ZEROES, 0, data=struct.pack("<QII", 96, 8, 0))
        assert ring_run(ram, ring, rig, [r, d, z], check_writes=True) == [16385, 1, 1]
        assert ram.read(r.inp, 16384) == payload
        assert [ram.read(x.status, 1)[0] for x in (w, f, r, d, z)] == [VIRTIO_BLK_S_OK] * 5
    finally:
        rig.close()
    disk_bytes = exported(cluster, image)
    assert disk_bytes[8 * 512 : 8 * 512 + 16384] == payload
    assert disk_bytes[96 * 512 : 104 * 512] == bytes(4096)


def test_writes_survive_an_osd_killed_under_them(cluster, image, engines):
    """min_size 1: one OSD down stalls I/O briefly, loses nothing, and catches up on return."""
    e = engines(image, depth=32)
    buf = Buffers(2 << 20)

    def writes(first: int) -> list[IoRequest]:
        out = []
        for i in range(first, first + 16):
            off = (i % 32) * 64 * 1024
            buf.mem[off : off + 65536] = pattern(65536, seed=i)
            out.append(
                IoRequest(
                    Op.WRITE,
                    offset=off,
                    length=65536,
                    token=i,
                    iov=buf.iov(65536, start=off),
                    dsync=True,
                )
            )
        return out

    first = writes(0)
    e.submit(first)
    cluster.osd_kill(1)
    assert set(collect(e, [r.token for r in first], timeout=60).values()) == {65536}
    assert run(e, writes(16), timeout=60) == {i: 65536 for i in range(16, 32)}
    cluster.osd_start(1)
    disk = exported(cluster, image)
    for i in range(32):
        off = i * 65536
        assert disk[off : off + 65536] == pattern(65536, seed=i), f"write {i}"

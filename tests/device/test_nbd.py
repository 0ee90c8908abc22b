"""The NBD engine (csrc/device/dp_nbd*.c) against real servers: qemu-nbd and nbdkit, no mocks.

Each test drives the C engine through submit and reap and checks the data as another
NBD client (qemu-img) or the image file sees it.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from pathlib import Path

import pytest
from engine_support import (
    Buffers,
    check_mixed_batch,
    collect,
    mixed_batch,
    pattern,
    pump,
    run,
    run_one,
)
from nbd_hostile import MODES, HostileNbdServer
from remote_servers import NBD_PROGRAMS, missing, nbdkit, qemu_nbd, read_export
from remote_support import servers_fixture  # noqa: F401  (the "servers" fixture)
from ringutil import Req, start_rig
from ringutil import run as ring_run
from waits import WAIT_S

from dataplane.device.datapath.c import CDatapath
from dataplane.device.disk import Disk
from dataplane.device.engines import IoRequest, Op
from dataplane.device.engines.remote import RemoteEngine, check_iothreads, image_kind, open_nbd
from dataplane.errors import TargetUnavailable, UsageError
from dataplane.guest.ring import DriverRing
from dataplane.spec.blk import (
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)

pytestmark = [
    pytest.mark.remote,
    pytest.mark.skipif(bool(missing(NBD_PROGRAMS)), reason=str(missing(NBD_PROGRAMS))),
]

SIZE = 4 << 20
BLOCK = 4096
log = logging.getLogger("test")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SIZE, seed=3))
    return path


@pytest.fixture
def engines():
    opened: list[RemoteEngine] = []

    def open_(uri: str, depth: int = 64, **kw) -> RemoteEngine:
        e = open_nbd(uri, depth, **kw)
        opened.append(e)
        return e

    yield open_
    for e in opened:
        e.close()


def write(
    buf: Buffers,
    offset: int,
    data: bytes,
    token: int,
    *pieces: int,
    gap: int = 0,
    at: int = 0,
    **kw,
) -> IoRequest:
    """A WRITE of data in iovecs of the given sizes, ``gap`` bytes apart in buf from ``at``."""
    iov = buf.iov(*(pieces or (len(data),)), start=at, gap=gap)
    buf.put(iov, data)
    return IoRequest(Op.WRITE, offset=offset, length=len(data), token=token, iov=iov, **kw)


def read(
    buf: Buffers, offset: int, length: int, token: int, *pieces: int, at: int = 0, gap: int = 0
) -> IoRequest:
    iov = buf.iov(*(pieces or (length,)), start=at, gap=gap)
    return IoRequest(Op.READ, offset=offset, length=length, token=token, iov=iov)


def test_open_reports_what_qemu_nbd_offers(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri)
    info = e.info
    assert image_kind(server.uri) == "nbd"
    assert info.size == SIZE and info.sectors == SIZE // 512
    assert not info.read_only
    assert info.can_flush and info.can_trim and info.can_zero and info.can_fua
    assert info.connected and info.reconnects == 0
    assert 1 <= info.block_min <= info.block_opt <= info.block_max <= 32 << 20
    assert e.completion_fd >= 0 and not e.ready()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_each_op_lands_on_the_export(tcp, image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path, tcp=tcp))
    e = engines(server.uri)
    buf = Buffers(1 << 20)
    one, three = pattern(2 * BLOCK, seed=11), pattern(3 * BLOCK, seed=12)

    assert run_one(e, write(buf, 0, one, 1)) == len(one)  # one iovec: straight from "guest" RAM
    # Three adjacent iovecs are one run (direct); three scattered ones go through the bounce.
    assert run_one(e, write(buf, 8 * BLOCK, three, 2, 1000, 2 * BLOCK, BLOCK - 1000)) == BLOCK * 3
    scattered = write(buf, 32 * BLOCK, three, 9, 1000, 2 * BLOCK, BLOCK - 1000, gap=512)
    assert run_one(e, scattered) == len(three)
    assert run_one(e, IoRequest(Op.FLUSH, token=3)) == 0
    assert run_one(e, IoRequest(Op.DISCARD, offset=16 * BLOCK, length=4 * BLOCK, token=4)) == (
        4 * BLOCK
    )
    zeroes = IoRequest(Op.WRITE_ZEROES, offset=24 * BLOCK, length=2 * BLOCK, token=5)
    assert run_one(e, zeroes) == 2 * BLOCK
    unmap = IoRequest(Op.WRITE_ZEROES, offset=28 * BLOCK, length=2 * BLOCK, token=6, unmap=True)
    assert run_one(e, unmap) == 2 * BLOCK

    want = bytearray(pattern(SIZE, seed=3))
    want[0 : len(one)] = one
    want[8 * BLOCK : 8 * BLOCK + len(three)] = three
    want[32 * BLOCK : 32 * BLOCK + len(three)] = three
    want[24 * BLOCK : 26 * BLOCK] = bytes(2 * BLOCK)
    want[28 * BLOCK : 30 * BLOCK] = bytes(2 * BLOCK)
    seen = bytearray(read_export(server.uri, tmp_path))
    assert seen[16 * BLOCK : 20 * BLOCK] in (bytes(4 * BLOCK), want[16 * BLOCK : 20 * BLOCK])
    seen[16 * BLOCK : 20 * BLOCK] = want[16 * BLOCK : 20 * BLOCK]  # discard may keep the data
    assert seen == want

    # And back through the engine, into one iovec and into scattered ones.
    assert run_one(e, read(buf, 8 * BLOCK, len(three), 7, at=1 << 19)) == len(three)
    assert buf.mem[1 << 19 : (1 << 19) + len(three)] == three
    back = read(buf, 32 * BLOCK, len(three), 8, 512, BLOCK, 2 * BLOCK - 512, at=1 << 18, gap=100)
    assert run_one(e, back) == len(three)
    assert buf.get(back.iov) == three


def test_write_through_uses_fua_when_offered_else_a_flush_after(image, tmp_path, servers, engines):
    fua = servers(nbdkit(image, tmp_path, filters=["log"], params=[f"logfile={tmp_path}/a.log"]))
    e = engines(fua.uri)
    assert e.info.can_fua
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, 0, pattern(BLOCK), 1, dsync=True)) == BLOCK
    e.close()
    fua.stop()
    log = (tmp_path / "a.log").read_text()
    assert "Write id=1 offset=0x0 count=0x1000 fua=1" in log and "Flush" not in log

    # nbdkit's fua filter, by default, hides FUA: the engine writes, then flushes.
    nofua = servers(
        nbdkit(image, tmp_path, filters=["log", "fua"], params=[f"logfile={tmp_path}/b.log"])
    )
    e = engines(nofua.uri)
    assert not e.info.can_fua and e.info.can_flush
    assert run_one(e, write(buf, BLOCK, pattern(BLOCK, seed=5), 2, dsync=True)) == BLOCK
    assert run_one(e, write(buf, 2 * BLOCK, pattern(BLOCK, seed=6), 3)) == BLOCK
    e.close()
    nofua.stop()
    ops = [
        w[3]
        for w in map(str.split, (tmp_path / "b.log").read_text().splitlines())
        if len(w) > 3 and w[2] == "connection=1" and w[3] in ("Write", "Flush")
    ]
    assert ops == ["Write", "Flush", "Write"]
    assert image.read_bytes()[BLOCK : 3 * BLOCK] == pattern(BLOCK, seed=5) + pattern(BLOCK, seed=6)


def test_zeroes_keep_allocation_unless_unmap_is_allowed(image, tmp_path, servers, engines):
    server = servers(nbdkit(image, tmp_path, filters=["log"], params=[f"logfile={tmp_path}/z.log"]))
    e = engines(server.uri)
    run(
        e,
        [
            IoRequest(Op.WRITE_ZEROES, offset=0, length=BLOCK, token=1),
            IoRequest(Op.WRITE_ZEROES, offset=2 * BLOCK, length=BLOCK, token=2, unmap=True),
        ],
    )
    e.close()
    server.stop()
    log = (tmp_path / "z.log").read_text()
    assert "offset=0x0 count=0x1000 trim=0" in log
    assert "offset=0x2000 count=0x1000 trim=1" in log
    assert image.read_bytes()[: 3 * BLOCK] == bytes(BLOCK) + pattern(SIZE, 3)[BLOCK : 2 * BLOCK] + (
        bytes(BLOCK)
    )


def test_requests_above_the_servers_maximum_are_split(image, tmp_path, servers, engines):
    # blocksize-policy makes the server advertise 64 KiB and fail anything larger.
    server = servers(
        nbdkit(
            image,
            tmp_path,
            filters=["blocksize-policy"],
            params=["blocksize-maximum=65536", "blocksize-error-policy=error"],
        )
    )
    e = engines(server.uri)
    assert e.info.block_max == 65536
    buf = Buffers(1 << 20)
    data = pattern(300_000 - 300_000 % 512, seed=8)
    assert run_one(e, write(buf, BLOCK, data, 1, 100_000, len(data) - 100_000)) == len(data)
    assert run_one(e, read(buf, BLOCK, len(data), 2, at=1 << 19)) == len(data)
    assert buf.mem[1 << 19 : (1 << 19) + len(data)] == data
    assert image.read_bytes()[BLOCK : BLOCK + len(data)] == data


def test_scattered_requests_above_the_bounce_limit_go_direct_or_are_refused(
    image, tmp_path, servers, engines
):
    """Past 1 MiB a scattered request is one command per run, if the runs are aligned."""
    big = pattern(2 << 20, seed=15)
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri)
    buf = Buffers(3 << 20)
    assert run_one(e, write(buf, 0, big, 1, *[1 << 19] * 4, gap=BLOCK)) == len(big)
    back = read(buf, 0, len(big), 2, *[1 << 19] * 4, gap=2 * BLOCK)
    assert run_one(e, back) == len(big) and buf.get(back.iov) == big
    assert read_export(server.uri, tmp_path)[: len(big)] == big
    e.close()
    server.stop()

    # A server with a 4 KiB minimum: unaligned runs bounce up to 1 MiB, and past it fail.
    strict = servers(
        nbdkit(
            image,
            tmp_path,
            filters=["blocksize-policy"],
            params=["blocksize-minimum=4096", "blocksize-error-policy=error"],
        )
    )
    e = engines(strict.uri)
    assert e.info.block_min == 4096
    small = pattern(64 * 1024, seed=16)
    assert run_one(e, write(buf, 0, small, 3, 1000, len(small) - 1000, gap=8)) == len(small)
    assert image.read_bytes()[: len(small)] == small
    unaligned = [1000, (1 << 20) - 1000, 1 << 20]
    assert run_one(e, write(buf, 0, big, 4, *unaligned, gap=8)) == -errno.EINVAL
    assert image.read_bytes()[len(small) : 2 << 20] == big[len(small) :]  # nothing written


def test_a_batch_of_mixed_requests_completes_each_token_once(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri, depth=64)
    buf = Buffers(1 << 20)
    reqs = mixed_batch(buf, BLOCK)
    reqs += [IoRequest(Op.FLUSH, token=100), IoRequest(Op.FLUSH, token=101)]
    results = run(e, reqs)
    assert results == {r.token: r.length for r in reqs}
    disk = read_export(server.uri, tmp_path)
    original = pattern(SIZE, seed=3)
    check_mixed_batch(reqs[:48], buf, disk, original, BLOCK)


def test_read_only_export_and_read_only_open_refuse_writes(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path, read_only=True))
    e = engines(server.uri)
    assert e.info.read_only
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, 0, pattern(BLOCK, 9), 1)) == -errno.EROFS
    assert run_one(e, IoRequest(Op.WRITE_ZEROES, offset=0, length=BLOCK, token=2)) == -errno.EROFS
    assert run_one(e, IoRequest(Op.DISCARD, offset=0, length=BLOCK, token=3)) == -errno.EROFS
    assert run_one(e, read(buf, 0, BLOCK, 4)) == BLOCK
    assert buf.mem[:BLOCK] == pattern(SIZE, seed=3)[:BLOCK]
    server.stop()

    writable = servers(qemu_nbd(image, tmp_path))
    e = engines(writable.uri, read_only=True)
    assert e.info.read_only
    assert run_one(e, write(buf, 0, pattern(BLOCK, 9), 5)) == -errno.EROFS
    assert image.read_bytes()[:BLOCK] == pattern(SIZE, seed=3)[:BLOCK]


def test_past_the_end_is_an_io_error_and_the_export_never_grows(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri)
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, SIZE - BLOCK // 2, pattern(BLOCK), 1)) == -errno.EIO
    assert run_one(e, read(buf, SIZE, BLOCK, 2)) == -errno.EIO
    assert run_one(e, IoRequest(Op.DISCARD, offset=SIZE, length=BLOCK, token=3)) == -errno.EIO
    assert image.stat().st_size == SIZE


def _kill_with_requests_in_flight(server, e: RemoteEngine, buf: Buffers) -> list[IoRequest]:
    """Stop the server, queue writes at it, kill it: the writes die with the connection."""
    server.pause()
    reqs = [write_at(buf, i) for i in range(16)]
    e.submit(reqs)
    time.sleep(0.05)
    assert e.reap() == [] and e.info.connected
    server.kill()
    return reqs


def write_at(buf: Buffers, i: int) -> IoRequest:
    off = i * 64 * 1024
    buf.mem[off : off + 64 * 1024] = pattern(64 * 1024, seed=40 + i)
    return IoRequest(
        Op.WRITE, offset=off, length=64 * 1024, iov=buf.iov(64 * 1024, start=off), token=i
    )


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_a_killed_server_is_reconnected_and_requests_in_flight_are_resubmitted(
    tcp, image, tmp_path, servers, engines
):
    server = servers(qemu_nbd(image, tmp_path, tcp=tcp))
    e = engines(server.uri, depth=32, reconnect_s=20)
    buf = Buffers(2 << 20)
    reqs = _kill_with_requests_in_flight(server, e, buf)
    assert pump(e, lambda: not e.info.connected) == []  # the engine notices the drop
    # New requests wait as well.
    late = read(buf, 0, BLOCK, 99, at=1 << 20)
    e.submit([late])
    assert e.reap() == []
    server.start()
    results = collect(e, [r.token for r in reqs] + [99])
    assert results == {**{r.token: 64 * 1024 for r in reqs}, 99: BLOCK}
    assert e.info.connected and e.info.reconnects == 1
    disk = read_export(server.uri, tmp_path)
    for i in range(16):
        assert disk[i * 65536 : (i + 1) * 65536] == pattern(65536, seed=40 + i), f"write {i}"


def test_an_idle_engine_reconnects_by_itself(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri)
    server.kill()
    server.start()
    pump(e, lambda: e.info.reconnects == 1)
    assert e.info.connected
    buf = Buffers(1 << 16)
    assert run_one(e, read(buf, 0, BLOCK, 1)) == BLOCK


def test_past_reconnect_s_requests_fail_with_eio_until_the_server_is_back(
    image, tmp_path, servers, engines
):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri, reconnect_s=1)
    buf = Buffers(1 << 20)
    reqs = _kill_with_requests_in_flight(server, e, buf)
    start = time.monotonic()
    results = collect(e, [r.token for r in reqs], timeout=10)
    waited = time.monotonic() - start
    assert set(results.values()) == {-errno.EIO}
    assert waited >= 0.8, f"failed after {waited:.2f}s, before reconnect-s=1"
    # Past the deadline, new requests fail at once...
    assert run_one(e, read(buf, 0, BLOCK, 50)) == -errno.EIO
    # ...until the server is back: the engine kept trying.
    server.start()
    pump(e, lambda: e.info.connected)
    assert run_one(e, read(buf, 0, BLOCK, 51)) == BLOCK


def test_reconnect_s_zero_fails_requests_at_the_drop(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    e = engines(server.uri, reconnect_s=0)
    reqs = _kill_with_requests_in_flight(server, e, Buffers(1 << 20))
    assert set(collect(e, [r.token for r in reqs]).values()) == {-errno.EIO}


def test_multi_conn_is_reported_and_iothreads_refused_without_it(image, tmp_path, servers, engines):
    server = servers(
        nbdkit(image, tmp_path, filters=["multi-conn"], params=["multi-conn-mode=disable"])
    )
    e = engines(server.uri)
    info = e.info
    e.close()  # nbdkit waits for its clients on SIGTERM
    assert not info.can_multi_conn
    check_iothreads(info, 1, server.uri)
    with pytest.raises(UsageError, match="iothreads=2 needs one connection per thread") as err:
        check_iothreads(info, 2, server.uri)
    assert "does not advertise multi-conn" in str(err.value)
    server.stop()
    multi = servers(nbdkit(image, tmp_path))
    info = engines(multi.uri).info
    assert info.can_multi_conn
    check_iothreads(info, 4, multi.uri)
    single = servers(qemu_nbd(image, tmp_path, extra=["--shared=1"]))
    assert not engines(single.uri).info.can_multi_conn


def test_each_thread_gets_its_own_connection(image, tmp_path, servers, engines):
    server = servers(qemu_nbd(image, tmp_path))
    a, b = engines(server.uri), engines(server.uri)
    buf = Buffers(1 << 16)
    assert run_one(a, write(buf, 0, pattern(BLOCK, 21), 1, dsync=True)) == BLOCK
    assert run_one(b, read(buf, 0, BLOCK, 2, at=BLOCK)) == BLOCK
    assert buf.mem[BLOCK : 2 * BLOCK] == pattern(BLOCK, 21)


def test_bad_targets_give_one_clear_line(image, tmp_path, servers):
    server = servers(qemu_nbd(image, tmp_path, export="disk"))
    cases = {
        f"nbd+unix:///nope?socket={server.sock}": "the NBD server refused: server has no "
        "export named 'nope'",
        f"nbd+unix:///disk?socket={tmp_path}/absent.sock": "cannot connect to the NBD server",
        "nbd://127.0.0.1:1/disk": "cannot connect to the NBD server",
    }
    for uri, reason in cases.items():
        with pytest.raises(TargetUnavailable) as e:
            open_nbd(uri, 8, timeout_s=5)
        assert str(e.value).startswith(f"{uri}: {reason}")
        assert "\n" not in str(e.value)
    for uri, reason in {
        "http://x/y": "is not an NBD URI",
        "nbd+unix:///disk": r"needs \?socket=PATH",
        "nbd://host/ex port": "contains spaces",
    }.items():
        with pytest.raises(UsageError, match=reason):
            open_nbd(uri, 8)
    with pytest.raises(UsageError, match="reconnect-s=-1"):
        open_nbd(server.uri, 8, reconnect_s=-1)
    with pytest.raises(UsageError, match="queue depth"):
        open_nbd(server.uri, 0)


def test_a_server_that_never_answers_times_out(tmp_path):
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)
    start = time.monotonic()
    with pytest.raises(TargetUnavailable, match="timed out waiting for the server"):
        open_nbd(f"nbd+unix:///?socket={tmp_path}/silent.sock", 8, timeout_s=0.5)
    assert time.monotonic() - start < WAIT_S  # the 0.5 s timeout ended it, not a hang's bound
    silent.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_server_costs_its_requests_not_the_process(mode, tmp_path, engines):
    server = HostileNbdServer(tmp_path / "hostile.sock", mode)
    try:
        e = engines(server.uri, reconnect_s=0.3)
        buf = Buffers(3 * BLOCK)
        buf.mem[:] = b"\xaa" * (3 * BLOCK)
        result = run_one(e, read(buf, BLOCK, BLOCK, 1, at=BLOCK), timeout=10)
        assert result < 0
        assert buf.mem[:BLOCK] == b"\xaa" * BLOCK  # nothing written outside the request
        assert buf.mem[2 * BLOCK :] == b"\xaa" * BLOCK
        assert server.connections >= 2  # it was retried, then given up
    finally:
        server.close()


@pytest.mark.parametrize(
    "size, block_sizes, refused",
    [
        (1 << 63, None, "impossible export size"),
        ((1 << 64) - 1, None, "impossible export size"),
        (1 << 20, (65536, 65536, 65536), None),  # the largest minimum there is
        (1 << 20, (512, 4096, 3 * 4096), None),  # a maximum that is no power of two
        (1 << 20, (3, 4096, 65536), None),  # invalid: libnbd ignores them
        (1 << 20, (1 << 20, 1 << 20, 1 << 20), None),
        (1 << 20, (512, 4096, 1), None),
    ],
)
def test_hostile_sizes_are_refused_or_clamped(size, block_sizes, refused, tmp_path):
    server = HostileNbdServer(tmp_path / "h.sock", size=size, block_sizes=block_sizes)
    try:
        if refused:
            with pytest.raises(TargetUnavailable) as err:
                open_nbd(server.uri, 8, timeout_s=5)
            assert str(err.value) == f"{server.uri}: the server reports an {refused}"
            return
        e = open_nbd(server.uri, 8, timeout_s=5)
        info = e.info
        e.close()
        assert info.size == size
        assert 1 <= info.block_min <= 65536 and info.block_max >= info.block_min
        assert info.block_max <= 32 << 20 and info.block_max % info.block_min == 0
    finally:
        server.close()


def test_nbdkit_over_tcp(image, tmp_path, servers, engines):
    server = servers(nbdkit(image, tmp_path, tcp=True))
    e = engines(server.uri)
    buf = Buffers(1 << 16)
    assert run_one(e, write(buf, 0, pattern(BLOCK, 31), 1)) == BLOCK
    assert run_one(e, IoRequest(Op.FLUSH, token=2)) == 0
    assert image.read_bytes()[:BLOCK] == pattern(BLOCK, 31)


def test_the_dataplane_thread_serves_an_export_and_rides_out_a_reconnect(
    ram, image, tmp_path, servers
):
    """The engine in a real dataplane thread: its completion fd in the thread's one wait."""
    server = servers(qemu_nbd(image, tmp_path))
    engine = open_nbd(server.uri, 64)
    disk = Disk(engine.info.sectors, queue_size=16)
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], -1, disk, dp=CDatapath(disk, engine, [0], log))
    try:
        payload = pattern(8192, seed=61)
        w = Req(ram, VIRTIO_BLK_T_OUT, 16, data=payload, split=2)
        assert ring_run(ram, ring, rig, [w]) == [1]
        r = Req(ram, VIRTIO_BLK_T_IN, 16, read_len=8192, split=4)
        f = Req(ram, VIRTIO_BLK_T_FLUSH, 0)
        assert ring_run(ram, ring, rig, [r, f], check_writes=True) == [8193, 1]
        assert ram.read(r.inp, 8192) == payload

        # Requests at a stopped server; it dies and comes back; the guest sees only OK.
        server.pause()
        writes = [
            Req(ram, VIRTIO_BLK_T_OUT, 64 + 16 * i, data=pattern(8192, seed=62 + i))
            for i in range(4)
        ]
        ring.publish([ring.add_chain(x.bufs) for x in writes])
        rig.kick(0)
        assert not rig.wait_call(0, timeout=0.2)
        server.kill()
        server.start()
        done = []
        while len(done) < len(writes):
            assert rig.wait_call(0, timeout=10), "no completion after the reconnect"
            done += ring.get_used()
        assert [ram.read(x.status, 1)[0] for x in writes] == [VIRTIO_BLK_S_OK] * 4
        disk_bytes = read_export(server.uri, tmp_path)
        for i in range(4):
            at = (64 + 16 * i) * 512
            assert disk_bytes[at : at + 8192] == pattern(8192, seed=62 + i)
        assert disk_bytes[16 * 512 : 16 * 512 + 8192] == payload
        assert engine.info.reconnects == 1
    finally:
        rig.close()


def test_reads_through_nbd_are_dirty_logged(image, tmp_path, servers, ram):
    """The NBD engine writes guest memory from libnbd's callbacks: those pages are logged
    (live migration) like an io_uring read's, with the status byte and the used ring."""
    from dirty_log_support import LogModel, Req, new_log, serve

    from dataplane.spec.dirty_log import logged_pages

    server = servers(qemu_nbd(image, tmp_path))
    dp = CDatapath(Disk(SIZE // 512, queue_size=32), open_nbd(server.uri, 64), range(1), log)
    ring = DriverRing(ram, 32)
    rig = start_rig(ram, [ring], -1, Disk(SIZE // 512, queue_size=32), dp=dp)
    dirty = new_log(ram)
    try:
        rig.thread.set_dirty_log(dirty.host_addr, dirty.pages).result(10)
        rig.thread.set_used_log(0, ring.used).result(10)
        reqs = [Req(ram, VIRTIO_BLK_T_IN, 8 * i, 4096 * (i + 1), i + 1) for i in range(4)]
        serve(ram, rig, ring, reqs)
        model = LogModel()
        for r in reqs:
            model.request(r)
            assert ram.read(r.status, 1) == b"\0"
            got = b"".join(ram.read(b.gpa, b.length) for b in r.data_in)
            assert got == image.read_bytes()[r.sector * 512 : r.sector * 512 + len(got)]
        model.used_ring(ring)
        assert logged_pages(dirty.view) == model.pages
    finally:
        rig.thread.set_dirty_log(0, 0).result(10)
        rig.close()
        dirty.close()

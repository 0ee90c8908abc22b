"""The backend over a real socket: a frontend in the test suite plays QEMU and the guest."""

from __future__ import annotations

import os
import shutil
import socket as socketlib
import struct

import pytest
from guest_support import start_dataplane

from dataplane.guest.frontend import Frontend
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.spec.blk import (
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
)
from dataplane.spec.ring import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
)
from dataplane.vhost.messages import HEADER, ProtocolFeature, Request, VringFile, VringState

SECTORS = 8192
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


@pytest.fixture
def serve(tmp_path):
    """serve(image_bytes=..., **flags) -> (backend, socket path, image path)."""
    started = []
    sock_dir = short_socket_dir()

    def start(*, aio="io_uring", num_queues=1, extra=(), image=None):
        img = tmp_path / f"img{len(started)}"
        if image is None:
            img.write_bytes(os.urandom(SECTORS * 512))
        else:
            img.write_bytes(image)
        sock = sock_dir / f"s{len(started)}.sock"
        b = start_dataplane(
            sock, img, aio=aio, num_queues=num_queues, log_path=tmp_path / "log",
            extra_args=tuple(extra),
        )  # fmt: skip
        started.append(b)
        return b, sock, img

    yield start
    for b in started:
        rc = b.stop()
        assert rc == 0, b.log_text()
        assert not b.socket.exists()
    shutil.rmtree(sock_dir, ignore_errors=True)


def test_negotiation(serve):
    b, sock, _ = serve(num_queues=2)
    with Frontend.connect(sock) as fe:
        f = fe.get_features()
        for bit in (
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            30,
        ):
            assert f & (1 << bit), bit
        assert not f & (1 << VIRTIO_BLK_F_RO)
        pf = fe.get_protocol_features()
        for bit in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG):
            assert pf & (1 << bit)
        fe.set_protocol_features(pf)
        assert fe.get_queue_num() == 2
        fe.set_owner()
        cfg = CONFIG.unpack(fe.get_config(0, 60))
        assert cfg[0] == SECTORS  # capacity
        assert cfg[2] == 254  # seg_max = queue size - 2
        assert cfg[6] == 512  # blk_size
        assert cfg[11] == 1  # writeback
        assert cfg[13] == 2  # num_queues
        # A driver write to the writeback byte switches the cache to write-through.
        fe.set_features(f)
        fe.set_config(32, b"\0")
        assert fe.get_config(32, 1) == b"\0"
        # Writes to anything else in config space are refused (REPLY_ACK != 0).
        with pytest.raises(Exception, match="SET_CONFIG failed"):
            fe.set_config(0, b"\1")


@pytest.mark.parametrize("aio", ["io_uring", "native", "threads", "null"])
def test_io_through_the_socket(serve, aio):
    original = os.urandom(SECTORS * 512)
    b, sock, img = serve(aio=aio, image=original)
    with BlkDriver(sock) as d:
        assert d.capacity == SECTORS
        data = os.urandom(64 * 1024)
        assert d.write(100, data).status == 0
        r = d.read(100, len(data))
        assert r.status == 0
        if aio == "null":
            assert r.data == bytes(len(data))
            assert img.read_bytes() == original
            return
        assert r.data == data
        assert d.flush().status == 0
        assert d.get_id().data.rstrip(b"\0") == img.name.encode()
        assert d.discard(0, 8).status == 0
        assert d.write_zeroes(16, 8, unmap=True).status == 0
        assert d.write_zeroes(32, 8).status == 0
        assert d.write(SECTORS - 1, bytes(1024)).status == 1  # past the end: IOERR
    on_disk = img.read_bytes()
    assert len(on_disk) == SECTORS * 512
    assert on_disk[100 * 512 : 100 * 512 + len(data)] == data
    for s in (0, 16, 32):
        assert on_disk[s * 512 : (s + 8) * 512] == bytes(4096)
    assert on_disk[8 * 512 : 16 * 512] == original[8 * 512 : 16 * 512]


def test_two_queues(serve):
    b, sock, img = serve(num_queues=2)
    with BlkDriver(sock, num_queues=2) as d:
        blocks = {q: os.urandom(4096) for q in (0, 1)}
        for q, data in blocks.items():
            d.submit(1, sector=8 * (q + 1), data=data, queue=q)
        for q in (0, 1):
            assert d.wait(1, queue=q)[0].status == 0
        for q, data in blocks.items():
            assert d.read(8 * (q + 1), 4096, queue=1 - q).data == data


def test_stop_and_restart_ring(serve):
    b, sock, img = serve()
    with BlkDriver(sock) as d:
        for i in range(6):
            d.submit(0, sector=i, read_len=512, kick=False)
        d.kick()
        assert len(d.wait(6)) == 6
        # GET_VRING_BASE: the ring stops and reports how far it got.
        assert d.stop_queue(0) == 6
        # Requests published while stopped are not processed...
        d.submit(1, sector=0, data=b"\x11" * 512)
        with pytest.raises(TimeoutError):
            d.wait(1, timeout=0.5)
        # ...until the ring is started again from that base.
        d.start_queue(0, base=6)
        assert d.wait(1)[0].status == 0
    assert img.read_bytes()[:512] == b"\x11" * 512


def test_reconnect_after_disconnect(serve):
    b, sock, img = serve()
    with BlkDriver(sock) as d:
        assert d.write(0, b"\x22" * 4096).status == 0
    # The first frontend vanished without stopping its rings; the next one is served.
    with BlkDriver(sock) as d:
        assert d.read(0, 4096).data == b"\x22" * 4096
    assert "frontend disconnected" in b.log_text()


def test_protocol_error_drops_connection_and_keeps_serving(serve):
    b, sock, img = serve()
    s = socketlib.socket(socketlib.AF_UNIX)
    s.connect(str(sock))
    s.sendall(HEADER.pack(999, 1, 0))
    assert s.recv(16) == b""  # the backend hung up
    s.close()
    with BlkDriver(sock) as d:
        assert d.read(0, 512).status == 0
    log = b.log_text()
    assert log.count("protocol error") == 1 and "999" in log


def test_unknown_vring_index_is_a_protocol_error(serve):
    b, sock, img = serve()
    with Frontend.connect(sock) as fe:
        fe.send(Request.SET_VRING_NUM, VringState(5, 128))
        assert fe.sock.recv(16) == b""
    with BlkDriver(sock) as d:
        assert d.read(0, 512).status == 0


def test_read_only(serve):
    original = os.urandom(SECTORS * 512)
    b, sock, img = serve(extra=["--read-only"], image=original)
    with BlkDriver(sock) as d:
        assert d.features & (1 << VIRTIO_BLK_F_RO)
        assert d.write(0, b"\x33" * 512).status == 1
        assert d.read(0, 512).data == original[:512]
    assert img.read_bytes() == original


def test_fds_stay_with_their_message_when_messages_arrive_together(serve):
    """A stream socket may deliver a later message's fds with an earlier message's bytes."""
    b, sock, img = serve()
    from dataplane.guest.ring import GuestRam
    from dataplane.vhost.messages import MemTable

    ram = GuestRam(1 << 20)
    try:
        with Frontend.connect(sock) as fe:
            features = fe.get_features()
            # No waiting in between: both messages sit in the socket buffer together.
            fe.send(Request.SET_FEATURES, features)
            fe.send(Request.SET_MEM_TABLE, MemTable((ram.spec,), (ram.fd,)))
            call = os.eventfd(0)
            fe.send(Request.SET_VRING_CALL, VringFile(0, call))
            os.close(call)
            assert fe.get_queue_num() == 1
    finally:
        ram.close()
    assert "protocol error" not in b.log_text()


def _signalled(fd: int, timeout: float = 5.0) -> int:
    """The eventfd's count once it is readable (0 if it stays clear for ``timeout``)."""
    import select

    if not select.select([fd], [], [], timeout)[0]:
        return 0
    return os.eventfd_read(fd)


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_set_vring_call_signals_the_new_call_fd(serve, datapath):
    """As libvhost-user: every call fd SET_VRING_CALL installs is written once (QEMU's idx test)."""
    from dataplane.guest.ring import DriverRing, GuestRam
    from dataplane.guest.virtio_blk import negotiate, start_vring
    from dataplane.vhost.messages import MemTable

    b, sock, img = serve(extra=["--datapath", datapath])
    ram = GuestRam(1 << 20)
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
    kick, before_start, while_running = fds
    try:
        with Frontend.connect(sock) as fe:
            negotiate(fe)
            fe.set_mem_table(MemTable((ram.spec,), (ram.fd,)))
            # Installed before the ring runs (QEMU's order: CALL, then ENABLE).
            fe.set_vring_call(0, before_start)
            assert _signalled(before_start) == 1
            ring = DriverRing(ram, 8)
            start_vring(fe, ram, 0, ring, kick, before_start)
            assert _signalled(before_start) == 1  # start_vring sent SET_VRING_CALL again
            # Replaced while the ring runs: the new fd is signalled, and used from then on.
            fe.set_vring_call(0, while_running)
            assert _signalled(while_running) == 1
            assert _signalled(before_start, timeout=0.2) == 0
    finally:
        for fd in fds:
            os.close(fd)
        ram.close()
    with BlkDriver(sock) as d:
        assert d.read(0, 512).status == 0

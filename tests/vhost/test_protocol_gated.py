"""The requests gated by protocol features: INFLIGHT_SHMFD, CONFIGURE_MEM_SLOTS, BACKEND_REQ,
LOG_SHMFD.

Bytes and fds in, messages out, byte by byte as tests/vhost/test_protocol.py does; every
request here is a protocol error until its feature was negotiated.
"""

from __future__ import annotations

import os
import socket

import pytest
from vhost_support import feed_stream, msg

from dataplane.device.memory import MAX_MEM_SLOTS, RegionSpec
from dataplane.errors import ProtocolError
from dataplane.vhost.encoding import encode_body, payload_fds
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    INFLIGHT,
    MEM_REG_SIZE,
    VERSION,
    BackendReqFd,
    Inflight,
    LogBase,
    MemReg,
    ProtocolFeature,
    Request,
)
from dataplane.vhost.protocol import BackendConnection

GATED = (
    ProtocolFeature.INFLIGHT_SHMFD,
    ProtocolFeature.CONFIGURE_MEM_SLOTS,
    ProtocolFeature.BACKEND_REQ,
    ProtocolFeature.REPLY_ACK,
)
REGION = RegionSpec(0x100000000, 128 << 20, 0x7F1234560000, 0x1000)


def negotiated(*features: ProtocolFeature) -> BackendConnection:
    """A connection after SET_PROTOCOL_FEATURES with ``features``, taken as the session does."""
    conn = BackendConnection()
    conn.receive_data(msg(Request.SET_PROTOCOL_FEATURES, sum(1 << f for f in features)))
    conn.set_protocol_features(conn.next_message().payload)
    return conn


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def memfd():
    fd = os.memfd_create("test-region", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    yield fd
    if is_open(fd):
        os.close(fd)


def test_wire_layouts_are_qemus():
    # VhostUserInflight is not packed in QEMU: two u64, two u16, 4 bytes of tail padding.
    assert INFLIGHT.size == 24
    # VhostUserMemRegMsg: a u64 of padding, then guest address, size, user address, offset.
    assert MEM_REG_SIZE == 40
    body = encode_body(MemReg(REGION, None))
    assert body == bytes(8) + b"".join(
        v.to_bytes(8, "little") for v in (0x100000000, 128 << 20, 0x7F1234560000, 0x1000)
    )
    body = encode_body(Inflight(4160, 0, 2, 256))
    assert body == (4160).to_bytes(8, "little") + bytes(8) + b"\x02\x00\x00\x01" + bytes(4)


def test_byte_at_a_time_stream_of_the_gated_requests(memfd):
    conn = negotiated(*GATED)
    a, b = socket.socketpair()
    inflight_fd = os.dup(memfd)
    region_fd = os.dup(memfd)
    stray_fd = os.dup(memfd)
    try:
        stream = [
            (msg(Request.GET_MAX_MEM_SLOTS), []),
            (msg(Request.ADD_MEM_REG, MemReg(REGION, region_fd)), [region_fd]),
            (msg(Request.REM_MEM_REG, MemReg(REGION, None)), []),
            # Old QEMUs sent the region's fd with REM_MEM_REG: accepted and closed unused.
            (msg(Request.REM_MEM_REG, MemReg(REGION, None)), [stray_fd]),
            (msg(Request.GET_INFLIGHT_FD, Inflight(0, 0, 2, 128)), []),
            (msg(Request.SET_INFLIGHT_FD, Inflight(4160, 0, 2, 128, inflight_fd)), [inflight_fd]),
            (msg(Request.SET_BACKEND_REQ_FD, BackendReqFd(b.fileno())), [b.fileno()]),
        ]
        got = feed_stream(conn, stream)
        assert [m.request for m in got] == [
            Request.GET_MAX_MEM_SLOTS,
            Request.ADD_MEM_REG,
            Request.REM_MEM_REG,
            Request.REM_MEM_REG,
            Request.GET_INFLIGHT_FD,
            Request.SET_INFLIGHT_FD,
            Request.SET_BACKEND_REQ_FD,
        ]
        assert got[0].payload is None
        assert got[1].payload == MemReg(REGION, region_fd)
        assert got[2].payload == MemReg(REGION, None)
        assert got[3].payload == MemReg(REGION, None)
        assert not is_open(stray_fd)
        assert got[4].payload == Inflight(0, 0, 2, 128, None)
        assert got[5].payload == Inflight(4160, 0, 2, 128, inflight_fd)
        assert got[6].payload == BackendReqFd(b.fileno())
        assert payload_fds(got[5].payload) == [inflight_fd]
        assert payload_fds(got[6].payload) == [b.fileno()]
    finally:
        for fd in (inflight_fd, region_fd):
            if is_open(fd):
                os.close(fd)
        a.close()
        b.close()


def test_set_backend_req_fd_as_qemu_sends_it():
    # QEMU's vhost_setup_backend_channel: no body, one fd, NEED_REPLY when REPLY_ACK is on.
    conn = negotiated(ProtocolFeature.BACKEND_REQ, ProtocolFeature.REPLY_ACK)
    a, b = socket.socketpair()
    fd = os.dup(b.fileno())
    try:
        header = HEADER.pack(Request.SET_BACKEND_REQ_FD, VERSION | FLAG_NEED_REPLY, 0)
        conn.receive_data(header, [fd])
        m = conn.next_message()
        assert m.payload == BackendReqFd(fd)
        assert conn.ack(m, True) == HEADER.pack(
            Request.SET_BACKEND_REQ_FD, VERSION | FLAG_REPLY, 8
        ) + bytes(8)
    finally:
        os.close(fd)
        a.close()
        b.close()


def test_replies_are_exact(memfd):
    conn = negotiated(*GATED)
    conn.receive_data(msg(Request.GET_MAX_MEM_SLOTS))
    m = conn.next_message()
    assert conn.reply(m, MAX_MEM_SLOTS) == HEADER.pack(
        Request.GET_MAX_MEM_SLOTS, VERSION | FLAG_REPLY, 8
    ) + MAX_MEM_SLOTS.to_bytes(8, "little")

    conn.receive_data(msg(Request.GET_INFLIGHT_FD, Inflight(0, 0, 1, 256)))
    m = conn.next_message()
    reply = Inflight(4160, 0, 1, 256, memfd)
    assert conn.reply(m, reply) == HEADER.pack(
        Request.GET_INFLIGHT_FD, VERSION | FLAG_REPLY, 24
    ) + (4160).to_bytes(8, "little") + bytes(8) + b"\x01\x00\x00\x01" + bytes(4)
    assert payload_fds(reply) == [memfd]  # the reply carries the area's fd

    # ADD/REM_MEM_REG have no reply of their own outside postcopy: a REPLY_ACK when asked.
    region_fd = os.dup(memfd)
    conn.receive_data(
        msg(Request.ADD_MEM_REG, MemReg(REGION, region_fd), VERSION | FLAG_NEED_REPLY),
        [region_fd],
    )
    m = conn.next_message()
    os.close(region_fd)
    nack = HEADER.pack(Request.ADD_MEM_REG, VERSION | FLAG_REPLY, 8) + (1).to_bytes(8, "little")
    assert conn.ack(m, False) == nack


@pytest.mark.parametrize(
    ("request_", "feature", "payload", "nfds"),
    [
        (Request.GET_MAX_MEM_SLOTS, ProtocolFeature.CONFIGURE_MEM_SLOTS, None, 0),
        (Request.ADD_MEM_REG, ProtocolFeature.CONFIGURE_MEM_SLOTS, MemReg(REGION, 0), 1),
        (Request.REM_MEM_REG, ProtocolFeature.CONFIGURE_MEM_SLOTS, MemReg(REGION, None), 0),
        (Request.GET_INFLIGHT_FD, ProtocolFeature.INFLIGHT_SHMFD, Inflight(0, 0, 1, 8), 0),
        (Request.SET_INFLIGHT_FD, ProtocolFeature.INFLIGHT_SHMFD, Inflight(64, 0, 1, 8), 1),
        (Request.SET_BACKEND_REQ_FD, ProtocolFeature.BACKEND_REQ, BackendReqFd(0), 1),
    ],
)
def test_gated_requests_need_their_feature(memfd, request_, feature, payload, nfds):
    others = [f for f in GATED if f is not feature]
    for conn in (BackendConnection(), negotiated(*others)):
        fds = [os.dup(memfd) for _ in range(nfds)]
        conn.receive_data(msg(request_, payload), fds)
        with pytest.raises(ProtocolError, match=f"needs protocol feature {feature.name}"):
            conn.next_message()
        assert not any(is_open(fd) for fd in fds)  # closed with the failed connection
    conn = negotiated(feature)
    fds = [os.dup(memfd) for _ in range(nfds)]
    conn.receive_data(msg(request_, payload), fds)
    assert conn.next_message().request is request_
    for fd in fds:
        os.close(fd)


def _raw(request: Request, body: bytes) -> bytes:
    return HEADER.pack(request, VERSION, len(body)) + body


@pytest.mark.parametrize(
    ("data", "nfds"),
    [
        (_raw(Request.ADD_MEM_REG, bytes(MEM_REG_SIZE)), 0),  # no fd
        (_raw(Request.ADD_MEM_REG, bytes(MEM_REG_SIZE)), 2),  # two fds
        (_raw(Request.ADD_MEM_REG, bytes(MEM_REG_SIZE - 8)), 1),  # no padding (packed)
        (_raw(Request.ADD_MEM_REG, bytes(MEM_REG_SIZE + 8)), 1),
        (_raw(Request.REM_MEM_REG, bytes(MEM_REG_SIZE)), 2),
        (_raw(Request.REM_MEM_REG, bytes(32)), 0),
        (_raw(Request.GET_INFLIGHT_FD, bytes(20)), 0),  # a packed struct: not QEMU's layout
        (_raw(Request.GET_INFLIGHT_FD, bytes(24)), 1),  # the request carries no fd
        (_raw(Request.SET_INFLIGHT_FD, bytes(24)), 0),  # the area's fd is missing
        (_raw(Request.SET_INFLIGHT_FD, bytes(24)), 2),
        (_raw(Request.SET_INFLIGHT_FD, bytes(32)), 1),
        (_raw(Request.SET_BACKEND_REQ_FD, b""), 0),
        (_raw(Request.SET_BACKEND_REQ_FD, b""), 2),
        (_raw(Request.SET_BACKEND_REQ_FD, bytes(4)), 1),
        (_raw(Request.GET_MAX_MEM_SLOTS, bytes(4)), 0),
        (_raw(Request.GET_MAX_MEM_SLOTS, b""), 1),
    ],
)
def test_malformed_gated_requests_are_protocol_errors_and_close_their_fds(memfd, data, nfds):
    conn = negotiated(*GATED)
    fds = [os.dup(memfd) for _ in range(nfds)]
    conn.receive_data(data, fds)
    with pytest.raises(ProtocolError):
        conn.next_message()
    assert not any(is_open(fd) for fd in fds)
    with pytest.raises(ProtocolError):  # and the connection stays failed
        conn.receive_data(msg(Request.GET_FEATURES))


def test_hostile_values_parse_and_are_left_to_the_checks(memfd):
    """The parser takes any u64/u16 value; the inflight and memory checks refuse them."""
    conn = negotiated(*GATED)
    fd = os.dup(memfd)
    body = INFLIGHT.pack(2**64 - 1, 2**64 - 4096, 0xFFFF, 0xFFFF)
    conn.receive_data(_raw(Request.SET_INFLIGHT_FD, body), [fd])
    assert conn.next_message().payload == Inflight(2**64 - 1, 2**64 - 4096, 0xFFFF, 0xFFFF, fd)
    os.close(fd)


def test_set_log_base_needs_log_shmfd_and_one_fd():
    fd = os.memfd_create("log")
    conn = negotiated(ProtocolFeature.LOG_SHMFD)
    conn.receive_data(msg(Request.SET_LOG_BASE, LogBase(4096, 64, fd)), [fd])
    m = conn.next_message()
    assert m.payload == LogBase(4096, 64, fd)
    assert conn.reply(m, 0) == HEADER.pack(Request.SET_LOG_BASE, VERSION | FLAG_REPLY, 8) + bytes(8)
    conn.receive_data(msg(Request.SET_LOG_BASE, LogBase(4096, 0, fd)))  # no fd
    with pytest.raises(ProtocolError, match="carries 0 fds"):
        conn.next_message()
    os.close(fd)

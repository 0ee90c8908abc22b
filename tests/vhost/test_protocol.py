"""The sans-IO vhost-user connection: bytes and fds in, messages and replies out."""

from __future__ import annotations

import os

import pytest
from vhost_support import feed_stream, msg

from dataplane.device.memory import RegionSpec
from dataplane.errors import ProtocolError
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    VERSION,
    Config,
    MemTable,
    ProtocolFeature,
    Request,
    VringAddr,
    VringFile,
    VringState,
)
from dataplane.vhost.protocol import BackendConnection


def test_byte_at_a_time_stream_of_every_body_kind():
    r, w = os.pipe()
    e = os.eventfd(0)
    try:
        conn = BackendConnection()
        region = RegionSpec(0, 1 << 20, 0x7F0000000000, 0)
        stream = [
            (msg(Request.GET_FEATURES), []),
            (msg(Request.SET_FEATURES, 1 << 32), []),
            (msg(Request.SET_MEM_TABLE, MemTable((region,), (r,))), [r]),
            (msg(Request.SET_VRING_NUM, VringState(0, 256)), []),
            (msg(Request.SET_VRING_ADDR, VringAddr(0, 0, 1, 2, 3, 0)), []),
            (msg(Request.SET_VRING_KICK, VringFile(0, e)), [e]),
            (msg(Request.SET_VRING_CALL, VringFile(1, None)), []),
            (msg(Request.GET_CONFIG, Config(0, 60, 0, bytes(60))), []),
        ]
        got = feed_stream(conn, stream)
        assert [m.request for m in got] == [
            Request.GET_FEATURES,
            Request.SET_FEATURES,
            Request.SET_MEM_TABLE,
            Request.SET_VRING_NUM,
            Request.SET_VRING_ADDR,
            Request.SET_VRING_KICK,
            Request.SET_VRING_CALL,
            Request.GET_CONFIG,
        ]
        assert got[1].payload == 1 << 32
        assert got[2].payload == MemTable((region,), (r,))
        assert got[4].payload == VringAddr(0, 0, 1, 2, 3, 0)
        assert got[5].payload == VringFile(0, e)
        assert got[6].payload == VringFile(1, None)
        assert got[7].payload.size == 60
    finally:
        for fd in (r, w, e):
            os.close(fd)


def test_two_messages_in_one_chunk_keep_their_fds_apart():
    e1, e2 = os.eventfd(0), os.eventfd(0)
    try:
        conn = BackendConnection()
        data = msg(Request.SET_VRING_KICK, VringFile(0, e1)) + msg(Request.GET_QUEUE_NUM)
        conn.receive_data(data, [e1])
        conn.receive_data(msg(Request.SET_VRING_CALL, VringFile(0, e2)), [e2])
        a, b, c = conn.next_message(), conn.next_message(), conn.next_message()
        assert a.payload == VringFile(0, e1)
        assert b.request is Request.GET_QUEUE_NUM
        assert c.payload == VringFile(0, e2)
        assert conn.next_message() is None
    finally:
        os.close(e1)
        os.close(e2)


def test_replies_are_exact():
    conn = BackendConnection()
    conn.receive_data(msg(Request.GET_FEATURES))
    m = conn.next_message()
    reply = conn.reply(m, 0x1234)
    assert reply == HEADER.pack(Request.GET_FEATURES, VERSION | FLAG_REPLY, 8) + (0x1234).to_bytes(
        8, "little"
    )
    conn.receive_data(msg(Request.GET_VRING_BASE, VringState(1, 0)))
    m = conn.next_message()
    assert conn.reply(m, VringState(1, 77)) == HEADER.pack(
        Request.GET_VRING_BASE, VERSION | FLAG_REPLY, 8
    ) + (1).to_bytes(4, "little") + (77).to_bytes(4, "little")


def test_reply_ack_only_when_negotiated_and_asked():
    conn = BackendConnection()
    ask = VERSION | FLAG_NEED_REPLY
    conn.receive_data(msg(Request.SET_OWNER, flags=ask))
    assert conn.ack(conn.next_message(), True) == b""  # REPLY_ACK not negotiated yet
    conn.receive_data(msg(Request.SET_PROTOCOL_FEATURES, 1 << ProtocolFeature.REPLY_ACK))
    conn.set_protocol_features(conn.next_message().payload)  # as the session does
    conn.receive_data(msg(Request.SET_OWNER, flags=ask))
    m = conn.next_message()
    assert conn.ack(m, True) == HEADER.pack(Request.SET_OWNER, VERSION | FLAG_REPLY, 8) + bytes(8)
    assert conn.ack(m, False)[-8:] == (1).to_bytes(8, "little")
    conn.receive_data(msg(Request.SET_OWNER))
    assert conn.ack(conn.next_message(), True) == b""  # not asked
    conn.receive_data(msg(Request.GET_QUEUE_NUM, flags=ask))
    assert conn.ack(conn.next_message(), True) == b""  # has its own reply


def test_replies_change_no_negotiated_state():
    """ack() and reply() only build bytes: the protocol features change through
    set_protocol_features alone, and gate the requests from then on."""
    conn = BackendConnection()
    features = (1 << ProtocolFeature.REPLY_ACK) | (1 << ProtocolFeature.LOG_SHMFD)
    conn.receive_data(msg(Request.SET_PROTOCOL_FEATURES, features, VERSION | FLAG_NEED_REPLY))
    m = conn.next_message()
    assert conn.ack(m, True) == b""  # REPLY_ACK is not negotiated by acking
    assert conn.protocol_features == 0
    conn.receive_data(HEADER.pack(Request.SET_LOG_BASE, VERSION, 0))
    with pytest.raises(ProtocolError, match="LOG_SHMFD, which was not negotiated"):
        conn.next_message()

    conn = BackendConnection()
    conn.set_protocol_features(features)
    assert conn.protocol_features == features
    conn.receive_data(msg(Request.SET_PROTOCOL_FEATURES, features, VERSION | FLAG_NEED_REPLY))
    assert conn.ack(conn.next_message(), True) == HEADER.pack(
        Request.SET_PROTOCOL_FEATURES, VERSION | FLAG_REPLY, 8
    ) + bytes(8)
    assert conn.protocol_features == features


@pytest.mark.parametrize(
    "data",
    [
        HEADER.pack(999, VERSION, 0),  # unknown request
        HEADER.pack(Request.SET_LOG_BASE, VERSION, 0),  # known, but LOG_SHMFD not negotiated
        HEADER.pack(Request.GET_FEATURES, 2, 0),  # bad version
        HEADER.pack(Request.GET_FEATURES, VERSION | FLAG_REPLY, 0),  # reply flag on a request
        HEADER.pack(Request.SET_FEATURES, VERSION, 4) + bytes(4),  # wrong body size
        HEADER.pack(Request.SET_VRING_NUM, VERSION, 1 << 20),  # absurd size
        HEADER.pack(Request.SET_MEM_TABLE, VERSION, 8) + bytes(8),  # zero regions
        HEADER.pack(Request.GET_CONFIG, VERSION, 12) + (250).to_bytes(4, "little") * 2 + bytes(4),
        msg(Request.SET_VRING_KICK, VringFile(0, None))[:-8] + (0x10000).to_bytes(8, "little"),
    ],
)
def test_malformed_messages_are_protocol_errors(data):
    conn = BackendConnection()
    conn.receive_data(data)
    with pytest.raises(ProtocolError):
        conn.next_message()
    with pytest.raises(ProtocolError):  # and the connection stays failed
        conn.receive_data(msg(Request.GET_FEATURES))


def test_wrong_fd_count_closes_the_fds():
    e = os.eventfd(0)
    conn = BackendConnection()
    conn.receive_data(msg(Request.GET_FEATURES), [e])  # GET_FEATURES carries no fd
    with pytest.raises(ProtocolError):
        conn.next_message()
    with pytest.raises(OSError):
        os.fstat(e)  # closed by the connection


def test_mem_table_needs_one_fd_per_region():
    conn = BackendConnection()
    region = RegionSpec(0, 4096, 0, 0)
    conn.receive_data(msg(Request.SET_MEM_TABLE, MemTable((region, region), ())))
    with pytest.raises(ProtocolError):
        conn.next_message()


def test_bytes_wanted_never_crosses_a_message():
    conn = BackendConnection()
    assert conn.bytes_wanted() == 12
    data = msg(Request.SET_VRING_NUM, VringState(0, 8))
    conn.receive_data(data[:5])
    assert conn.bytes_wanted() == 7
    conn.receive_data(data[5:12])
    assert conn.next_message() is None
    assert conn.bytes_wanted() == 8
    conn.receive_data(data[12:])
    assert conn.next_message().payload == VringState(0, 8)
    assert conn.bytes_wanted() == 12

"""Helpers of the vhost-user protocol tests: framing a message, feeding a connection."""

from __future__ import annotations

from dataplane.vhost.encoding import encode_body
from dataplane.vhost.messages import VERSION, encode_message


def msg(request, payload=None, flags=VERSION) -> bytes:
    return encode_message(request, flags, encode_body(payload))


def feed_bytewise(conn, data, fds=()) -> list:
    """Feed one byte at a time; fds ride on the first byte, as SCM_RIGHTS does."""
    out = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1], list(fds) if i == 0 else [])
        while (m := conn.next_message()) is not None:
            out.append(m)
    return out


def feed_stream(conn, stream) -> list:
    """Every (data, fds) of ``stream`` byte by byte: the messages the connection parsed."""
    got = []
    for data, fds in stream:
        got += feed_bytewise(conn, data, fds)
    return got

"""The backend side of one vhost-user connection, sans-IO (in the manner of h11).

Feed it what the socket delivered with ``receive_data(data, fds)``; take
complete, validated requests with ``next_message()``; turn results into
reply bytes with ``reply()`` and ``ack()``.  It never touches a socket.
The one piece of negotiated state it keeps, the protocol features, changes only
through ``set_protocol_features``, which the session calls for SET_PROTOCOL_FEATURES
once it checked the bits; building a reply changes nothing.

File descriptors ride on the ``sendmsg`` that carried them, but a stream
socket may hand them over with bytes of an earlier message in the same
``recvmsg``.  So the reader must never read past the message being parsed:
``bytes_wanted()`` says how much to read next (the rest of the header, then
the rest of the body), and fds received with a chunk belong to the message
that chunk is part of.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from dataplane.errors import ProtocolError
from dataplane.vhost.encoding import encode_body
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    HEADER_SIZE,
    MAX_BODY,
    REQUESTS,
    VERSION,
    VERSION_MASK,
    VHOST_MEMORY_BASELINE_NREGIONS,
    Payload,
    ProtocolFeature,
    Request,
    encode_message,
    parse_body,
)

MAX_PENDING_FDS = VHOST_MEMORY_BASELINE_NREGIONS


@dataclass(frozen=True, slots=True)
class Message:
    """One validated request.  The fds inside ``payload`` now belong to the caller."""

    request: Request
    flags: int
    payload: Payload

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


class _State(enum.Enum):
    HEADER = "header"
    BODY = "body"
    CLOSED = "closed"


# What reading moves to once it has a full header, a full body, or an error.
_NEXT_STATE = {
    (_State.HEADER, "header"): _State.BODY,
    (_State.BODY, "body"): _State.HEADER,
    (_State.HEADER, "error"): _State.CLOSED,
    (_State.BODY, "error"): _State.CLOSED,
}


class BackendConnection:
    """Parses requests from a frontend and builds the backend's replies."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._consumed = 0  # stream offset of _buf[0]
        self._pending_fds: list[tuple[int, int]] = []  # (stream offset of arrival, fd)
        self._state = _State.HEADER
        self._header: tuple[int, int, int] | None = None
        self._protocol_features = 0  # negotiated with SET_PROTOCOL_FEATURES

    @property
    def protocol_features(self) -> int:
        """The protocol features negotiated so far (0 until SET_PROTOCOL_FEATURES)."""
        return self._protocol_features

    def set_protocol_features(self, features: int) -> None:
        """SET_PROTOCOL_FEATURES accepted: from the next request on, the requests these
        features gate parse, and REPLY_ACK (if among them) acks those that ask."""
        self._protocol_features = features

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        if self._state is _State.CLOSED:
            _close_all(fds)
            raise ProtocolError("connection already failed")
        at = self._consumed + len(self._buf)
        self._pending_fds.extend((at, fd) for fd in fds)
        self._buf += data
        if len(self._pending_fds) > MAX_PENDING_FDS:
            self._fail()
            raise ProtocolError(f"more than {MAX_PENDING_FDS} fds pending for one message")

    def bytes_wanted(self) -> int:
        """How many bytes to read next without crossing into the following message."""
        if self._state is _State.BODY:
            assert self._header is not None
            return max(HEADER_SIZE + self._header[2] - len(self._buf), 0)
        return max(HEADER_SIZE - len(self._buf), 0)

    def next_message(self) -> Message | None:
        """Return the next complete request, or None until more bytes arrive.

        Raises ProtocolError for anything malformed or unknown; the
        connection is then unusable and must be dropped.
        """
        try:
            if self._state is _State.HEADER:
                if len(self._buf) < HEADER_SIZE:
                    return None
                self._header = self._parse_header(bytes(self._buf[:HEADER_SIZE]))
                self._state = _NEXT_STATE[(self._state, "header")]
            if self._state is _State.BODY:
                assert self._header is not None
                code, flags, size = self._header
                if len(self._buf) < HEADER_SIZE + size:
                    return None
                end = self._consumed + HEADER_SIZE + size
                body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + size])
                fds = [fd for at, fd in self._pending_fds if at < end]
                self._pending_fds = [(at, fd) for at, fd in self._pending_fds if at >= end]
                del self._buf[: HEADER_SIZE + size]
                self._consumed = end
                self._state = _NEXT_STATE[(self._state, "body")]
                request = Request(code)
                try:
                    payload = parse_body(request, body, fds)
                except ProtocolError:
                    _close_all(fds)
                    raise
                return Message(request, flags, payload)
            raise ProtocolError("connection already failed")
        except ProtocolError:
            self._fail()
            raise

    def _parse_header(self, raw: bytes) -> tuple[int, int, int]:
        if raw[:2] == b'{"':
            raise ProtocolError(
                "a JSON line arrived: a management client ('dataplane devices', 'dataplane "
                "stat') knocked on a device's vhost-user socket; give it the --mgmt socket"
            )
        code, flags, size = HEADER.unpack(raw)
        if flags & VERSION_MASK != VERSION:
            raise ProtocolError(f"request {code}: unsupported version {flags & VERSION_MASK}")
        if flags & FLAG_REPLY:
            raise ProtocolError(f"request {code}: has the reply flag set")
        if code not in REQUESTS:
            name = Request(code).name if code in Request._value2member_map_ else "unknown"
            raise ProtocolError(f"request {code} ({name}) is not supported")
        feature = REQUESTS[Request(code)].feature
        if feature is not None and not self.protocol_features & (1 << feature):
            raise ProtocolError(
                f"request {code} ({Request(code).name}) needs protocol feature "
                f"{feature.name}, which was not negotiated"
            )
        if size > MAX_BODY:
            raise ProtocolError(f"request {code}: body size {size} exceeds {MAX_BODY}")
        return code, flags, size

    def _fail(self) -> None:
        self._state = _State.CLOSED
        self.close()

    def close(self) -> None:
        """Close fds received for a message that never completed."""
        _close_all(fd for _, fd in self._pending_fds)
        self._pending_fds = []

    # -- output ---------------------------------------------------------------

    def reply(self, msg: Message, payload: Payload) -> bytes:
        """The reply to a request that has one of its own (GET_*)."""
        if not REQUESTS[msg.request].has_reply:
            raise ValueError(f"{msg.request.name} has no reply of its own")
        return encode_message(msg.request, VERSION | FLAG_REPLY, encode_body(payload))

    def ack(self, msg: Message, ok: bool) -> bytes:
        """The REPLY_ACK for a request without its own reply, or b"" if none is due."""
        if REQUESTS[msg.request].has_reply or not msg.need_reply:
            return b""
        if not self.protocol_features & (1 << ProtocolFeature.REPLY_ACK):
            return b""
        return encode_message(msg.request, VERSION | FLAG_REPLY, encode_body(0 if ok else 1))


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

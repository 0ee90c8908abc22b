"""The backend channel: requests the backend sends the frontend (QEMU 7.2: "slave" requests).

The frontend hands us our end of a socketpair with SET_BACKEND_REQ_FD, once
BACKEND_REQ is negotiated.  We send CONFIG_CHANGE_MSG on it after a resize (with
CONFIG negotiated, the guest then sees the new capacity).  With REPLY_ACK we set
NEED_REPLY and the frontend answers with a u64: 0 for done.

QEMU handles CONFIG_CHANGE_MSG by sending GET_CONFIG on the main connection and
waiting for our reply there before it acks here.  So the wait is a coroutine: the
event loop keeps serving the main connection meanwhile, or both sides would wait
for each other forever.

The frontend is untrusted: its fd may not be a stream socket, it may never read
or answer, or answer with anything.  A send or an answer that fails, stalls past
the timeout or is malformed closes the channel (a later request fails at once);
a refusal (a non-zero answer) leaves it open.  The main connection is not ours to
drop from here: the caller decides.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket

from dataplane.errors import DataplaneError, ProtocolError
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    U64,
    VERSION,
    VERSION_MASK,
    ProtocolFeature,
    encode_message,
)

DEFAULT_TIMEOUT = 5.0


class BackendRequest(enum.IntEnum):
    """Requests the backend sends on the backend channel (QEMU 7.2: VHOST_USER_SLAVE_*)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5


class BackendChannelError(DataplaneError):
    """A request on the backend channel failed; the message says whether it is closed."""


def config_change_possible(protocol_features: int) -> bool:
    """Whether the negotiated features let us tell the frontend the config space changed."""
    need = (1 << ProtocolFeature.BACKEND_REQ) | (1 << ProtocolFeature.CONFIG)
    return protocol_features & need == need


def encode_request(request: BackendRequest, body: bytes = b"", *, need_reply: bool) -> bytes:
    return encode_message(request, VERSION | (FLAG_NEED_REPLY if need_reply else 0), body)


def parse_ack_header(request: BackendRequest, header: bytes) -> None:
    """Check the header of the frontend's answer to ``request``; ProtocolError if it is not."""
    code, flags, size = HEADER.unpack(header)
    if code != request:
        raise ProtocolError(f"answer to {request.name} is for request {code}")
    if flags & VERSION_MASK != VERSION or not flags & FLAG_REPLY:
        raise ProtocolError(f"answer to {request.name} has flags {flags:#x}, not a reply")
    if size != U64.size:
        raise ProtocolError(f"answer to {request.name} has a {size}-byte body, not a u64")


class BackendChannel:
    """Our end of the backend channel.  Takes ownership of ``fd``."""

    def __init__(self, fd: int, *, reply_ack: bool, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            raise ProtocolError(f"backend channel fd is not a socket: {e.strerror}") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise ProtocolError("backend channel fd is not a UNIX stream socket")
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self.reply_ack = reply_ack
        self.timeout = timeout
        self._lock = asyncio.Lock()  # answers carry no tag: one request at a time

    @property
    def closed(self) -> bool:
        return self._sock is None

    async def config_changed(self) -> None:
        """CONFIG_CHANGE_MSG: the config space changed; with REPLY_ACK, until QEMU is done."""
        await self._request(BackendRequest.CONFIG_CHANGE_MSG)

    async def _request(self, request: BackendRequest, body: bytes = b"") -> None:
        async with self._lock:
            if self._sock is None:
                raise BackendChannelError(f"{request.name}: the backend channel is closed")
            try:
                status = await asyncio.wait_for(self._exchange(request, body), self.timeout)
            except (OSError, EOFError, ProtocolError) as e:  # TimeoutError is an OSError
                self.close()
                why = f"no answer within {self.timeout} s" if not str(e) else str(e)
                raise BackendChannelError(
                    f"{request.name}: {why}; the backend channel is closed"
                ) from None
            if status:
                raise BackendChannelError(f"{request.name}: the frontend answered {status}")

    async def _exchange(self, request: BackendRequest, body: bytes) -> int:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        message = encode_request(request, body, need_reply=self.reply_ack)
        await loop.sock_sendall(self._sock, message)
        if not self.reply_ack:
            return 0
        parse_ack_header(request, await self._recv_exact(HEADER.size))
        return U64.unpack(await self._recv_exact(U64.size))[0]

    async def _recv_exact(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        while len(buf) < n:
            assert self._sock is not None
            chunk = await loop.sock_recv(self._sock, n - len(buf))
            if not chunk:
                raise EOFError("the frontend closed the backend channel")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def open_channel(fd: int, protocol_features: int) -> BackendChannel:
    """SET_BACKEND_REQ_FD's fd as our channel; answers are asked for if REPLY_ACK was acked."""
    reply_ack = bool(protocol_features & (1 << ProtocolFeature.REPLY_ACK))
    return BackendChannel(fd, reply_ack=reply_ack)


async def config_changed(channel: BackendChannel | None, protocol_features: int) -> None:
    """CONFIG_CHANGE_MSG on ``channel``, or BackendChannelError saying why it cannot be sent."""
    if channel is None or not config_change_possible(protocol_features):
        raise BackendChannelError(
            "the frontend set up no backend channel (BACKEND_REQ and CONFIG, SET_BACKEND_REQ_FD)"
        )
    await channel.config_changed()

"""The backend channel over a socketpair: CONFIG_CHANGE_MSG, with and without REPLY_ACK,
against a frontend that answers, refuses, stalls, garbles or hangs up."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import uvloop

from dataplane.errors import ProtocolError
from dataplane.serve.backend_channel import (
    BackendChannel,
    BackendChannelError,
    BackendRequest,
    config_change_possible,
)
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    U64,
    VERSION,
    ProtocolFeature,
)

CONFIG_CHANGE = BackendRequest.CONFIG_CHANGE_MSG


def ack(status=0, *, request=CONFIG_CHANGE, flags=VERSION | FLAG_REPLY, size=8) -> bytes:
    return HEADER.pack(request, flags, size) + U64.pack(status)


class Frontend:
    """QEMU's end: reads each request, and answers with what the test gives it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.requests: list[tuple[int, int, int]] = []

    async def serve(
        self, answers: list[bytes], *, bytewise: bool = False, hang_up: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        for answer in answers:
            header = await loop.sock_recv(self.sock, HEADER.size)
            self.requests.append(HEADER.unpack(header))
            await asyncio.sleep(0)  # the backend's loop keeps running while QEMU works
            chunks = [answer[i : i + 1] for i in range(len(answer))] if bytewise else [answer]
            for chunk in chunks:
                await loop.sock_sendall(self.sock, chunk)
        if hang_up:
            self.sock.close()


def channel_pair(*, reply_ack: bool, timeout: float = 5.0):
    ours, theirs = socket.socketpair()
    return BackendChannel(ours.detach(), reply_ack=reply_ack, timeout=timeout), Frontend(theirs)


def run(coro, loop_factory=None):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


def test_config_change_needs_backend_req_and_config():
    both = (1 << ProtocolFeature.BACKEND_REQ) | (1 << ProtocolFeature.CONFIG)
    assert config_change_possible(both | (1 << ProtocolFeature.REPLY_ACK))
    assert not config_change_possible(1 << ProtocolFeature.BACKEND_REQ)
    assert not config_change_possible(1 << ProtocolFeature.CONFIG)


def test_without_reply_ack_the_message_is_sent_and_nothing_awaited():
    chan, fe = channel_pair(reply_ack=False)

    async def go():
        await chan.config_changed()
        await fe.serve([b""])

    run(go())
    assert fe.requests == [(CONFIG_CHANGE, VERSION, 0)]
    assert not chan.closed
    chan.close()


@pytest.mark.parametrize("loop_factory", [None, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("bytewise", [False, True])
def test_with_reply_ack_it_waits_for_the_frontends_answer(bytewise, loop_factory):
    chan, fe = channel_pair(reply_ack=True)
    ticks = 0

    async def other_work():  # the main connection, served while the answer is awaited
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def go():
        other = asyncio.create_task(other_work())
        server = asyncio.create_task(fe.serve([ack(), ack()], bytewise=bytewise))
        await chan.config_changed()
        await chan.config_changed()
        await server
        other.cancel()

    run(go(), loop_factory)
    assert fe.requests == [(CONFIG_CHANGE, VERSION | FLAG_NEED_REPLY, 0)] * 2
    assert ticks > 0 and not chan.closed
    chan.close()


def test_a_refusal_is_an_error_but_the_channel_stays():
    chan, fe = channel_pair(reply_ack=True)

    async def go():
        server = asyncio.create_task(fe.serve([ack(1), ack(0)]))
        with pytest.raises(BackendChannelError, match="CONFIG_CHANGE_MSG: the frontend answered 1"):
            await chan.config_changed()
        await chan.config_changed()
        await server

    run(go())
    assert not chan.closed
    chan.close()


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (ack(request=BackendRequest.VRING_CALL), "is for request 4"),
        (ack(flags=VERSION), "not a reply"),
        (ack(flags=2 | FLAG_REPLY), "not a reply"),
        (ack(size=4), "4-byte body"),
        (
            HEADER.pack(CONFIG_CHANGE, VERSION | FLAG_REPLY, 8) + b"\0\0",
            "closed the backend channel",
        ),
    ],
    ids=["other-request", "no-reply-flag", "bad-version", "short-body", "hang-up"],
)
def test_a_malformed_answer_closes_the_channel(answer, why):
    chan, fe = channel_pair(reply_ack=True)

    async def go():
        server = asyncio.create_task(fe.serve([answer], hang_up=why.startswith("closed")))
        with pytest.raises(BackendChannelError, match=why + ".*backend channel is closed"):
            await chan.config_changed()
        await server
        fe.sock.close()
        with pytest.raises(BackendChannelError, match="the backend channel is closed"):
            await chan.config_changed()

    run(go())
    assert chan.closed


def test_a_frontend_that_never_answers_costs_the_channel_not_the_loop():
    chan, fe = channel_pair(reply_ack=True, timeout=0.2)
    with pytest.raises(BackendChannelError, match=r"no answer within 0.2 s"):
        run(chan.config_changed())
    assert chan.closed
    fe.sock.close()


def test_a_frontend_that_never_reads_stalls_the_send_until_the_timeout():
    chan, fe = channel_pair(reply_ack=False, timeout=0.2)
    fe.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)

    async def flood():
        while True:
            await chan.config_changed()

    with pytest.raises(BackendChannelError, match="no answer within"):
        run(flood())
    assert chan.closed
    fe.sock.close()


def test_an_fd_that_is_no_unix_stream_socket_is_refused_and_closed():
    r, w = os.pipe()
    with pytest.raises(ProtocolError, match="not a socket"):
        BackendChannel(r, reply_ack=True)
    os.close(w)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = a.detach()
    with pytest.raises(ProtocolError, match="not a UNIX stream socket"):
        BackendChannel(fd, reply_ack=True)
    b.close()
    for closed in (r, fd):
        with pytest.raises(OSError):
            os.fstat(closed)

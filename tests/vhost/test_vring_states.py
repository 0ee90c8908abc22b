"""The vring lifecycle table (dataplane/vhost/vring_states.py), driven event by event.

The table is checked against a model of what a ring is made of (a kick fd,
the enable bit, running or not) as the handlers kept it before the table:
every legal edge must land where the model lands and ask for the stop or
start that the model's running bit asks for; every edge the table leaves out
must be refused with a protocol error naming the state and the event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from guest_support import start_dataplane

from dataplane.errors import ProtocolError
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.vhost.messages import Request, VringState
from dataplane.vhost.vring_states import TRANSITIONS, Action, RingEvent, RingState, transition

S, E, A = RingState, RingEvent, Action


@dataclass(frozen=True)
class Flags:
    kick: bool
    enabled: bool
    running: bool


MEANING = {
    S.DISABLED: Flags(kick=False, enabled=False, running=False),
    S.ENABLED: Flags(kick=False, enabled=True, running=False),
    S.KICKED: Flags(kick=True, enabled=False, running=False),
    S.STARTED: Flags(kick=True, enabled=True, running=True),
    S.STOPPED: Flags(kick=True, enabled=True, running=False),
}
# Not allowed: a new size or base for a ring whose thread runs on the old one.
REFUSED = {(S.STARTED, E.SET_VRING_NUM), (S.STARTED, E.SET_VRING_BASE)}


def model(f: Flags, event: RingEvent) -> tuple[Flags, bool]:
    """The flags after ``event``, and whether the kick fd was replaced (a restart if running)."""
    if event in (E.SET_VRING_KICK, E.SET_VRING_KICK_ENABLING):
        enabled = f.enabled or event is E.SET_VRING_KICK_ENABLING
        return Flags(kick=True, enabled=enabled, running=enabled), True
    if event is E.ENABLE:
        return Flags(f.kick, True, f.kick), False
    if event is E.DISABLE:
        return Flags(f.kick, False, False), False
    if event is E.GET_VRING_BASE:
        return Flags(False, False, False), False
    if event is E.RESET_OWNER:
        return replace(f, running=False), False
    if event is E.DISCONNECT:
        return Flags(False, False, False), False
    return f, False  # layout and notifiers: kept for the next start


def expected_action(before: Flags, after: Flags, new_kick: bool) -> Action:
    if before.running and after.running:
        return A.RESTART if new_kick else A.NONE
    if before.running:
        return A.STOP
    return A.START if after.running else A.NONE


@pytest.mark.parametrize("state", list(RingState), ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(RingEvent), ids=lambda e: e.name)
def test_every_edge_follows_the_model(state, event):
    if (state, event) in REFUSED:
        with pytest.raises(ProtocolError) as e:
            transition(state, event, 3)
        assert str(e.value) == f"vring 3: {event.value} is not allowed in state {state.value}"
        assert event not in TRANSITIONS[state]
        return
    new, action = transition(state, event, 3)
    after, new_kick = model(MEANING[state], event)
    assert MEANING[new] == after
    assert action is expected_action(MEANING[state], after, new_kick)


def test_a_ring_driven_as_qemu_drives_it():
    """QEMU with protocol features: layout, kick, call, enable; stop; start again; drop."""
    state = S.DISABLED
    steps = [
        (E.SET_VRING_NUM, S.DISABLED, A.NONE),
        (E.SET_VRING_BASE, S.DISABLED, A.NONE),
        (E.SET_VRING_ADDR, S.DISABLED, A.NONE),
        (E.SET_VRING_KICK, S.KICKED, A.NONE),
        (E.SET_VRING_CALL, S.KICKED, A.NONE),
        (E.ENABLE, S.STARTED, A.START),
        (E.SET_VRING_CALL, S.STARTED, A.NONE),
        (E.DISABLE, S.KICKED, A.STOP),
        (E.GET_VRING_BASE, S.DISABLED, A.NONE),
        (E.SET_VRING_BASE, S.DISABLED, A.NONE),
        (E.ENABLE, S.ENABLED, A.NONE),
        (E.SET_VRING_KICK, S.STARTED, A.START),
        (E.RESET_OWNER, S.STOPPED, A.STOP),
        (E.ENABLE, S.STARTED, A.START),
        (E.DISCONNECT, S.DISABLED, A.STOP),
    ]
    for event, want_state, want_action in steps:
        state, action = transition(state, event, 0)
        assert (state, action) == (want_state, want_action), event


@pytest.fixture
def backend(tmp_path):
    sock_dir = short_socket_dir()
    img = tmp_path / "img"
    img.write_bytes(bytes(1 << 20))
    b = start_dataplane(sock_dir / "s.sock", img, log_path=tmp_path / "log")
    yield b, sock_dir / "s.sock"
    assert b.stop() == 0, b.log_text()


def test_a_new_base_for_a_running_ring_drops_the_connection(backend):
    b, sock = backend
    with BlkDriver(sock) as d:
        assert d.read(0, 512).status == 0
        d.fe.send(Request.SET_VRING_BASE, VringState(0, 5))
        assert d.fe.sock.recv(16) == b""
    with BlkDriver(sock) as d:  # the next connection is served
        assert d.read(0, 512).status == 0
    assert "vring 0: SET_VRING_BASE is not allowed in state started" in b.log_text()

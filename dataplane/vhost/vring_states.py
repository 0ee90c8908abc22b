"""The lifecycle of one vring on the backend side, as a transition table (in the manner of h11).

A ring runs while it has a kick fd and is enabled.  With
VHOST_USER_F_PROTOCOL_FEATURES negotiated a ring starts disabled until
SET_VRING_ENABLE; without it, SET_VRING_KICK enables it (the spec's "rings
are enabled at once").  GET_VRING_BASE stops the ring and takes its kick fd
(the frontend sends a new one before starting it again).  RESET_OWNER stops
every ring but keeps its fds and its enable bit, as libvhost-user does: the
next kick or enable starts it again.  A dropped connection forgets it all.

States:

- DISABLED: no kick fd, not enabled (a new ring; after GET_VRING_BASE);
- ENABLED: enabled, waiting for a kick fd;
- KICKED: has a kick fd, waiting for SET_VRING_ENABLE;
- STARTED: running on its dataplane thread;
- STOPPED: kick fd and enabled, stopped by RESET_OWNER.

``transition`` gives the next state and what the handler must do to the
ring's thread (start it, stop it, or restart it on a new kick fd).  An event
that the table does not list for a state is a protocol error naming both:
SET_VRING_NUM and SET_VRING_BASE on a running ring, whose thread would never
see the new value.  Sans-IO: nothing here touches a ring, a socket or an fd.
"""

from __future__ import annotations

import enum

from dataplane.errors import ProtocolError


class RingState(enum.Enum):
    DISABLED = "disabled"
    ENABLED = "enabled"
    KICKED = "kicked"
    STARTED = "started"
    STOPPED = "stopped"


class RingEvent(enum.Enum):
    SET_VRING_NUM = "SET_VRING_NUM"
    SET_VRING_ADDR = "SET_VRING_ADDR"
    SET_VRING_BASE = "SET_VRING_BASE"
    SET_VRING_KICK = "SET_VRING_KICK"
    # SET_VRING_KICK without VHOST_USER_F_PROTOCOL_FEATURES: the kick enables the ring.
    SET_VRING_KICK_ENABLING = "SET_VRING_KICK (no protocol features: enables)"
    SET_VRING_CALL = "SET_VRING_CALL"
    SET_VRING_ERR = "SET_VRING_ERR"
    ENABLE = "SET_VRING_ENABLE 1"
    DISABLE = "SET_VRING_ENABLE 0"
    GET_VRING_BASE = "GET_VRING_BASE"
    RESET_OWNER = "RESET_OWNER"
    DISCONNECT = "disconnect"


class Action(enum.Enum):
    NONE = "none"
    START = "start"
    STOP = "stop"
    RESTART = "restart"  # stop, then start again (a new kick fd on a running ring)


S, E, A = RingState, RingEvent, Action

# What every state accepts without moving: the ring's layout and notifiers, kept for the
# next start.  STARTED keeps only ADDR (QEMU re-sends it to switch dirty logging) and the
# notifiers, which the running thread takes over at once.
_LAYOUT = (E.SET_VRING_NUM, E.SET_VRING_ADDR, E.SET_VRING_BASE)
_NOTIFIERS = (E.SET_VRING_CALL, E.SET_VRING_ERR)


def _stay(state: RingState, *events: RingEvent) -> dict[RingEvent, tuple[RingState, Action]]:
    return {e: (state, A.NONE) for e in events}


TRANSITIONS: dict[RingState, dict[RingEvent, tuple[RingState, Action]]] = {
    S.DISABLED: {
        **_stay(S.DISABLED, *_LAYOUT, *_NOTIFIERS, E.DISABLE, E.GET_VRING_BASE),
        **_stay(S.DISABLED, E.RESET_OWNER, E.DISCONNECT),
        E.SET_VRING_KICK: (S.KICKED, A.NONE),
        E.SET_VRING_KICK_ENABLING: (S.STARTED, A.START),
        E.ENABLE: (S.ENABLED, A.NONE),
    },
    S.ENABLED: {
        **_stay(S.ENABLED, *_LAYOUT, *_NOTIFIERS, E.ENABLE, E.RESET_OWNER),
        E.SET_VRING_KICK: (S.STARTED, A.START),
        E.SET_VRING_KICK_ENABLING: (S.STARTED, A.START),
        E.DISABLE: (S.DISABLED, A.NONE),
        E.GET_VRING_BASE: (S.DISABLED, A.NONE),
        E.DISCONNECT: (S.DISABLED, A.NONE),
    },
    S.KICKED: {
        **_stay(S.KICKED, *_LAYOUT, *_NOTIFIERS, E.SET_VRING_KICK, E.DISABLE, E.RESET_OWNER),
        E.SET_VRING_KICK_ENABLING: (S.STARTED, A.START),
        E.ENABLE: (S.STARTED, A.START),
        E.GET_VRING_BASE: (S.DISABLED, A.NONE),
        E.DISCONNECT: (S.DISABLED, A.NONE),
    },
    S.STARTED: {
        **_stay(S.STARTED, E.SET_VRING_ADDR, *_NOTIFIERS, E.ENABLE),
        E.SET_VRING_KICK: (S.STARTED, A.RESTART),
        E.SET_VRING_KICK_ENABLING: (S.STARTED, A.RESTART),
        E.DISABLE: (S.KICKED, A.STOP),
        E.GET_VRING_BASE: (S.DISABLED, A.STOP),
        E.RESET_OWNER: (S.STOPPED, A.STOP),
        E.DISCONNECT: (S.DISABLED, A.STOP),
    },
    S.STOPPED: {
        **_stay(S.STOPPED, *_LAYOUT, *_NOTIFIERS, E.RESET_OWNER),
        E.SET_VRING_KICK: (S.STARTED, A.START),
        E.SET_VRING_KICK_ENABLING: (S.STARTED, A.START),
        E.ENABLE: (S.STARTED, A.START),
        E.DISABLE: (S.KICKED, A.NONE),
        E.GET_VRING_BASE: (S.DISABLED, A.NONE),
        E.DISCONNECT: (S.DISABLED, A.NONE),
    },
}


def transition(state: RingState, event: RingEvent, index: int) -> tuple[RingState, Action]:
    """The state after ``event`` and what to do to the ring; ProtocolError if not allowed."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise ProtocolError(
            f"vring {index}: {event.value} is not allowed in state {state.value}"
        ) from None


__all__ = ["TRANSITIONS", "Action", "RingEvent", "RingState", "transition"]

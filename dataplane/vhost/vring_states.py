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

# The events that move a ring, state by state: "next-state[ action]".
_COLUMNS = (E.SET_VRING_KICK, E.SET_VRING_KICK_ENABLING, E.ENABLE, E.DISABLE, E.RESET_OWNER)
_MOVES = {
    #            SET_VRING_KICK    ..._ENABLING      ENABLE           DISABLE        RESET_OWNER
    S.DISABLED: ("kicked",         "started start",  "enabled",       "disabled",    "disabled"),
    S.ENABLED:  ("started start",  "started start",  "enabled",       "disabled",    "enabled"),
    S.KICKED:   ("kicked",         "started start",  "started start", "kicked",      "kicked"),
    S.STARTED:  ("started restart", "started restart", "started", "kicked stop", "stopped stop"),
    S.STOPPED:  ("started start",  "started start",  "started start", "kicked",      "stopped"),
}  # fmt: skip
# The rest by rule.  The layout (SET_VRING_NUM/ADDR/BASE) and the notifiers (CALL, ERR) are
# kept for the next start, in every state but one: a running ring takes a new ADDR (QEMU
# re-sends it to switch dirty logging) and new notifiers, never a new NUM or BASE.
# GET_VRING_BASE and a dropped connection leave every ring disabled, stopping a running one.
_KEPT = (E.SET_VRING_NUM, E.SET_VRING_ADDR, E.SET_VRING_BASE, E.SET_VRING_CALL, E.SET_VRING_ERR)
_REFUSED = {S.STARTED: (E.SET_VRING_NUM, E.SET_VRING_BASE)}


def _table() -> dict[RingState, dict[RingEvent, tuple[RingState, Action]]]:
    table: dict[RingState, dict[RingEvent, tuple[RingState, Action]]] = {}
    for state, moves in _MOVES.items():
        row = {e: (state, A.NONE) for e in _KEPT if e not in _REFUSED.get(state, ())}
        for event in (E.GET_VRING_BASE, E.DISCONNECT):
            row[event] = (S.DISABLED, A.STOP if state is S.STARTED else A.NONE)
        for event, move in zip(_COLUMNS, moves, strict=True):
            new, _, action = move.partition(" ")
            row[event] = (RingState(new), Action(action or "none"))
        table[state] = row
    return table


TRANSITIONS = _table()


def transition(state: RingState, event: RingEvent, index: int) -> tuple[RingState, Action]:
    """The state after ``event`` and what to do to the ring; ProtocolError if not allowed."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise ProtocolError(
            f"vring {index}: {event.value} is not allowed in state {state.value}"
        ) from None


__all__ = ["TRANSITIONS", "Action", "RingEvent", "RingState", "transition"]

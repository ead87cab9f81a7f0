"""
The one transition table of the SMTP server session.

A state changes only when a reply is sent: the command alone decides
nothing, because a policy may refuse it. :data:`TRANSITIONS` maps the state,
the command that was answered and whether the reply was positive to the next
state. A reply that is not in the table leaves the state as it was.
"""

from __future__ import annotations

import enum

from mailframe.core import _events as ev

__all__ = ["State", "TRANSITIONS", "ALLOWED"]


class State(enum.Enum):
    #: Connected, greeting not yet sent.
    CONNECTED = "connected"
    #: Greeted with 554: only QUIT is served (RFC 5321 §3.1).
    NO_SERVICE = "no-service"
    #: Greeting sent; waiting for HELO or EHLO.
    GREETED = "greeted"
    #: HELO or EHLO accepted; no transaction.
    READY = "ready"
    #: MAIL accepted.
    MAIL = "mail"
    #: At least one RCPT accepted.
    RCPT = "rcpt"
    #: 354 sent; message data is arriving.
    DATA = "data"
    #: The final dot arrived; its reply is pending.
    END_OF_DATA = "end-of-data"
    #: 221 or 421 sent; nothing more is read.
    CLOSED = "closed"


_ANY_OPEN = (State.GREETED, State.READY, State.MAIL, State.RCPT)

#: (state, command type, positive reply) -> next state.
TRANSITIONS: dict[tuple[State, type[ev.Command], bool], State] = {}
for _state in _ANY_OPEN:
    TRANSITIONS[_state, ev.Helo, True] = State.READY
    TRANSITIONS[_state, ev.Ehlo, True] = State.READY
for _state in (State.READY, State.MAIL, State.RCPT):
    TRANSITIONS[_state, ev.Rset, True] = State.READY
TRANSITIONS[State.READY, ev.Mail, True] = State.MAIL
TRANSITIONS[State.MAIL, ev.Rcpt, True] = State.RCPT
TRANSITIONS[State.RCPT, ev.Rcpt, True] = State.RCPT
TRANSITIONS[State.RCPT, ev.Data, True] = State.DATA
TRANSITIONS[State.END_OF_DATA, ev.EndOfMessage, True] = State.READY
TRANSITIONS[State.END_OF_DATA, ev.EndOfMessage, False] = State.READY

#: The commands each state serves; any other gets 503 (bad sequence).
ALLOWED: dict[State, frozenset[type[ev.Command]]] = {
    State.NO_SERVICE: frozenset({ev.Quit}),
    State.GREETED: frozenset(
        {ev.Helo, ev.Ehlo, ev.Rset, ev.Noop, ev.Quit, ev.Vrfy, ev.Expn, ev.Help}
    ),
}
_BASIC = ALLOWED[State.GREETED]
ALLOWED[State.READY] = _BASIC | {ev.Mail}
ALLOWED[State.MAIL] = _BASIC | {ev.Rcpt}
ALLOWED[State.RCPT] = _BASIC | {ev.Rcpt, ev.Data}

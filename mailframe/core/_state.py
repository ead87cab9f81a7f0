"""
The one transition table of the SMTP server session.

A state changes when a reply is sent: the command alone decides nothing,
because a policy may refuse it. :data:`TRANSITIONS` maps the state, the
command that was answered and the :class:`Outcome` of the reply to the next
state. A reply that is not in the table leaves the state as it was.

The client's octets move the state only where a reply waits on them: the
final dot of DATA (``DATA`` to ``END_OF_DATA``), and a BDAT line that
starts a chunk (:data:`CHUNK_STATES`).
"""

from __future__ import annotations

import enum

from mailframe.core import _events as ev
from mailframe.reply import Reply

__all__ = ["ALLOWED", "CHUNK_STATES", "Outcome", "State", "TRANSITIONS", "outcome"]


class State(enum.Enum):
    #: Connected, greeting not yet sent.
    CONNECTED = "connected"
    #: Greeted with 554: only QUIT is served (RFC 5321 §3.1).
    NO_SERVICE = "no-service"
    #: Greeting sent, or TLS just started (RFC 3207 §4.2); waiting for
    #: HELO or EHLO.
    GREETED = "greeted"
    #: HELO or EHLO accepted; no transaction.
    READY = "ready"
    #: 334 sent to AUTH: the next line is a SASL response (RFC 4954 §4).
    AUTH = "auth"
    #: MAIL accepted.
    MAIL = "mail"
    #: At least one RCPT accepted.
    RCPT = "rcpt"
    #: 354 sent; message data is arriving.
    DATA = "data"
    #: The final dot arrived; its reply is pending.
    END_OF_DATA = "end-of-data"
    #: The octets of a BDAT chunk are arriving, then its reply is pending.
    CHUNK = "chunk"
    #: As :attr:`CHUNK`, for the chunk marked LAST.
    LAST_CHUNK = "last-chunk"
    #: A BDAT chunk was accepted; the message goes on with BDAT
    #: (RFC 3030 §2).
    BDAT = "bdat"
    #: 221 or 421 sent; nothing more is read.
    CLOSED = "closed"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


class Outcome(enum.Enum):
    """What a reply did to the command it answered."""

    #: 2xx, or 3xx to a command that asks for nothing more.
    ACCEPTED = "accepted"
    #: 3xx that asks for more input: 354 to DATA (RFC 5321 §4.1.1.4), 334
    #: to AUTH and its responses (RFC 4954 §4).
    CONTINUE = "continue"
    #: 4xx or 5xx.
    REFUSED = "refused"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


_CONTINUED = frozenset({ev.Data, ev.Auth, ev.AuthResponse})


def outcome(command: ev.Command, reply: Reply) -> Outcome:
    """The :class:`Outcome` of *reply* to *command*."""
    if reply.code >= 400:
        return Outcome.REFUSED
    if reply.code >= 300 and type(command) in _CONTINUED:
        return Outcome.CONTINUE
    return Outcome.ACCEPTED


_ACCEPTED = Outcome.ACCEPTED
_CONTINUE = Outcome.CONTINUE
_REFUSED = Outcome.REFUSED
_ANY = tuple(Outcome)
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.BDAT)

#: (state, command type, outcome) -> next state.
TRANSITIONS: dict[tuple[State, type[ev.Command], Outcome], State] = {}
for _state in (State.GREETED, State.READY, *_IN_TRANSACTION):
    TRANSITIONS[_state, ev.Helo, _ACCEPTED] = State.READY
    TRANSITIONS[_state, ev.Ehlo, _ACCEPTED] = State.READY
for _state in (State.READY, *_IN_TRANSACTION):
    TRANSITIONS[_state, ev.Rset, _ACCEPTED] = State.READY
TRANSITIONS[State.READY, ev.Mail, _ACCEPTED] = State.MAIL
TRANSITIONS[State.MAIL, ev.Rcpt, _ACCEPTED] = State.RCPT
TRANSITIONS[State.RCPT, ev.Rcpt, _ACCEPTED] = State.RCPT
TRANSITIONS[State.RCPT, ev.Data, _CONTINUE] = State.DATA
TRANSITIONS[State.END_OF_DATA, ev.EndOfMessage, _ACCEPTED] = State.READY
TRANSITIONS[State.END_OF_DATA, ev.EndOfMessage, _REFUSED] = State.READY
# RFC 3207 §4.2: after the handshake the session starts over, and the
# client must say EHLO again. Only 220 is accepted (the core checks).
TRANSITIONS[State.GREETED, ev.StartTls, _ACCEPTED] = State.GREETED
TRANSITIONS[State.READY, ev.StartTls, _ACCEPTED] = State.GREETED
# RFC 4954 §4: 334 asks for a response line; 235 or a refusal ends the
# exchange, and so do "*" and a response that is not base64 or too long.
TRANSITIONS[State.READY, ev.Auth, _CONTINUE] = State.AUTH
TRANSITIONS[State.AUTH, ev.AuthResponse, _CONTINUE] = State.AUTH
TRANSITIONS[State.AUTH, ev.AuthResponse, _ACCEPTED] = State.READY
TRANSITIONS[State.AUTH, ev.AuthResponse, _REFUSED] = State.READY
for _outcome in _ANY:
    TRANSITIONS[State.AUTH, ev.AuthCancel, _outcome] = State.READY
    TRANSITIONS[State.AUTH, ev.BadCommand, _outcome] = State.READY
# RFC 3030 §2: a chunk taken leaves the message open for more; a refused
# chunk, and the LAST one however answered, end the transaction.
TRANSITIONS[State.CHUNK, ev.Bdat, _ACCEPTED] = State.BDAT
TRANSITIONS[State.CHUNK, ev.Bdat, _REFUSED] = State.READY
TRANSITIONS[State.LAST_CHUNK, ev.Bdat, _ACCEPTED] = State.READY
TRANSITIONS[State.LAST_CHUNK, ev.Bdat, _REFUSED] = State.READY

#: The state a BDAT line moves to while its chunk is read, by its LAST flag.
CHUNK_STATES: dict[bool, State] = {False: State.CHUNK, True: State.LAST_CHUNK}

#: The commands each state serves; any other gets 503 (bad sequence).
ALLOWED: dict[State, frozenset[type[ev.Command]]] = {
    State.NO_SERVICE: frozenset({ev.Quit}),
}
_BASIC = frozenset({ev.Helo, ev.Ehlo, ev.Rset, ev.Noop, ev.Quit, ev.Vrfy, ev.Expn, ev.Help})
# RFC 3207 §4: STARTTLS and RFC 4954 §4: AUTH, never in a transaction.
ALLOWED[State.GREETED] = _BASIC | {ev.StartTls}
ALLOWED[State.READY] = _BASIC | {ev.Mail, ev.StartTls, ev.Auth}
ALLOWED[State.MAIL] = _BASIC | {ev.Rcpt}
# RFC 3030 §2: BDAT once a recipient was accepted; DATA and BDAT are
# never mixed in one transaction.
ALLOWED[State.RCPT] = _BASIC | {ev.Rcpt, ev.Data, ev.Bdat}
ALLOWED[State.BDAT] = _BASIC | {ev.Bdat}

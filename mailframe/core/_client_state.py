"""
The one transition table of the SMTP client session.

The client keeps two states. The *confirmed* state is the server's, as far
as replies have told it: :data:`TRANSITIONS` maps the state, the
:class:`Verb` of the command that was answered and the
:class:`~mailframe.core._state.Outcome` of the reply to the next state, and
a reply that is not in the table leaves the state as it was. The
*projected* state is the confirmed state with the commands still
unanswered applied as if each succeeded (:data:`EXPECTED`); under
PIPELINING (RFC 2920) it decides which command may be sent next,
through :data:`ALLOWED`, before the replies are known.

A reply code that a command cannot get (:func:`outcome` returns ``None``),
and a continuation that the table does not expect, are protocol
violations: the client can no longer tell what the server is waiting for.
"""

from __future__ import annotations

import enum

from mailframe.core import _client_events as ce
from mailframe.core._state import Outcome

__all__ = [
    "ALLOWED",
    "CAN_FOLLOW",
    "EXPECTED",
    "TRANSITIONS",
    "ClientState",
    "Verb",
    "outcome",
    "verb_of",
]


class ClientState(enum.Enum):
    """
    The states of a client session. :attr:`ClientConnection.state
    <mailframe.core.ClientConnection.state>` is the state that the server's
    replies have confirmed.
    """

    #: Connected, waiting for the greeting (RFC 5321 §3.1): nothing may be
    #: sent yet.
    CONNECTED = "connected"
    #: The greeting was a refusal (``554``, RFC 5321 §3.1): only QUIT.
    NO_SERVICE = "no-service"
    #: Greeted, or TLS just started (RFC 3207 §4.2): EHLO or HELO next.
    GREETED = "greeted"
    #: EHLO or HELO accepted; no transaction.
    READY = "ready"
    #: ``334`` to AUTH: a SASL response is awaited (RFC 4954 §4).
    AUTH = "auth"
    #: MAIL accepted.
    MAIL = "mail"
    #: At least one RCPT accepted.
    RCPT = "rcpt"
    #: ``354`` to DATA: message data is being written.
    DATA = "data"
    #: A BDAT chunk was accepted; the message goes on with BDAT
    #: (RFC 3030 §2).
    BDAT = "bdat"
    #: ``221`` or ``421`` received, a protocol violation, or the server
    #: closed: nothing more is sent or read.
    CLOSED = "closed"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


class Verb(enum.Enum):
    """What a command does, as far as the state table is concerned."""

    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_MESSAGE = "."
    BDAT = "BDAT"
    BDAT_LAST = "BDAT LAST"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH response"
    AUTH_CANCEL = "AUTH cancel"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


_VERBS: dict[type[ce.ClientCommand], Verb] = {
    ce.ClientEhlo: Verb.EHLO,
    ce.ClientHelo: Verb.HELO,
    ce.ClientMail: Verb.MAIL,
    ce.ClientRcpt: Verb.RCPT,
    ce.ClientData: Verb.DATA,
    ce.ClientEndOfMessage: Verb.END_OF_MESSAGE,
    ce.ClientRset: Verb.RSET,
    ce.ClientNoop: Verb.NOOP,
    ce.ClientQuit: Verb.QUIT,
    ce.ClientStartTls: Verb.STARTTLS,
    ce.ClientAuth: Verb.AUTH,
    ce.ClientAuthResponse: Verb.AUTH_RESPONSE,
    ce.ClientAuthCancel: Verb.AUTH_CANCEL,
}


def verb_of(command: ce.ClientCommand) -> Verb:
    """The :class:`Verb` of *command*."""
    if isinstance(command, ce.ClientBdat):
        return Verb.BDAT_LAST if command.last else Verb.BDAT
    verb = _VERBS.get(type(command))
    if verb is None:
        raise TypeError(f"not a client command: {command!r}")
    return verb


#: The positive codes that each of these verbs may get, and what they mean:
#: 354 to DATA (RFC 5321 §4.1.1.4), 220 to STARTTLS (RFC 3207 §4), 334 and
#: 235 to AUTH and its responses, and none to a cancelled AUTH (RFC 4954
#: §4). Any other verb takes any 2xx, and no 3xx.
_POSITIVE: dict[Verb, dict[int, Outcome]] = {
    Verb.DATA: {354: Outcome.CONTINUE},
    Verb.STARTTLS: {220: Outcome.ACCEPTED},
    Verb.AUTH: {334: Outcome.CONTINUE, 235: Outcome.ACCEPTED},
    Verb.AUTH_RESPONSE: {334: Outcome.CONTINUE, 235: Outcome.ACCEPTED},
    Verb.AUTH_CANCEL: {},
}


def outcome(verb: Verb, code: int) -> Outcome | None:
    """
    What a reply with *code* did to a command of *verb*, or ``None`` when
    the command cannot get that code.
    """
    if code >= 400:
        return Outcome.REFUSED
    positive = _POSITIVE.get(verb)
    if positive is not None:
        return positive.get(code)
    return Outcome.ACCEPTED if code < 300 else None


#: The outcome the projected state assumes for each verb.
EXPECTED: dict[Verb, Outcome] = {verb: Outcome.ACCEPTED for verb in Verb}
EXPECTED[Verb.DATA] = Outcome.CONTINUE
EXPECTED[Verb.AUTH] = Outcome.CONTINUE

_ACCEPTED = Outcome.ACCEPTED
_CONTINUE = Outcome.CONTINUE
_REFUSED = Outcome.REFUSED
_ANY = tuple(Outcome)
_IN_TRANSACTION = (ClientState.MAIL, ClientState.RCPT, ClientState.BDAT)
_OPEN = (ClientState.READY, *_IN_TRANSACTION)

#: (confirmed state, verb, outcome) -> next state; ``221`` to QUIT and any
#: ``421`` close the session whatever the state (RFC 5321 §3.8, §4.1.1.10).
TRANSITIONS: dict[tuple[ClientState, Verb, Outcome], ClientState] = {}
for _state in (ClientState.GREETED, *_OPEN):
    # RFC 5321 §4.1.4: EHLO or HELO also resets a transaction.
    TRANSITIONS[_state, Verb.EHLO, _ACCEPTED] = ClientState.READY
    TRANSITIONS[_state, Verb.HELO, _ACCEPTED] = ClientState.READY
for _state in _OPEN:
    TRANSITIONS[_state, Verb.RSET, _ACCEPTED] = ClientState.READY
TRANSITIONS[ClientState.READY, Verb.MAIL, _ACCEPTED] = ClientState.MAIL
TRANSITIONS[ClientState.MAIL, Verb.RCPT, _ACCEPTED] = ClientState.RCPT
TRANSITIONS[ClientState.RCPT, Verb.RCPT, _ACCEPTED] = ClientState.RCPT
TRANSITIONS[ClientState.RCPT, Verb.DATA, _CONTINUE] = ClientState.DATA
# RFC 2920 §3.1: a server may answer DATA with 354 although it refused
# every recipient; the client must then send the message (or a lone dot).
TRANSITIONS[ClientState.MAIL, Verb.DATA, _CONTINUE] = ClientState.DATA
for _outcome in _ANY:
    # The final dot ends the transaction however it is answered.
    TRANSITIONS[ClientState.DATA, Verb.END_OF_MESSAGE, _outcome] = ClientState.READY
    # RFC 3030 §2: so does the LAST chunk.
    TRANSITIONS[ClientState.RCPT, Verb.BDAT_LAST, _outcome] = ClientState.READY
    TRANSITIONS[ClientState.BDAT, Verb.BDAT_LAST, _outcome] = ClientState.READY
    # RFC 4954 §4: "*" ends the exchange.
    TRANSITIONS[ClientState.AUTH, Verb.AUTH_CANCEL, _outcome] = ClientState.READY
# RFC 3030 §2: a chunk taken leaves the message open; a refused one ends
# the transaction.
for _state in (ClientState.RCPT, ClientState.BDAT):
    TRANSITIONS[_state, Verb.BDAT, _ACCEPTED] = ClientState.BDAT
    TRANSITIONS[_state, Verb.BDAT, _REFUSED] = ClientState.READY
# RFC 3207 §4.2: after the handshake the session starts over from EHLO.
TRANSITIONS[ClientState.READY, Verb.STARTTLS, _ACCEPTED] = ClientState.GREETED
# RFC 4954 §4: 334 asks for a response; 235 or a refusal ends the exchange.
TRANSITIONS[ClientState.READY, Verb.AUTH, _CONTINUE] = ClientState.AUTH
TRANSITIONS[ClientState.AUTH, Verb.AUTH_RESPONSE, _CONTINUE] = ClientState.AUTH
TRANSITIONS[ClientState.AUTH, Verb.AUTH_RESPONSE, _ACCEPTED] = ClientState.READY
TRANSITIONS[ClientState.AUTH, Verb.AUTH_RESPONSE, _REFUSED] = ClientState.READY

#: The verbs that may be sent in each projected state. The message data of
#: DATA goes through ``send_data`` in state ``DATA``; so do the octets of
#: a BDAT chunk, before anything else is sent.
ALLOWED: dict[ClientState, frozenset[Verb]] = {
    ClientState.CONNECTED: frozenset(),
    # RFC 5321 §3.1: after a 554 greeting, only QUIT.
    ClientState.NO_SERVICE: frozenset({Verb.QUIT}),
    ClientState.AUTH: frozenset({Verb.AUTH_RESPONSE, Verb.AUTH_CANCEL}),
    ClientState.DATA: frozenset({Verb.END_OF_MESSAGE}),
    ClientState.CLOSED: frozenset(),
}
_BASIC = frozenset({Verb.EHLO, Verb.HELO, Verb.RSET, Verb.NOOP, Verb.QUIT})
ALLOWED[ClientState.GREETED] = _BASIC
# RFC 3207 §4 and RFC 4954 §4: STARTTLS and AUTH only outside a
# transaction, after EHLO (checked with the extensions).
ALLOWED[ClientState.READY] = _BASIC | {Verb.MAIL, Verb.STARTTLS, Verb.AUTH}
ALLOWED[ClientState.MAIL] = _BASIC | {Verb.RCPT}
# RFC 3030 §2: BDAT once there is a recipient; never DATA after BDAT.
ALLOWED[ClientState.RCPT] = _BASIC | {Verb.RCPT, Verb.DATA, Verb.BDAT, Verb.BDAT_LAST}
ALLOWED[ClientState.BDAT] = _BASIC | {Verb.BDAT, Verb.BDAT_LAST}

#: RFC 2920 §3.1: the commands that another may follow before their reply
#: is in, when the server offers PIPELINING. EHLO, DATA, NOOP, QUIT (and
#: VRFY, EXPN, TURN) may only end a group, and so may STARTTLS (RFC 3207
#: §4.2: nothing may follow it in the clear) and AUTH (RFC 4954 §4). The
#: message data is "explicitly allowed to be the first command in a
#: group", so commands may follow the final dot; and BDAT chunks may be
#: pipelined (RFC 3030 §2; its example in §4.2).
CAN_FOLLOW: frozenset[Verb] = frozenset(
    {Verb.MAIL, Verb.RCPT, Verb.RSET, Verb.END_OF_MESSAGE, Verb.BDAT, Verb.BDAT_LAST}
)

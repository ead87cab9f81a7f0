"""
The values of the client side of the core.

The commands (:class:`ClientCommand` and its subclasses) go to
:meth:`ClientConnection.send <mailframe.core.ClientConnection.send>`, which
renders them; the events (:class:`Greeting`, :class:`Response`,
:class:`ProtocolViolation` and :class:`~mailframe.core.ConnectionClosed`)
come out of ``next_event``, each reply paired with the command it answers.

Every command is checked against the RFC 5321 grammar when it is built, so
that none can put a line end, or anything else a server would refuse as
syntax, on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

from mailframe.address import Mailbox, ReversePath, is_domain
from mailframe.core._dsn import parse_envid, parse_notify, parse_orcpt, parse_ret
from mailframe.core._events import ConnectionClosed
from mailframe.reply import Reply

__all__ = [
    "ClientAuth",
    "ClientAuthCancel",
    "ClientAuthResponse",
    "ClientBdat",
    "ClientCommand",
    "ClientData",
    "ClientEhlo",
    "ClientEndOfMessage",
    "ClientEvent",
    "ClientHelo",
    "ClientMail",
    "ClientNoop",
    "ClientQuit",
    "ClientRcpt",
    "ClientRset",
    "ClientStartTls",
    "Greeting",
    "Parameters",
    "ProtocolViolation",
    "Response",
]

# RFC 5321 §4.1.2: esmtp-keyword and esmtp-value. Values are ASCII here:
# the UTF-8 values of RFC 6531 §3.3 are not used by any parameter the
# client knows (ORCPT carries utf-8-addr-xtext, which is ASCII).
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
# RFC 5321 §4.1.3: an address literal; its content is checked no further
# than what a line may carry (dcontent, §4.1.2).
_ADDRESS_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]\Z")
# RFC 4422 §3.1: sasl-mech.
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}\Z")
# RFC 6152 §2, RFC 3030 §3.
_BODY_TYPES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})

Parameters = tuple[tuple[str, str | None], ...]
"""ESMTP parameters: upper-case keyword and value (``None`` for none), in order."""


def _parameters(
    value: Mapping[str, str | None] | Iterable[tuple[str, str | None]],
) -> Parameters:
    """
    ``KEY=VALUE`` parameters of MAIL or RCPT (RFC 5321 §4.1.2), from a
    mapping or pairs, with upper-case keywords.
    """
    pairs = value.items() if isinstance(value, Mapping) else value
    out: dict[str, str | None] = {}
    for key, val in pairs:
        if not _KEYWORD.match(key):
            raise ValueError(f"bad ESMTP keyword {key!r}")
        if val is not None and not _VALUE.match(val):
            raise ValueError(f"bad value for the ESMTP parameter {key}: {val!r}")
        upper = key.upper()
        if upper in out:
            raise ValueError(f"duplicate ESMTP parameter {upper}")
        out[upper] = val
    return tuple(out.items())


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # RFC 5321 §4.1.1.1: EHLO and HELO take a Domain or an address literal.
    if not (is_domain(value) or _ADDRESS_LITERAL.match(value)):
        raise ValueError(f"{value!r} is neither a domain nor an address literal")


def _check_mail_parameters(
    instance: ClientMail, attribute: attrs.Attribute[Parameters], value: Parameters
) -> None:
    for key, val in value:
        if key == "SIZE" and (val is None or not _DIGITS.match(val)):
            # RFC 1870 §3: SIZE=<decimal octets>.
            raise ValueError(f"bad SIZE parameter {val!r}")
        if key == "BODY" and (val is None or val.upper() not in _BODY_TYPES):
            raise ValueError(f"bad BODY parameter {val!r}")
        if key == "SMTPUTF8" and val is not None:
            # RFC 6531 §3.4: SMTPUTF8 takes no value.
            raise ValueError("the SMTPUTF8 parameter takes no value")
        if key == "RET":
            parse_ret(val)
        if key == "ENVID":
            parse_envid(val)
    if not instance.sender.render().isascii() and not instance.smtputf8:
        # RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL.
        raise ValueError("a non-ASCII sender needs the SMTPUTF8 parameter")


def _check_rcpt_parameters(
    instance: ClientRcpt, attribute: attrs.Attribute[Parameters], value: Parameters
) -> None:
    for key, val in value:
        # RFC 3461 §4.1, §4.2: what a server would refuse with 501.
        if key == "NOTIFY":
            parse_notify(val)
        if key == "ORCPT":
            parse_orcpt(val)


def _upper(value: str) -> str:
    return value.upper()


@attrs.frozen
class ClientCommand:
    """Base of the commands that a client sends."""


@attrs.frozen
class ClientEhlo(ClientCommand):
    """``EHLO name`` (RFC 5321 §4.1.1.1)."""

    name: str = attrs.field(validator=_check_name)


@attrs.frozen
class ClientHelo(ClientCommand):
    """``HELO name``, when EHLO was refused (RFC 5321 §3.2)."""

    name: str = attrs.field(validator=_check_name)


@attrs.frozen
class ClientMail(ClientCommand):
    """
    ``MAIL FROM:<sender> parameters`` (RFC 5321 §4.1.1.2).

    :ivar sender: the reverse path; :data:`~mailframe.address.NULL_PATH`
        for a bounce.
    :ivar parameters: ESMTP parameters such as ``{"SIZE": "1024",
        "BODY": "8BITMIME"}``; a mapping or pairs is taken, and kept as
        pairs with upper-case keywords. Each must be offered by the server
        (see :meth:`ClientConnection.send
        <mailframe.core.ClientConnection.send>`).
    :raises ValueError: for a parameter that is not ``KEY[=VALUE]`` with
        an ASCII value, a malformed SIZE, BODY, SMTPUTF8, RET or ENVID
        (RFC 3461 §4.3, §4.4; :func:`~mailframe.core.dsn_mail_parameters`
        makes them from an envelope), or a non-ASCII sender without
        SMTPUTF8 (RFC 6531 §3.4).
    """

    sender: ReversePath
    parameters: Parameters = attrs.field(
        default=(), converter=_parameters, validator=_check_mail_parameters
    )

    @property
    def smtputf8(self) -> bool:
        """The transaction asks for SMTPUTF8 (RFC 6531 §3.4)."""
        return any(key == "SMTPUTF8" for key, _ in self.parameters)

    @property
    def body(self) -> str | None:
        """The BODY parameter, upper-cased, or ``None``."""
        value = dict(self.parameters).get("BODY")
        return value.upper() if value is not None else None


@attrs.frozen
class ClientRcpt(ClientCommand):
    """
    ``RCPT TO:<recipient> parameters`` (RFC 5321 §4.1.1.3).

    :ivar parameters: ESMTP parameters such as ``{"NOTIFY": "NEVER"}``, as
        for :class:`ClientMail`.
    :raises ValueError: for a parameter that is not ``KEY[=VALUE]`` with
        an ASCII value, or a malformed NOTIFY or ORCPT (RFC 3461 §4.1,
        §4.2; :func:`~mailframe.core.dsn_rcpt_parameters` makes them from
        an envelope's :class:`~mailframe.envelope.DSNOptions`).
    """

    recipient: Mailbox
    parameters: Parameters = attrs.field(
        default=(), converter=_parameters, validator=_check_rcpt_parameters
    )


@attrs.frozen
class ClientData(ClientCommand):
    """
    ``DATA`` (RFC 5321 §4.1.1.4). Only a ``354`` reply opens the message
    for :meth:`~mailframe.core.ClientConnection.send_data`.
    """


@attrs.frozen
class ClientEndOfMessage(ClientCommand):
    """
    The final dot after message data (RFC 5321 §4.1.1.4), written by
    :meth:`~mailframe.core.ClientConnection.end_data`. Its reply is the
    outcome of the message.

    :ivar recipient: ``None`` in SMTP. In LMTP, the final dot gets a reply
        for each recipient that RCPT accepted (RFC 2033 §4.2), each paired
        with a :class:`ClientEndOfMessage` that names its recipient.
    """

    recipient: Mailbox | None = None


@attrs.frozen
class ClientBdat(ClientCommand):
    """
    ``BDAT size [LAST]`` (RFC 3030 §2): the next *size* octets written with
    :meth:`~mailframe.core.ClientConnection.send_data` are the chunk,
    exactly as they are.
    """

    size: int = attrs.field(validator=attrs.validators.ge(0))
    last: bool = False


@attrs.frozen
class ClientRset(ClientCommand):
    """``RSET`` (RFC 5321 §4.1.1.5)."""


@attrs.frozen
class ClientNoop(ClientCommand):
    """``NOOP`` (RFC 5321 §4.1.1.9)."""


@attrs.frozen
class ClientQuit(ClientCommand):
    """``QUIT`` (RFC 5321 §4.1.1.10)."""


@attrs.frozen
class ClientStartTls(ClientCommand):
    """
    ``STARTTLS`` (RFC 3207 §4). Once it is answered ``220``, start the TLS
    handshake before feeding the connection anything more.
    """


@attrs.frozen
class ClientAuth(ClientCommand):
    """
    ``AUTH mechanism [initial-response]`` (RFC 4954 §4).

    :ivar mechanism: the SASL mechanism, upper-cased.
    :ivar initial: the initial response, not yet base64-encoded, or
        ``None`` for none (``b""`` is sent as ``=``). Left out of
        ``repr``: it may hold a password.
    """

    mechanism: str = attrs.field(
        converter=_upper, validator=attrs.validators.matches_re(_MECHANISM)
    )
    initial: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ClientAuthResponse(ClientCommand):
    """
    The answer to a ``334`` challenge (RFC 4954 §4), not yet
    base64-encoded; left out of ``repr``.
    """

    data: bytes = attrs.field(repr=False)


@attrs.frozen
class ClientAuthCancel(ClientCommand):
    """``*``: cancel the authentication exchange after a ``334`` (RFC 4954 §4)."""


@attrs.frozen
class Greeting:
    """
    The server's greeting (RFC 5321 §3.1, §4.3.2): ``220`` to go on;
    ``554`` (or another refusal) allows only QUIT; ``421`` closes.
    """

    reply: Reply


@attrs.frozen
class Response:
    """
    A reply with the command it answers, in the order the commands were
    sent (RFC 2920 §3.1 under PIPELINING).

    :ivar command: the command answered; ``None`` only for a ``421`` that
        answers nothing (the server is closing the connection on its own,
        RFC 5321 §3.8, such as on a timeout while message data was being
        written).
    """

    command: ClientCommand | None
    reply: Reply


@attrs.frozen
class ProtocolViolation:
    """
    The server sent something that is not a valid reply, or a reply that
    no command can have: a malformed or unterminated line, lines that
    disagree on the code, a line or a reply over the
    :class:`~mailframe.core.ClientLimits`, text that is not UTF-8, a reply
    to no command, or a code the command cannot get. Nothing more is read;
    close the connection and treat what was not delivered as a transient
    failure (:attr:`reply`).

    :ivar reason: what was wrong, with the offending octets escaped.
    """

    reason: str

    @property
    def reply(self) -> Reply:
        """The transient failure to record: ``451 4.5.0`` (RFC 3463 §3.6)."""
        reason = " ".join(self.reason.splitlines())
        return Reply(451, "4.5.0", f"Protocol error from the server: {reason}")


ClientEvent = Greeting | Response | ProtocolViolation | ConnectionClosed

"""
The events that :class:`~mailframe.core.ServerConnection` turns bytes into.

Each command event is answered with exactly one reply through
``ServerConnection.send``, in order.
"""

from __future__ import annotations

import attrs

from mailframe.address import Mailbox, ReversePath
from mailframe.envelope import BodyType, DSNOptions
from mailframe.reply import Reply

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "BadCommand",
    "Bdat",
    "Command",
    "ConnectionClosed",
    "Data",
    "Ehlo",
    "EndOfMessage",
    "Event",
    "Expn",
    "Helo",
    "Help",
    "Mail",
    "MessageData",
    "NEED_DATA",
    "Noop",
    "PAUSED",
    "Quit",
    "Rcpt",
    "Rset",
    "Sentinel",
    "StartTls",
    "Vrfy",
]


class Sentinel:
    """A value returned by ``next_event`` that is not an event."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: More bytes are needed before another event can be produced.
NEED_DATA = Sentinel("NEED_DATA")
#: The last command has not been answered yet; ``send`` its reply first.
PAUSED = Sentinel("PAUSED")


@attrs.frozen
class Command:
    """Base of the events that a client command produces."""


@attrs.frozen
class Helo(Command):
    name: str


@attrs.frozen
class Ehlo(Command):
    name: str


@attrs.frozen
class Mail(Command):
    """
    MAIL FROM.

    :ivar parameters: every ESMTP parameter, upper-case keyword to value,
        as sent.
    :ivar auth: the ``AUTH=`` parameter with its xtext decoded (RFC 4954
        §5): a mailbox, ``"<>"`` for an unknown submitter, or ``None`` when
        absent. It is the client's claim; it says nothing about who
        authenticated.
    :ivar ret: the ``RET=`` parameter (RFC 3461 §4.3) upper-cased,
        ``"FULL"`` or ``"HDRS"``, or ``None``.
    :ivar envid: the ``ENVID=`` parameter (RFC 3461 §4.4) decoded from
        xtext, or ``None``.
    """

    sender: ReversePath
    parameters: tuple[tuple[str, str | None], ...] = ()
    size: int | None = None
    body: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    auth: str | None = None
    ret: str | None = None
    envid: str | None = None


@attrs.frozen
class Rcpt(Command):
    """
    RCPT TO.

    :ivar parameters: every ESMTP parameter, upper-case keyword to value,
        as sent.
    :ivar notify: the ``NOTIFY=`` keywords (RFC 3461 §4.1), upper-cased:
        ``{"NEVER"}`` or some of ``SUCCESS``, ``FAILURE`` and ``DELAY``;
        ``None`` when absent.
    :ivar orcpt: the ``ORCPT=`` parameter (RFC 3461 §4.2) with its address
        decoded from xtext, such as ``"rfc822;bob@example.com"``, or
        ``None``.
    """

    recipient: Mailbox
    parameters: tuple[tuple[str, str | None], ...] = ()
    notify: frozenset[str] | None = None
    orcpt: str | None = None

    @property
    def dsn(self) -> DSNOptions | None:
        """The DSN options of this recipient, or ``None`` when it gave none."""
        if self.notify is None and self.orcpt is None:
            return None
        return DSNOptions(self.notify, self.orcpt)


@attrs.frozen
class Data(Command):
    pass


@attrs.frozen
class Rset(Command):
    pass


@attrs.frozen
class Noop(Command):
    pass


@attrs.frozen
class Quit(Command):
    pass


@attrs.frozen
class Vrfy(Command):
    argument: str


@attrs.frozen
class Expn(Command):
    argument: str


@attrs.frozen
class Help(Command):
    argument: str


@attrs.frozen
class StartTls(Command):
    """
    STARTTLS (RFC 3207). Answer ``220`` and start the TLS handshake right
    after writing the reply: every octet received before it is thrown away
    unread (RFC 3207 §4.2) and the session starts over in state
    ``GREETED``. A refusal (such as ``454 4.7.0``) changes nothing.
    """


@attrs.frozen
class Auth(Command):
    """
    AUTH (RFC 4954 §4). Answer ``334`` with a base64 challenge to read a
    :class:`AuthResponse` next, ``235`` once authenticated, or a refusal.

    :ivar mechanism: the SASL mechanism, upper-cased.
    :ivar initial: the initial response, decoded: ``b""`` when it was sent
        as ``=``, ``None`` when there was none. Left out of ``repr``: it
        may hold a password.
    """

    mechanism: str
    initial: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class AuthResponse(Command):
    """
    A client's answer to a ``334`` challenge (RFC 4954 §4). Answer it like
    :class:`Auth`.

    :ivar data: the response, base64-decoded; left out of ``repr``.
    """

    data: bytes = attrs.field(repr=False)


@attrs.frozen
class AuthCancel(Command):
    """
    The client cancelled the authentication exchange with ``*``
    (RFC 4954 §4). Refuse it with ``501``, as ``default_reply`` does.
    """


@attrs.frozen
class BadCommand(Command):
    """
    A command that the core refused by itself (syntax, sequence or limits).
    Answer it with :attr:`reply`.
    """

    reply: Reply
    line: bytes = b""


@attrs.frozen
class MessageData:
    """
    A piece of message data: after DATA dot-unstuffed and exactly as sent
    otherwise; after BDAT exactly as sent.
    """

    data: bytes


@attrs.frozen
class EndOfMessage(Command):
    """
    The final dot arrived. Answer it with the outcome of the transaction.

    :ivar size: the size of the message data in octets.
    :ivar headers: the header section (capped), ending with its empty line
        when one was seen.
    :ivar hops: the number of ``Received:`` fields in the header section.
    :ivar problem: when set, the core refuses the message with this reply
        (too big, bare CR or LF, too many hops); the data events that came
        before must be discarded. For a message over the SIZE limit they
        stopped at the limit.
    """

    size: int
    headers: bytes
    hops: int
    problem: Reply | None = None


@attrs.frozen
class Bdat(Command):
    """
    A chunk of message data sent with BDAT (RFC 3030 §2), after its
    octets came as :class:`MessageData` events (exactly as sent: there is
    no dot-stuffing). Answer it with ``250`` to take the chunk, or refuse
    it; a refusal, and any reply to the ``LAST`` chunk, ends the
    transaction.

    :ivar size: the octets in this chunk.
    :ivar last: the chunk ends the message.
    :ivar total: the octets in the message so far, this chunk included.
    :ivar headers: the header section captured so far (capped), as in
        :class:`EndOfMessage`; complete on the ``LAST`` chunk.
    :ivar hops: the ``Received:`` fields in the header section, counted
        once it has ended (always on the ``LAST`` chunk).
    :ivar problem: when set, the core refuses the chunk with this reply:
        ``552`` for the chunk that takes the message over the SIZE limit
        (the data events stopped at the limit), and on the ``LAST`` chunk
        the checks of :class:`EndOfMessage` (bare CR or LF, too many
        hops). The data events of the message must then be discarded.
    """

    size: int
    last: bool = False
    total: int = 0
    headers: bytes = b""
    hops: int = 0
    problem: Reply | None = None


@attrs.frozen
class ConnectionClosed:
    """The client closed the connection (mid-message, if a message was open)."""


Event = Command | MessageData | ConnectionClosed

"""
The events that :class:`~mailframe.core.ServerConnection` turns bytes into.

Each command event is answered with exactly one reply through
``ServerConnection.send``, in order.
"""

from __future__ import annotations

import attrs

from mailframe.address import Mailbox, ReversePath
from mailframe.envelope import BodyType
from mailframe.reply import Reply

__all__ = [
    "BadCommand",
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

    :ivar parameters: every ESMTP parameter, upper-case keyword to value.
    """

    sender: ReversePath
    parameters: tuple[tuple[str, str | None], ...] = ()
    size: int | None = None
    body: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False


@attrs.frozen
class Rcpt(Command):
    recipient: Mailbox
    parameters: tuple[tuple[str, str | None], ...] = ()


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
class BadCommand(Command):
    """
    A command that the core refused by itself (syntax, sequence or limits).
    Answer it with :attr:`reply`.
    """

    reply: Reply
    line: bytes = b""


@attrs.frozen
class MessageData:
    """A piece of message data, dot-unstuffed, exactly as sent otherwise."""

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
class ConnectionClosed:
    """The client closed the connection (mid-message, if a message was open)."""


Event = Command | MessageData | ConnectionClosed

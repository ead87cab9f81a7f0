"""
The envelope of a message and the values that travel with it through the
queue: client identity, recipients, routes and delivery results.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

from mailframe.address import Mailbox, ReversePath
from mailframe.reply import Reply

__all__ = [
    "BodyType",
    "ClientInfo",
    "DeliveryStatus",
    "Envelope",
    "EntryState",
    "QueueEntry",
    "QueueStats",
    "RecipientResult",
    "RecipientState",
    "Route",
]


class BodyType(enum.Enum):
    """The BODY= parameter of MAIL (RFC 6152)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


@attrs.frozen
class ClientInfo:
    """
    Who sent a message, as the server saw it.

    :ivar address: the client's IP address (from the PROXY header where one
        was used), or ``""`` for a non-IP transport.
    :ivar port: the client's port, or 0.
    :ivar helo: the name given in HELO or EHLO.
    :ivar esmtp: ``True`` if the client used EHLO.
    :ivar tls: a short description of the TLS session, or ``None``.
    :ivar authenticated_as: the SASL identity, or ``None``.
    :ivar hostname: the client's verified host name, or ``None``.
    :ivar listener: the name of the listener that accepted the connection.
    """

    address: str = ""
    port: int = 0
    helo: str = ""
    esmtp: bool = False
    tls: str | None = None
    authenticated_as: str | None = None
    hostname: str | None = None
    listener: str = ""


@attrs.frozen
class Envelope:
    """
    The envelope of one message: what MAIL and RCPT said, and about whom.

    :ivar sender: the reverse path; :data:`mailframe.address.NULL_PATH` for
        bounces.
    :ivar recipients: the forward paths, in the order they were accepted.
    :ivar body: the BODY= parameter.
    :ivar size: the SIZE= parameter that MAIL declared, or ``None``.
    :ivar smtputf8: ``True`` if MAIL carried SMTPUTF8 (RFC 6531).
    :ivar client: who sent it.
    :ivar received_at: POSIX time of the end of data.
    :ivar added_headers: header fields that policies asked to add, each a
        complete ``Name: value`` line without its line end; transports put
        them before the stored message.
    :ivar auth: the mailbox to give in ``AUTH=`` when relaying (RFC 4954
        §5): what an authenticated client gave, or its identity; ``"<>"``
        when it gave ``AUTH=<>``; ``None`` for a client that did not
        authenticate, whose ``AUTH=`` is not trusted.
    """

    sender: ReversePath
    recipients: tuple[Mailbox, ...]
    body: BodyType = BodyType.SEVEN_BIT
    size: int | None = None
    smtputf8: bool = False
    client: ClientInfo = ClientInfo()
    received_at: float = 0.0
    added_headers: tuple[str, ...] = ()
    auth: str | None = None


RouteArgs = tuple[tuple[str, str], ...]


def _route_args(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> RouteArgs:
    return tuple(sorted(dict(value).items()))


@attrs.frozen
class Route:
    """
    Where a router sends a recipient: a transport and its arguments, or a
    rejection.

    :ivar transport: the name of an :class:`~mailframe.interfaces.IDeliveryTransport`.
    :ivar args: the transport's arguments for this route (for example the
        Maildir directory, or a smarthost); part of the route's identity, so
        recipients with equal routes are delivered together.
    :ivar reject: when set, the recipient is not delivered and fails with
        this reply.
    """

    transport: str
    args: RouteArgs = attrs.field(default=(), converter=_route_args)
    reject: Reply | None = None

    @property
    def arguments(self) -> Mapping[str, str]:
        """:attr:`args` as a mapping."""
        return dict(self.args)


class DeliveryStatus(enum.Enum):
    """The outcome of one delivery attempt for one recipient."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@attrs.frozen
class RecipientResult:
    """
    What happened to one recipient in one delivery attempt.

    :ivar recipient: the recipient the transport delivered to.
    :ivar status: delivered, transient or permanent failure.
    :ivar reply: the reply (the remote one, or a local one).
    :ivar original: the recipient of the envelope that the router expanded
        into *recipient* (for DSN, RFC 3461 ORCPT); the same when not expanded.
    :ivar remote: the host that answered, if any.
    """

    recipient: Mailbox
    status: DeliveryStatus
    reply: Reply
    original: Mailbox | None = None
    remote: str | None = None


class EntryState(enum.Enum):
    """
    The life of a queue entry.

    ``incoming`` entries are being received and are invisible; ``active`` ones
    are due (or claimed under a lease); ``deferred`` ones wait for their next
    attempt; ``hold`` ones wait for an operator; ``done`` ones have an outcome
    for every recipient; ``quarantine`` holds entries that could not be read.
    """

    INCOMING = "incoming"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"
    DONE = "done"
    QUARANTINE = "quarantine"


class RecipientState(enum.Enum):
    """Where one recipient of a queue entry stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@attrs.frozen
class QueueEntry:
    """
    A snapshot of one queue entry.

    :ivar queue_id: the id given by ``open_writer()``.
    :ivar envelope: the envelope committed with the message.
    :ivar state: the entry's lifecycle state.
    :ivar recipients: each recipient of the envelope with its state.
    :ivar attempts: delivery attempts made so far.
    :ivar next_attempt: POSIX time when the entry is next due.
    :ivar reason: why it was last deferred, held or quarantined.
    :ivar size: the size of the stored message in octets.
    """

    queue_id: str
    envelope: Envelope
    state: EntryState
    recipients: tuple[tuple[Mailbox, RecipientState], ...]
    attempts: int = 0
    next_attempt: float = 0.0
    reason: str = ""
    size: int = 0

    @property
    def pending(self) -> tuple[Mailbox, ...]:
        """The recipients that still need delivering."""
        return tuple(r for r, state in self.recipients if state is RecipientState.PENDING)


@attrs.frozen
class QueueStats:
    """Counts of queue entries by state."""

    counts: tuple[tuple[EntryState, int], ...]

    def __getitem__(self, state: EntryState) -> int:
        return dict(self.counts).get(state, 0)

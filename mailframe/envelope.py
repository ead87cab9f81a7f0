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
    "DSNOptions",
    "DeliveryStatus",
    "Envelope",
    "EntryState",
    "Handoff",
    "QueueEntry",
    "QueueStats",
    "QueuedRecipient",
    "RecipientResult",
    "RecipientState",
    "Route",
]

#: The NOTIFY keywords of RFC 3461 §4.1.
NOTIFY_KEYWORDS = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


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
        was used), or ``""`` for a non-IP transport and for a PROXY header
        that named no client.
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
class DSNOptions:
    """
    What one recipient's RCPT asked of delivery status notifications
    (RFC 3461 §4).

    :ivar notify: the NOTIFY keywords, upper case: ``{"NEVER"}``, or some of
        ``SUCCESS``, ``FAILURE`` and ``DELAY``; ``None`` when RCPT gave no
        NOTIFY, which asks for failures and delays (RFC 3461 §4.1 leaves
        the choice to the MTA, and this is Postfix's).
    :ivar orcpt: the ORCPT parameter decoded from xtext: its address type,
        a semicolon, and the address, such as ``"rfc822;bob@example.com"``.
    """

    notify: frozenset[str] | None = None
    orcpt: str | None = None

    def wants(self, keyword: str) -> bool:
        """
        Whether a notification of *keyword* (``SUCCESS``, ``FAILURE`` or
        ``DELAY``) is asked for.
        """
        if self.notify is None:
            return keyword in ("FAILURE", "DELAY")
        return keyword in self.notify


_NO_DSN = DSNOptions()


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
    :ivar ret: the RET parameter of MAIL (RFC 3461 §4.3), ``"FULL"`` or
        ``"HDRS"``, or ``None``.
    :ivar envid: the ENVID parameter of MAIL (RFC 3461 §4.4), decoded from
        xtext, or ``None``.
    :ivar dsn: the DSN options of the recipients that gave any, as
        ``(recipient, options)`` pairs; see :meth:`dsn_options`.
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
    ret: str | None = None
    envid: str | None = None
    dsn: tuple[tuple[Mailbox, DSNOptions], ...] = ()

    def dsn_options(self, recipient: Mailbox) -> DSNOptions:
        """The DSN options that RCPT gave for *recipient*; defaults if none."""
        for mailbox, options in self.dsn:
            if mailbox == recipient:
                return options
        return _NO_DSN


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


class Handoff(enum.Enum):
    """
    Where a delivered recipient went, which decides what a SUCCESS
    notification says (RFC 3464 §2.3.3).
    """

    #: Final delivery (a mailbox, LMTP): "delivered".
    DELIVERED = "delivered"
    #: To a next hop that does not offer DSN: "relayed".
    RELAYED = "relayed"
    #: To a next hop that offers DSN and was given the parameters: it
    #: reports from now on, and no notification is sent here.
    PASSED_ON = "passed-on"


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
    :ivar handoff: for a delivered recipient, where it went.
    """

    recipient: Mailbox
    status: DeliveryStatus
    reply: Reply
    original: Mailbox | None = None
    remote: str | None = None
    handoff: Handoff = Handoff.DELIVERED


class EntryState(enum.Enum):
    """
    The life of a queue entry, as in Postfix's queue directories.

    ``incoming`` entries are committed and wait for their first attempt;
    ``active`` ones are claimed by a queue runner; ``deferred`` ones wait
    for their next attempt; ``hold`` ones wait for an operator; ``corrupt``
    ones could not be read and are kept aside for an operator. An entry is
    removed once every recipient is delivered, bounced or expired and every
    notification owed is queued. A message still being received is not an
    entry yet.
    """

    INCOMING = "incoming"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"
    CORRUPT = "corrupt"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


class RecipientState(enum.Enum):
    """Where one recipient of a queue entry stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"

    # Members are singletons compared by identity; Enum's own hash
    # hashes the name in Python, on every dict and set lookup.
    __hash__ = object.__hash__


@attrs.frozen
class QueuedRecipient:
    """
    One recipient of a queue entry, with its own delivery history.

    :ivar mailbox: the recipient as the envelope has it.
    :ivar state: pending, or its final state.
    :ivar attempts: delivery attempts made for it.
    :ivar reply: the last reply for it, or ``None`` before any attempt.
    :ivar remote: the host that gave :attr:`reply`, if any.
    :ivar next_attempt: POSIX time of its next attempt, while pending.
    :ivar report: the RFC 3464 action of a notification owed for it and
        not yet queued (``"failed"``, ``"delivered"`` or ``"relayed"``), or
        ``None``. An entry with a report owed is not done.
    """

    mailbox: Mailbox
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    reply: Reply | None = None
    remote: str | None = None
    next_attempt: float = 0.0
    report: str | None = None


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
    :ivar reason: why it was last deferred, held or set aside as corrupt.
    :ivar size: the size of the stored message in octets.
    :ivar warned: whether the delay warning was sent.
    """

    queue_id: str
    envelope: Envelope
    state: EntryState
    recipients: tuple[QueuedRecipient, ...]
    attempts: int = 0
    next_attempt: float = 0.0
    reason: str = ""
    size: int = 0
    warned: bool = False

    @classmethod
    def new(
        cls, queue_id: str, envelope: Envelope, now: float, size: int, state: EntryState
    ) -> QueueEntry:
        """A freshly committed entry: every recipient pending, due at *now*."""
        recipients = tuple(QueuedRecipient(r, next_attempt=now) for r in envelope.recipients)
        return cls(queue_id, envelope, state, recipients, next_attempt=now, size=size)

    @property
    def pending(self) -> tuple[Mailbox, ...]:
        """The recipients that still need delivering."""
        return tuple(r.mailbox for r in self.recipients if r.state is RecipientState.PENDING)

    @property
    def done(self) -> bool:
        """No recipient is pending and no notification is owed."""
        return all(
            r.state is not RecipientState.PENDING and r.report is None for r in self.recipients
        )


@attrs.frozen
class QueueStats:
    """
    Counts of queue entries by state.

    :ivar counts: ``(state, count)`` pairs.
    :ivar size: octets stored, or ``None`` when the store does not know.
    :ivar oldest: POSIX time the oldest entry arrived, or ``None``.
    """

    counts: tuple[tuple[EntryState, int], ...]
    size: int | None = None
    oldest: float | None = None

    def __getitem__(self, state: EntryState) -> int:
        return dict(self.counts).get(state, 0)

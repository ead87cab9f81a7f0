"""
What the SMTP and LMTP transports share: the message as it is sent, the DSN
options of each recipient, and results for recipients that all fail alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import IO

import attrs
from twisted.internet.defer import Deferred

from mailframe.address import Mailbox, original_recipient
from mailframe.envelope import (
    DeliveryStatus,
    DSNOptions,
    EntryState,
    Envelope,
    QueueEntry,
    RecipientResult,
)
from mailframe.errors import MailframeError, PermanentDeliveryError
from mailframe.interfaces import IQueueStore
from mailframe.protocols.client import header_has_non_ascii
from mailframe.reply import Reply

__all__ = [
    "RENEWED_LEASE",
    "OutgoingMessage",
    "dsn_options",
    "fail_all",
    "open_outgoing",
    "status_of",
]

#: The status of a route that cannot be used (RFC 3463 §3.4: X.3.5, system
#: incorrectly configured), always transient, so that a mistake in the
#: configuration never bounces mail.
BAD_ROUTE = "4.3.5"
#: The reply of a delivery asked for while the transport stops.
SHUTTING_DOWN = Reply(451, "4.3.2", "Mail system shutting down; will try again")


#: Seconds of lease that a renewal before the message data and before the
#: final dot asks for: the queue runner's default lease. A store with a
#: lease setting of its own (``postgres``) renews for that instead.
RENEWED_LEASE = 3600.0


@attrs.frozen
class OutgoingMessage:
    """
    The message of one delivery, as it is sent.

    :ivar file: the stored message, at any position: it is read from its
        start, after a seek.

    :ivar renew: renews the lease of the entry being delivered; the client
        calls it before the message data and again before the final dot,
        and ends the transaction without the dot when it fails, so that a
        node that lost its lease (another node may be delivering the entry
        now) never completes a delivery. ``None`` when the entry was not
        claimed (a test or a tool delivering it), so there is no lease.
    """

    file: IO[bytes]
    prefix: bytes
    size: int
    utf8_headers: bool
    renew: Callable[[], Deferred[None]] | None = attrs.field(default=None, eq=False)


async def open_outgoing(store: IQueueStore, entry: QueueEntry) -> OutgoingMessage:
    """
    The stored message of *entry*, with the header fields that policies
    added before it, its size, whether its header section needs SMTPUTF8
    (only a message with the SMTPUTF8 flag may; see
    :mod:`mailframe.protocols.client`), and, for a claimed (``active``)
    entry, how to renew its lease.
    """
    envelope = entry.envelope
    file: IO[bytes] = await store.open_message(entry.queue_id)
    try:
        prefix = b"".join(header.encode("utf-8") + b"\r\n" for header in envelope.added_headers)
        # Not sought back: whoever reads it (the client's transaction, the
        # header scan) starts with a seek to its start.
        size = len(prefix) + file.seek(0, os.SEEK_END)
        utf8 = envelope.smtputf8 and header_has_non_ascii(prefix, file)
    except BaseException:
        file.close()
        raise
    renew = None
    if entry.state is EntryState.ACTIVE:
        queue_id = entry.queue_id

        def renew() -> Deferred[None]:
            d: Deferred[None] = store.renew(queue_id, RENEWED_LEASE)
            return d

    return OutgoingMessage(file, prefix, size, utf8, renew)


def fail_all(
    items: Sequence[tuple[Mailbox, Mailbox]], reply: Reply, status: DeliveryStatus,
    remote: str | None = None,
) -> list[RecipientResult]:
    """The same result for every ``(recipient, original)`` of *items*."""
    return [RecipientResult(r, status, reply, original=o, remote=remote) for r, o in items]


def dsn_options(envelope: Envelope, recipient: Mailbox, original: Mailbox) -> DSNOptions:
    """
    What RCPT asks of DSN for *recipient*: the options the envelope's
    *original* recipient gave, and, when it gave no ORCPT and the router
    changed the address, an ORCPT that names *original* (RFC 3461 §5.2.1:
    an added ORCPT carries the address of the RCPT that was received).
    """
    options = envelope.dsn_options(original)
    if options.orcpt is None and recipient != original:
        options = attrs.evolve(options, orcpt=original_recipient(original))
    return options


def status_of(error: MailframeError) -> DeliveryStatus:
    """Permanent for a permanent delivery error, else transient."""
    if isinstance(error, PermanentDeliveryError):
        return DeliveryStatus.PERMANENT
    return DeliveryStatus.TRANSIENT

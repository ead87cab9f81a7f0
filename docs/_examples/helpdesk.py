"""
Example plugins for a helpdesk: mail to ``support.example.com`` opens
tickets. Two policies, a router, a delivery transport, and the component
maker of one of the policies.

They are the examples of the "Testing plugins with mailframe.testing"
chapter, whose tests, in ``test_helpdesk.py``, run them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import (
    ClientInfo,
    DeliveryStatus,
    Envelope,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.interfaces import IDeliveryTransport, IQueueStore, IRouter
from mailframe.policies._base import PolicyBase
from mailframe.reply import Reply
from mailframe.verdict import Verdict


class Greylist(PolicyBase):
    """
    Greylisting (RFC 6647): the first attempt to send from one client
    address, sender and recipient is refused for now; the same attempt is
    accepted once *delay* seconds have passed, as a real MTA retries.
    """

    def __init__(self, clock: IReactorTime, delay: float = 300.0) -> None:
        self.clock = clock
        self.delay = delay
        self.first_seen: dict[tuple[str, str, str], float] = {}

    def rcpt(
        self, client: ClientInfo, sender: Any, recipient: Mailbox, parameters: Any
    ) -> Verdict:
        key = (client.address, str(sender).lower(), str(recipient).lower())
        now = self.clock.seconds()
        first = self.first_seen.setdefault(key, now)
        if now - first < self.delay:
            return Verdict.tempfail(451, "4.7.1", "Greylisted: please try again later")
        return Verdict()


def _build_greylist(settings: Mapping[str, Any], context: Any) -> Greylist:
    return Greylist(context.reactor, settings["delay"])


greylist_maker = ComponentMaker(
    kind="policy",
    name="greylist",
    description="Refuse the first attempt of each sender and recipient for a while",
    factory=_build_greylist,
    schema={
        "delay": Setting("duration", 300.0, "How long a first attempt is refused", minimum=0),
    },
)


class Directory(Protocol):
    """The staff directory: who exists."""

    def exists(self, address: str) -> Deferred[bool]: ...


class DirectoryRecipients(PolicyBase):
    """
    Refuses the recipients of *domain* that the staff *directory* does not
    know. The directory answers later, so the hook answers with a Deferred.
    """

    def __init__(self, directory: Directory, domain: str) -> None:
        self.directory = directory
        self.domain = domain.lower()

    def rcpt(
        self, client: ClientInfo, sender: Any, recipient: Mailbox, parameters: Any
    ) -> Verdict | Deferred[Verdict]:
        if recipient.domain.lower() != self.domain:
            return Verdict()

        def answer(known: bool) -> Verdict:
            if known:
                return Verdict()
            return Verdict.reject(550, "5.1.1", f"No such user here: {recipient}")

        return self.directory.exists(str(recipient).lower()).addCallback(answer)


@implementer(IRouter)
class TicketRouter:
    """
    Sends the recipients of *domain* to the ``tickets`` transport, in the
    ticket queue that their local part names; every other recipient goes
    where *fallback* says.
    """

    def __init__(self, domain: str, fallback: IRouter) -> None:
        self.domain = domain.lower()
        self.fallback = fallback

    def route(
        self, envelope: Envelope, recipient: Mailbox
    ) -> Deferred[list[tuple[Mailbox, Mailbox, Route]]]:
        if recipient.domain.lower() != self.domain:
            routes: Deferred[list[tuple[Mailbox, Mailbox, Route]]] = self.fallback.route(
                envelope, recipient
            )
            return routes
        route = Route("tickets", {"queue": recipient.local_part.lower()})
        return succeed([(recipient, recipient, route)])


class UnknownQueue(Exception):
    """The tracker has no ticket queue of that name."""


class Tracker(Protocol):
    """The ticket tracker."""

    def open_ticket(self, queue: str, message: bytes) -> Deferred[str]:
        """Open a ticket in *queue*; fires with its number."""
        ...


@implementer(IDeliveryTransport)
class TicketTransport:
    """
    Delivers by opening a ticket, one per recipient, with the whole message.

    A queue the tracker does not have fails the recipient for good; any
    other failure of the tracker, for now, so that the queue tries again.
    """

    def __init__(self, store: IQueueStore, tracker: Tracker) -> None:
        self.store = store
        self.tracker = tracker

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        return Deferred.fromCoroutine(self._deliver(entry, recipients, route))

    async def _deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> list[RecipientResult]:
        stored = await self.store.open_message(entry.queue_id)
        # The header fields that policies asked for go on top.
        added = "".join(f"{field}\r\n" for field in entry.envelope.added_headers)
        message = added.encode("utf-8") + stored.read()
        queue = route.arguments["queue"]
        results = []
        for recipient, original in recipients:
            try:
                ticket = await self.tracker.open_ticket(queue, message)
            except UnknownQueue:
                status = DeliveryStatus.PERMANENT
                reply = Reply(550, "5.1.1", f"No ticket queue {queue}")
            except Exception:
                status = DeliveryStatus.TRANSIENT
                reply = Reply(451, "4.3.0", "The ticket tracker is not answering")
            else:
                status = DeliveryStatus.DELIVERED
                reply = Reply(250, "2.0.0", f"Ticket {ticket} opened")
            results.append(RecipientResult(recipient, status, reply, original=original))
        return results

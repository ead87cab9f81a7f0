"""
Tests of the helpdesk plugins, written the way a plugin author tests their
own: the contract suites of mailframe.testing, its fakes, and whole SMTP
sessions through mailframe's server with run_transcript.
"""

from __future__ import annotations

import random
from typing import Any

from helpdesk import (
    DirectoryRecipients,
    Greylist,
    TicketRouter,
    TicketTransport,
    UnknownQueue,
    greylist_maker,
)
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.address import Mailbox
from mailframe.config import ComponentContext
from mailframe.envelope import ClientInfo, DeliveryStatus, Route
from mailframe.testing import (
    ComponentMakerContract,
    MemoryQueueStore,
    PolicyContract,
    QueueStoreContract,
    RouterContract,
    StaticRouter,
    TransportContract,
    envelope,
    run_transcript,
)

SESSION = """\
EHLO client.example
MAIL FROM:<customer@example.org>
RCPT TO:<billing@support.example.com>
DATA
Subject: my invoice

Hello, my invoice is wrong.
.
QUIT
"""
BILLING = Mailbox("billing", "support.example.com")


# -- a policy: the contract, a unit test, and sessions -------------------------


class GreylistTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> Greylist:
        return Greylist(Clock(), delay=300)

    def test_first_attempt_refused_for_now(self) -> None:
        policy = self.make_policy()
        sender = Mailbox("customer", "example.org")
        verdict = policy.rcpt(ClientInfo(address="192.0.2.1"), sender, BILLING, {})
        self.assertEqual(verdict.reply.code, 451)

    def test_what_the_client_sees(self) -> None:
        clock = MemoryReactorClock()
        transcript = run_transcript(
            """\
HELO client.example
MAIL FROM:<customer@example.org>
RCPT TO:<billing@support.example.com>
QUIT
""",
            [Greylist(clock)],
            clock=clock,
        )
        self.assertEqual(
            transcript.render(),
            """\
S: 220 mx.example.com ESMTP mailframe
C: HELO client.example
S: 250 mx.example.com
C: MAIL FROM:<customer@example.org>
S: 250 2.1.0 OK
C: RCPT TO:<billing@support.example.com>
S: 451 4.7.1 Greylisted: please try again later
C: QUIT
S: 221 2.0.0 Bye
-- closed by the server""",
        )

    def test_retry_accepted_after_the_delay(self) -> None:
        clock = MemoryReactorClock()
        policy = Greylist(clock, delay=300)
        first = run_transcript(SESSION, [policy], clock=clock)
        self.assertEqual(first.reply_to("RCPT").code, 451)
        self.assertEqual(first.envelopes, ())
        clock.advance(301)
        retry = run_transcript(SESSION, [policy], clock=clock)
        self.assertEqual(retry.reply_to("RCPT").code, 250)
        (sent,) = retry.envelopes
        self.assertEqual(sent.recipients, (BILLING,))

    def test_other_clients_are_not_let_through(self) -> None:
        clock = MemoryReactorClock()
        policy = Greylist(clock, delay=300)
        run_transcript(SESSION, [policy], clock=clock)
        clock.advance(301)
        other = run_transcript(SESSION, [policy], clock=clock, client_address="198.51.100.7")
        self.assertEqual(other.reply_to("RCPT").code, 451)


# -- a component maker ---------------------------------------------------------


class GreylistMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return greylist_maker

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=Clock(), random=random.Random(0))

    def test_delay_setting(self) -> None:
        policy = greylist_maker.build({"delay": "5m"}, self.make_context())
        self.assertEqual(policy.delay, 300.0)

    def test_built_as_a_config_file_would_build_it(self) -> None:
        transcript = run_transcript(
            SESSION, makers=[greylist_maker], plugin_settings={"greylist": {"delay": "1m"}}
        )
        self.assertEqual(transcript.reply_to("RCPT").code, 451)


# -- a policy that answers later -----------------------------------------------


class Directory:
    """A staff directory that takes *latency* seconds to answer."""

    def __init__(self, clock: Any, known: set[str], latency: float = 0) -> None:
        self.clock = clock
        self.known = known
        self.latency = latency

    def exists(self, address: str) -> Deferred[bool]:
        if not self.latency:
            return succeed(address in self.known)
        return deferLater(self.clock, self.latency, lambda: address in self.known)


class DirectoryRecipientsTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> DirectoryRecipients:
        return DirectoryRecipients(Directory(None, {"postmaster@example.com"}), "example.com")

    def test_slow_directory_pipelined(self) -> None:
        clock = MemoryReactorClock()
        directory = Directory(clock, {"billing@support.example.com"}, latency=2)
        policy = DirectoryRecipients(directory, "support.example.com")
        transcript = run_transcript(
            [
                "EHLO client.example",
                (
                    "MAIL FROM:<customer@example.org>",
                    "RCPT TO:<nobody@support.example.com>",
                    "RCPT TO:<billing@support.example.com>",
                    "DATA",
                ),
                ("Subject: hi", "", "Hello.", ".", "QUIT"),
            ],
            [policy],
            clock=clock,
        )
        # The replies come in the order of the commands, each RCPT two
        # seconds of (fake) time after the one before.
        self.assertEqual(transcript.codes, (220, 250, 250, 550, 250, 354, 250, 221))
        self.assertEqual(transcript.elapsed, 4.0)
        self.assertEqual(transcript.envelopes[0].recipients, (BILLING,))


# -- a router --------------------------------------------------------------------


class TicketRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> TicketRouter:
        return TicketRouter("support.example.com", StaticRouter({}, Route("smtp")))

    def sample_recipient(self) -> Mailbox:
        return BILLING

    def test_others_go_to_the_fallback(self) -> None:
        routes = self.successResultOf(
            self.make_router().route(envelope(), Mailbox("alice", "example.net"))
        )
        self.assertEqual([route for _, _, route in routes], [Route("smtp")])

    def test_queue_named_by_local_part(self) -> None:
        (route,) = self.successResultOf(self.make_router().route(envelope(), BILLING))
        self.assertEqual(route[2], Route("tickets", {"queue": "billing"}))


# -- a transport -----------------------------------------------------------------


class Tracker:
    """A ticket tracker in memory."""

    def __init__(self, queues: set[str], working: bool = True) -> None:
        self.queues = queues
        self.working = working
        self.tickets: list[tuple[str, bytes]] = []

    def open_ticket(self, queue: str, message: bytes) -> Deferred[str]:
        if not self.working:
            return fail(ConnectionRefusedError())
        if queue not in self.queues:
            return fail(UnknownQueue(queue))
        self.tickets.append((queue, message))
        return succeed(str(len(self.tickets)))


class TicketTransportTests(TransportContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MemoryQueueStore(Clock())
        self.tracker = Tracker({"billing"})

    def make_transport(self) -> TicketTransport:
        return TicketTransport(self.store, self.tracker)

    def sample_delivery(self) -> Any:
        # A real message, queued by the real server into the store.
        (entry,) = run_transcript(SESSION, store=self.store).entries
        return entry, [(BILLING, BILLING)], Route("tickets", {"queue": "billing"})

    def deliver(self) -> list[Any]:
        entry, recipients, route = self.sample_delivery()
        results: list[Any] = self.successResultOf(
            self.make_transport().deliver(entry, recipients, route)
        )
        return results

    def test_opens_a_ticket_with_the_message(self) -> None:
        (result,) = self.deliver()
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertEqual(str(result.reply), "250 2.0.0 Ticket 1 opened")
        ((queue, message),) = self.tracker.tickets
        self.assertEqual(queue, "billing")
        self.assertTrue(message.startswith(b"Received: from client.example"))
        self.assertTrue(message.endswith(b"\r\nHello, my invoice is wrong.\r\n"))

    def test_unknown_queue_fails_for_good(self) -> None:
        self.tracker.queues.clear()
        (result,) = self.deliver()
        self.assertEqual(result.status, DeliveryStatus.PERMANENT)

    def test_tracker_down_is_tried_again(self) -> None:
        self.tracker.working = False
        (result,) = self.deliver()
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)


# -- the whole path --------------------------------------------------------------


class HelpdeskTests(SynchronousTestCase):
    def test_mail_becomes_a_ticket(self) -> None:
        clock = MemoryReactorClock()
        directory = Directory(clock, {"billing@support.example.com"})
        transcript = run_transcript(
            SESSION, [DirectoryRecipients(directory, "support.example.com")], clock=clock
        )
        (entry,) = transcript.entries
        router = TicketRouter("support.example.com", StaticRouter({}))
        ((recipient, original, route),) = self.successResultOf(
            router.route(entry.envelope, entry.envelope.recipients[0])
        )
        tracker = Tracker({"billing"})
        transport = TicketTransport(transcript.store, tracker)
        (result,) = self.successResultOf(
            transport.deliver(entry, [(recipient, original)], route)
        )
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertEqual(len(tracker.tickets), 1)


# -- a queue store ---------------------------------------------------------------


class StoreTests(QueueStoreContract, TestCase):
    # The store under test: put yours in its place.
    def make_store(self) -> MemoryQueueStore:
        return MemoryQueueStore(Clock())

    def test_full_store_refuses_mail(self) -> None:
        clock = MemoryReactorClock()
        store = MemoryQueueStore(clock, capacity=1000)
        transcript = run_transcript(
            ["EHLO client.example", "MAIL FROM:<customer@example.org> SIZE=5000"],
            store=store,
            clock=clock,
        )
        self.assertEqual(
            str(transcript.reply_to("MAIL")), "452 4.3.1 Error: insufficient system storage"
        )

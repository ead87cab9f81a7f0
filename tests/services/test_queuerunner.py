"""Tests for the queue runner, on a memory store and a fake clock."""

from __future__ import annotations

import email
import email.policy
import io
import itertools
import random
import re
from collections.abc import Callable, Sequence
from email.message import EmailMessage, Message
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe.address import NULL_PATH, Mailbox
from mailframe.envelope import (
    DeliveryStatus,
    DSNOptions,
    EntryState,
    Handoff,
    QueueEntry,
    RecipientResult,
    RecipientState,
    Route,
)
from mailframe.interfaces import IDeliveryTransport, IRouter
from mailframe.reply import Reply
from mailframe.services.queuerunner import (
    DEFAULT_BOUNCE_SIZE_LIMIT,
    NO_TRANSPORT,
    QueueRunner,
    read_original,
)
from mailframe.services.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_MAX_LIFETIME,
    RetrySchedule,
    parse_duration,
)
from mailframe.testing import MemoryQueueStore, RecordingTransport, StaticRouter, envelope

START = 1_000_000.0
MESSAGE = b"Subject: test\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"
OK = Reply(250, "2.0.0", "OK")
BOUNCE = Reply(550, "5.1.1", "no such user")
LATER = Reply(451, "4.4.1", "no answer from the host")
#: The report part of a DSN (RFC 3464 §2), and of one about an
#: internationalized message (RFC 6533 §4).
STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def enqueue(
    store: MemoryQueueStore,
    clock: Clock,
    sender: str,
    *recipients: str,
    message: bytes = MESSAGE,
    **fields: Any,
) -> str:
    writer = store.open_writer()
    writer.write(message)
    fields.setdefault("received_at", clock.seconds())
    committed: Deferred[str] = writer.commit(envelope(sender, *recipients, **fields))
    return str(committed.result)


def scripted(outcomes: dict[str, Callable[[Mailbox], RecipientResult]]) -> Callable[
    [Mailbox], RecipientResult
]:
    """An outcome for RecordingTransport from per-address functions; others are delivered."""

    def outcome(recipient: Mailbox) -> RecipientResult:
        make = outcomes.get(str(recipient))
        if make is None:
            return RecipientResult(recipient, DeliveryStatus.DELIVERED, OK)
        return make(recipient)

    return outcome


def always(status: DeliveryStatus, reply: Reply, **fields: Any) -> Callable[
    [Mailbox], RecipientResult
]:
    return lambda recipient: RecipientResult(recipient, status, reply, **fields)


@implementer(IDeliveryTransport)
class Mailbag:
    """A transport that keeps each message it delivers, with its entry."""

    def __init__(self, store: MemoryQueueStore) -> None:
        self.store = store
        self.messages: list[tuple[QueueEntry, bytes]] = []

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        def keep(file: io.BytesIO) -> list[RecipientResult]:
            self.messages.append((entry, file.read()))
            return [RecipientResult(r, DeliveryStatus.DELIVERED, OK, original=o)
                    for r, o in recipients]

        return self.store.open_message(entry.queue_id).addCallback(keep)


@attrs.frozen
class DSN:
    """A delivery status notification, parsed."""

    message: EmailMessage
    per_message: Message
    per_recipient: list[Message]

    @classmethod
    def parse(cls, data: bytes) -> DSN:
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert message.get_content_type() == "multipart/report"
        assert message.get_param("report-type") == "delivery-status"
        status = next(p for p in message.walk() if p.get_content_type() in STATUS_TYPES)
        # The groups of fields, read from the part's text: the email package
        # reads message/global-delivery-status as one message, not as groups.
        text = status.as_string().replace("\r\n", "\n").split("\n\n", 1)[1]
        blocks = [email.message_from_string(block, policy=email.policy.default)
                  for block in re.split(r"\n\n+", text.strip())]
        return cls(message, blocks[0], blocks[1:])

    @property
    def returned(self) -> Message:
        """The third part: the original message or its header section."""
        parts = self.message.get_payload()
        assert isinstance(parts, list)
        returned: Message = parts[2]
        return returned

    def field(self, name: str) -> list[str]:
        """The field *name* of each recipient, in order, stripped."""
        return [str(block[name]).strip() for block in self.per_recipient]


class RunnerTestCase(SynchronousTestCase):
    """A runner on a memory store, routing example.com to a scripted transport
    and example.org (the senders' domain) to a mailbag."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryQueueStore(self.clock, random=random.Random(5))
        self.transport = RecordingTransport()
        self.mailbag = Mailbag(self.store)
        self.router: IRouter = StaticRouter({
            "example.com": Route("local", {"where": "here"}),
            "example.org": Route("mailbag"),
            "broken.example": Route("none", reject=Reply(550, "5.1.2", "no such domain")),
        })
        self.events: list[dict[str, Any]] = []

    def runner(self, **kwargs: Any) -> QueueRunner:
        kwargs.setdefault("poll_interval", 1)
        kwargs.setdefault("random", random.Random(1))
        runner = QueueRunner(self.store, self.router,
                             {"local": self.transport, "mailbag": self.mailbag}, self.clock,
                             hostname="mx.example.net", **kwargs)
        runner.log = Logger(observer=self.events.append)
        runner.startService()
        self.addCleanup(runner.stopService)
        return runner

    def enqueue(self, sender: str, *recipients: str, **fields: Any) -> str:
        return enqueue(self.store, self.clock, sender, *recipients, **fields)

    def run_for(self, seconds: int) -> None:
        self.clock.pump([0] + [1] * seconds)

    def entry(self, queue_id: str) -> QueueEntry | None:
        return self.successResultOf(self.store.get(queue_id))

    def queued(self, queue_id: str) -> QueueEntry:
        entry = self.entry(queue_id)
        assert entry is not None
        return entry

    def dsns(self) -> list[DSN]:
        """The notifications delivered so far, parsed."""
        found = []
        for entry, data in self.mailbag.messages:
            if entry.envelope.sender == NULL_PATH:
                found.append(DSN.parse(data))
        return found

    def only_dsn(self) -> DSN:
        dsns = self.dsns()
        self.assertEqual(len(dsns), 1)
        return dsns[0]

    def queue_ids(self) -> list[str]:
        return [e.queue_id for e in self.successResultOf(self.store.list())]


class DeliveryTests(RunnerTestCase):
    def test_delivers_and_removes(self) -> None:
        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertEqual(len(self.transport.deliveries), 1)
        entry, recipients, route = self.transport.deliveries[0]
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual([str(r) for r, _ in recipients], ["a@example.com", "b@example.com"])
        self.assertEqual(route.arguments, {"where": "here"})
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(self.dsns(), [])

    def test_a_delivered_message_draws_no_retry_time(self) -> None:
        """
        The random source, which may be the system's (a system call each
        time), is asked only for the retry time of a recipient that waits.
        """
        drawn: list[float] = []

        class Counting(random.Random):
            def random(self) -> float:
                drawn.append(value := super().random())
                return value

        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@example.com")
        self.runner(random=Counting(1))
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(drawn, [])
        waiting = self.enqueue("sender@example.org", "a@elsewhere.net", "b@elsewhere.net")
        self.clock.advance(1)
        self.assertEqual(self.queued(waiting).state, EntryState.DEFERRED)
        # One retry time for the attempt, shared by its recipients.
        self.assertEqual(len(drawn), 1)

    def test_missing_transport_defers_with_reason(self) -> None:
        queue_id = self.enqueue("sender@example.org", "a@elsewhere.net")
        self.runner()
        self.clock.advance(0)
        entry = self.queued(queue_id)
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertIn(NO_TRANSPORT, entry.reason)
        # First retry after 5 minutes, ±10 %.
        self.assertTrue(START + 270 <= entry.next_attempt <= START + 330)
        self.assertEqual(entry.attempts, 1)
        (recipient,) = entry.recipients
        self.assertEqual((recipient.state, recipient.attempts), (RecipientState.PENDING, 1))
        self.assertEqual(recipient.next_attempt, entry.next_attempt)

    def test_wake_delivers_new_mail_at_once(self) -> None:
        runner = self.runner(poll_interval=60)
        self.clock.advance(0)
        self.enqueue("sender@example.org", "a@example.com")
        runner.wake()
        self.clock.advance(0)
        self.assertEqual(len(self.transport.deliveries), 1)

    def test_store_changes_wake_the_runner(self) -> None:
        """An operator's flush in the store wakes the runner through notify_on_change."""
        self.transport.outcome = scripted({"a@example.com": always(
            DeliveryStatus.TRANSIENT, LATER)})
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner(poll_interval=3600)
        self.clock.advance(0)
        self.transport.outcome = None
        self.clock.advance(1)
        self.successResultOf(self.store.flush())
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))

    def test_transient_failure_is_retried(self) -> None:
        failures = [True]

        def outcome(recipient: Mailbox) -> RecipientResult:
            if failures.pop() if failures else False:
                return RecipientResult(recipient, DeliveryStatus.TRANSIENT,
                                       Reply(451, "4.2.0", "try later"))
            return RecipientResult(recipient, DeliveryStatus.DELIVERED, OK)

        self.transport.outcome = outcome
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertEqual(self.queued(queue_id).state, EntryState.DEFERRED)
        self.run_for(400)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(len(self.transport.deliveries), 2)
        self.assertEqual(self.dsns(), [])

    def test_retries_follow_the_schedule(self) -> None:
        """Each retry comes after the schedule's interval for it, ±10 %; the last repeats."""
        times: list[float] = []

        def outcome(recipient: Mailbox) -> RecipientResult:
            times.append(self.clock.seconds())
            return RecipientResult(recipient, DeliveryStatus.TRANSIENT, LATER)

        self.transport.outcome = outcome
        self.enqueue("sender@example.org", "a@example.com")
        self.runner(schedule=RetrySchedule.parse("5m,10m,20m"), delay_warning=0)
        self.run_for(3 * 3600)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        expected = [300, 600, 1200, 1200, 1200, 1200]
        self.assertGreaterEqual(len(gaps), len(expected))
        for gap, base in zip(gaps, expected, strict=False):
            # The runner polls once a second.
            self.assertTrue(base * 0.9 <= gap <= base * 1.1 + 1, (gap, base))

    def test_routing_error_is_transient(self) -> None:
        @implementer(IRouter)
        class BrokenRouter:
            broken = True

            def route(self, envelope: Any, recipient: Mailbox) -> Any:
                if self.broken:
                    return fail(RuntimeError("the alias table is unreadable"))
                return succeed([(recipient, recipient, Route("local"))])

        router = BrokenRouter()
        self.router = router
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner()
        self.clock.advance(0)
        entry = self.queued(queue_id)
        self.assertEqual(entry.state, EntryState.DEFERRED)
        (recipient,) = entry.recipients
        self.assertEqual(recipient.state, RecipientState.PENDING)
        self.assertEqual(recipient.reply, Reply(451, "4.3.0", "Error in the router"))
        self.assertTrue(any(e.get("log_failure") for e in self.events))
        router.broken = False
        self.run_for(400)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(len(self.transport.deliveries), 1)

    def test_router_raising_is_transient(self) -> None:
        @implementer(IRouter)
        class RaisingRouter:
            def route(self, envelope: Any, recipient: Mailbox) -> Any:
                raise KeyError(recipient)

        self.router = RaisingRouter()
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner()
        self.clock.advance(0)
        (recipient,) = self.queued(queue_id).recipients
        self.assertEqual(recipient.state, RecipientState.PENDING)
        self.assertEqual(self.dsns(), [])

    def test_deleted_during_delivery_stops_quietly(self) -> None:
        def delete(recipient: Mailbox) -> RecipientResult:
            self.successResultOf(self.store.delete(queue_id))
            return RecipientResult(recipient, DeliveryStatus.PERMANENT, BOUNCE)

        self.transport.outcome = delete
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertEqual(self.queue_ids(), [])
        self.assertEqual(self.dsns(), [])
        self.assertFalse(any(e.get("log_failure") for e in self.events))


class FailureNotificationTests(RunnerTestCase):
    def test_permanent_failure_bounces_at_once(self) -> None:
        self.transport.outcome = scripted({"a@example.com": always(
            DeliveryStatus.PERMANENT, BOUNCE, remote="mx.example.com")})
        queue_id = self.enqueue("sender@example.org", "a@example.com", envid="ENV-1")
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(len(self.transport.deliveries), 1)
        dsn = self.only_dsn()
        self.assertEqual(str(dsn.message["To"]), "sender@example.org")
        self.assertIn("MAILER-DAEMON@mx.example.net", str(dsn.message["From"]))
        self.assertIn("mx.example.net", str(dsn.per_message["Reporting-MTA"]))
        self.assertEqual(str(dsn.per_message["Original-Envelope-Id"]).strip(), "ENV-1")
        self.assertEqual(dsn.field("Action"), ["failed"])
        self.assertEqual(dsn.field("Status"), ["5.1.1"])
        self.assertIn("a@example.com", dsn.field("Final-Recipient")[0])
        self.assertIn("mx.example.com", dsn.field("Remote-MTA")[0])
        self.assertIn("550 5.1.1 no such user", dsn.field("Diagnostic-Code")[0])
        # The whole message comes back.
        self.assertEqual(dsn.returned.get_content_type(), "message/rfc822")
        self.assertIn(b"body", dsn.returned.as_bytes())

    def test_rejecting_route_bounces(self) -> None:
        self.enqueue("sender@example.org", "a@broken.example")
        self.runner()
        self.clock.advance(0)
        dsn = self.only_dsn()
        self.assertEqual(dsn.field("Status"), ["5.1.2"])
        self.assertEqual(self.queue_ids(), [])

    def test_expiry_after_max_lifetime(self) -> None:
        replies = iter(Reply(451, "4.4.1", f"no answer, attempt {n}") for n in range(1, 100))
        self.transport.outcome = lambda r: RecipientResult(
            r, DeliveryStatus.TRANSIENT, next(replies), remote="mx.example.com")
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner(max_lifetime=3600, delay_warning=0)
        self.run_for(3590)
        self.assertIsNotNone(self.entry(queue_id))
        self.assertEqual(self.dsns(), [])
        self.run_for(20)
        self.assertIsNone(self.entry(queue_id))
        # Attempts at about 0, 5, 15, 35 minutes, and at the expiry time
        # rather than 67 minutes after the last one.
        self.assertEqual(len(self.transport.deliveries), 5)
        dsn = self.only_dsn()
        self.assertEqual(dsn.field("Action"), ["failed"])
        self.assertEqual(dsn.field("Status"), ["4.4.1"])
        self.assertIn("no answer, attempt 5", dsn.field("Diagnostic-Code")[0])

    def test_one_notification_per_attempt_for_all_its_final_recipients(self) -> None:
        self.transport.outcome = scripted({
            "a@example.com": always(DeliveryStatus.PERMANENT, BOUNCE),
            "b@example.com": always(DeliveryStatus.PERMANENT, Reply(552, "5.2.2", "full")),
            "d@example.com": always(DeliveryStatus.TRANSIENT, LATER),
        })
        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@example.com",
                                "c@example.com", "d@example.com")
        self.runner(delay_warning=0)
        self.clock.advance(0)
        dsn = self.only_dsn()
        self.assertEqual(len(dsn.per_recipient), 2)
        self.assertEqual(dsn.field("Status"), ["5.1.1", "5.2.2"])
        states = [r.state for r in self.queued(queue_id).recipients]
        self.assertEqual(states, [RecipientState.BOUNCED, RecipientState.BOUNCED,
                                  RecipientState.DELIVERED, RecipientState.PENDING])
        # d fails for good later: a second notification, about d alone.
        self.transport.outcome = scripted({
            "d@example.com": always(DeliveryStatus.PERMANENT, Reply(550, "5.7.1", "refused")),
        })
        self.run_for(400)
        self.assertIsNone(self.entry(queue_id))
        dsns = self.dsns()
        self.assertEqual(len(dsns), 2)
        self.assertEqual(len(dsns[1].per_recipient), 1)
        self.assertIn("d@example.com", dsns[1].field("Final-Recipient")[0])
        self.assertEqual(dsns[1].field("Status"), ["5.7.1"])

    def test_expanded_recipient_reports_the_original(self) -> None:
        @implementer(IRouter)
        class ListRouter:
            def route(self, envelope: Any, recipient: Mailbox) -> Any:
                if str(recipient) == "list@example.com":
                    return succeed([(Mailbox.parse(a), recipient, Route("local"))
                                    for a in ("x@example.com", "y@example.com")])
                return succeed([(recipient, recipient, Route("mailbag"))])

        self.router = ListRouter()
        self.transport.outcome = scripted({
            "x@example.com": always(DeliveryStatus.PERMANENT, BOUNCE)})
        queue_id = self.enqueue("sender@example.org", "list@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        dsn = self.only_dsn()
        self.assertIn("x@example.com", dsn.field("Final-Recipient")[0])
        self.assertIn("list@example.com", dsn.field("Original-Recipient")[0])

    def test_orcpt_is_the_original_recipient(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        rcpt = Mailbox.parse("a@example.com")
        self.enqueue("sender@example.org", "a@example.com",
                     dsn=((rcpt, DSNOptions(orcpt="rfc822;alias@example.net")),))
        self.runner()
        self.clock.advance(0)
        self.assertIn("alias@example.net", self.only_dsn().field("Original-Recipient")[0])

    def test_notify_never_gets_nothing(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        rcpt = Mailbox.parse("a@example.com")
        queue_id = self.enqueue("sender@example.org", "a@example.com",
                                dsn=((rcpt, DSNOptions(notify=frozenset({"NEVER"}))),))
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(self.dsns(), [])
        self.assertEqual(self.queue_ids(), [])

    def test_ret_hdrs_returns_the_header_section(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        self.enqueue("sender@example.org", "a@example.com", ret="HDRS",
                     added_headers=("X-Added: yes",))
        self.runner()
        self.clock.advance(0)
        returned = self.only_dsn().returned
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        headers = returned.get_payload(decode=True)
        assert isinstance(headers, bytes)
        self.assertIn(b"X-Added: yes", headers)
        self.assertIn(b"Subject: test", headers)
        self.assertNotIn(b"body", headers)

    def test_large_message_returns_the_header_section(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 60
        self.enqueue("sender@example.org", "a@example.com", message=big)
        self.runner(bounce_size_limit=1000)
        self.clock.advance(0)
        returned = self.only_dsn().returned
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"xxxx", returned.as_bytes())

    def test_notification_is_queued_from_the_null_sender_and_delivered(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        queue_id = self.enqueue("sender@example.org", "a@example.com", smtputf8=True)
        self.runner()
        self.clock.advance(0)
        self.assertEqual(self.queue_ids(), [])
        ((entry, data),) = self.mailbag.messages
        self.assertNotEqual(entry.queue_id, queue_id)
        self.assertEqual(entry.envelope.sender, NULL_PATH)
        self.assertEqual(entry.envelope.recipients, (Mailbox.parse("sender@example.org"),))
        self.assertTrue(entry.envelope.smtputf8)
        options = entry.envelope.dsn_options(Mailbox.parse("sender@example.org"))
        self.assertEqual(options.notify, frozenset({"NEVER"}))
        queued = [e for e in self.events if e.get("notification") == entry.queue_id]
        self.assertEqual(len(queued), 1)
        self.assertEqual(queued[0]["queue_id"], queue_id)
        dsn = DSN.parse(data)
        self.assertIn(queue_id, str(dsn.message["Message-ID"]))
        self.assertEqual(dsn.field("Action"), ["failed"])

    def test_report_owed_when_claimed_is_sent(self) -> None:
        """A crash between recording a bounce and queueing its notification."""
        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@example.com")
        (entry,) = self.successResultOf(self.store.claim(START, 1, 60))
        a, b = entry.recipients
        crashed = attrs.evolve(entry, attempts=1, recipients=(
            attrs.evolve(a, state=RecipientState.BOUNCED, attempts=1, reply=BOUNCE,
                         report="failed"),
            attrs.evolve(b, state=RecipientState.PENDING, attempts=1, reply=LATER),
        ))
        self.successResultOf(self.store.record(crashed))
        self.successResultOf(self.store.reschedule(queue_id, START, "crash"))
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        dsn = self.only_dsn()
        self.assertIn("a@example.com", dsn.field("Final-Recipient")[0])
        self.assertEqual(dsn.field("Status"), ["5.1.1"])
        # b was delivered in the same attempt, and a is not reported twice.
        self.assertEqual(len(self.transport.deliveries), 1)
        self.assertEqual([str(r) for r, _ in self.transport.deliveries[0][1]], ["b@example.com"])

    def test_the_original_is_read_with_the_blocking_runner(self) -> None:
        """The read of the original runs where run_blocking says, and may take its time."""
        reads: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def run_blocking(f: Callable[[], Any]) -> Deferred[Any]:
            waiting: Deferred[Any] = Deferred()
            reads.append((waiting, f))
            return waiting

        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.runner(run_blocking=run_blocking)
        self.clock.advance(0)
        ((waiting, read),) = reads
        (recipient,) = self.queued(queue_id).recipients
        self.assertEqual(recipient.report, "failed")
        self.assertEqual(self.dsns(), [])
        waiting.callback(read())
        self.clock.advance(0)
        self.assertEqual(len(self.dsns()), 1)
        self.assertEqual(self.queue_ids(), [])

    def test_a_notification_that_cannot_be_queued_is_owed(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        real = self.store.open_writer
        broken = [True]

        def open_writer() -> Any:
            if broken.pop() if broken else False:
                raise OSError("disk full")
            return real()

        self.store.open_writer = open_writer
        self.runner()
        self.clock.advance(0)
        (recipient,) = self.queued(queue_id).recipients
        self.assertEqual((recipient.state, recipient.report), (RecipientState.BOUNCED, "failed"))
        self.assertEqual(self.dsns(), [])
        self.run_for(400)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(len(self.dsns()), 1)
        self.assertEqual(len(self.transport.deliveries), 1)


class NullSenderTests(RunnerTestCase):
    def test_no_notification_to_the_null_sender(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        queue_id = self.enqueue("", "a@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        self.assertEqual(self.mailbag.messages, [])
        warned = [e for e in self.events if e.get("failed") == "a@example.com"]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"].name, "warn")

    def test_double_bounce_recipient_gets_the_headers(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        rcpt = Mailbox.parse("a@example.com")
        self.enqueue("", "a@example.com", dsn=((rcpt, DSNOptions(notify=frozenset({"NEVER"}))),))
        self.runner(double_bounce_recipient=Mailbox.parse("postmaster@example.org"))
        self.clock.advance(0)
        ((entry, _),) = self.mailbag.messages
        self.assertEqual(entry.envelope.recipients, (Mailbox.parse("postmaster@example.org"),))
        dsn = self.only_dsn()
        self.assertEqual(str(dsn.message["To"]), "postmaster@example.org")
        self.assertEqual(dsn.field("Action"), ["failed"])
        self.assertEqual(dsn.returned.get_content_type(), "text/rfc822-headers")
        self.assertEqual(self.queue_ids(), [])

    def test_no_double_bounce_about_the_double_bounce_recipient(self) -> None:
        self.transport.outcome = always(DeliveryStatus.PERMANENT, BOUNCE)
        self.enqueue("", "postmaster@example.com")
        self.runner(double_bounce_recipient=Mailbox.parse("postmaster@example.com"))
        self.clock.advance(0)
        self.assertEqual(self.queue_ids(), [])
        self.assertEqual(len(self.transport.deliveries), 1)

    def test_no_bounce_loop(self) -> None:
        """A bounce to a bad sender goes to the postmaster once, and no further."""
        self.enqueue("sender@broken.example", "a@broken.example")
        self.runner(double_bounce_recipient=Mailbox.parse("postmaster@broken.example"))
        self.run_for(10)
        self.assertEqual(self.queue_ids(), [])
        self.assertEqual(self.mailbag.messages, [])
        warned = [e["failed"] for e in self.events if "failed" in e]
        self.assertEqual(warned, ["sender@broken.example", "postmaster@broken.example"])
        queued = [e for e in self.events if "notification" in e]
        self.assertEqual(len(queued), 2)


class SuccessNotificationTests(RunnerTestCase):
    def success(self, handoff: Handoff) -> list[DSN]:
        self.transport.outcome = always(DeliveryStatus.DELIVERED, OK, handoff=handoff)
        rcpt = Mailbox.parse("a@example.com")
        queue_id = self.enqueue("sender@example.org", "a@example.com",
                                dsn=((rcpt, DSNOptions(notify=frozenset({"SUCCESS"}))),))
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        return self.dsns()

    def test_delivered(self) -> None:
        (dsn,) = self.success(Handoff.DELIVERED)
        self.assertEqual(dsn.field("Action"), ["delivered"])
        self.assertEqual(dsn.field("Status"), ["2.0.0"])
        # Only the header section comes back on success.
        self.assertEqual(dsn.returned.get_content_type(), "text/rfc822-headers")

    def test_relayed(self) -> None:
        (dsn,) = self.success(Handoff.RELAYED)
        self.assertEqual(dsn.field("Action"), ["relayed"])

    def test_passed_on_is_left_to_the_next_hop(self) -> None:
        self.assertEqual(self.success(Handoff.PASSED_ON), [])

    def test_no_success_notification_unless_asked(self) -> None:
        self.enqueue("sender@example.org", "a@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertEqual(self.dsns(), [])


class DelayWarningTests(RunnerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.transport.outcome = always(DeliveryStatus.TRANSIENT, LATER,
                                        remote="mx.example.com")

    def test_warned_once(self) -> None:
        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@example.com")
        self.runner(delay_warning=600, max_lifetime=86400)
        self.run_for(599)
        self.assertEqual(self.dsns(), [])
        self.run_for(3 * 3600)
        dsn = self.only_dsn()
        self.assertEqual(dsn.field("Action"), ["delayed", "delayed"])
        self.assertEqual(dsn.field("Status"), ["4.4.1", "4.4.1"])
        self.assertTrue(all(dsn.field("Will-Retry-Until")))
        entry = self.queued(queue_id)
        self.assertTrue(entry.warned)
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertEqual(entry.pending, tuple(Mailbox.parse(a)
                                              for a in ("a@example.com", "b@example.com")))

    def test_only_recipients_that_asked(self) -> None:
        b = Mailbox.parse("b@example.com")
        self.enqueue("sender@example.org", "a@example.com", "b@example.com",
                     dsn=((b, DSNOptions(notify=frozenset({"FAILURE"}))),))
        self.runner(delay_warning=600)
        self.run_for(3600)
        dsn = self.only_dsn()
        self.assertEqual(len(dsn.per_recipient), 1)
        self.assertIn("a@example.com", dsn.field("Final-Recipient")[0])

    def test_no_warning_when_zero(self) -> None:
        self.enqueue("sender@example.org", "a@example.com")
        self.runner(delay_warning=0, max_lifetime=86400)
        self.run_for(6 * 3600)
        self.assertEqual(self.dsns(), [])

    def test_no_warning_to_the_null_sender(self) -> None:
        queue_id = self.enqueue("", "a@example.com")
        self.runner(delay_warning=600,
                    double_bounce_recipient=Mailbox.parse("postmaster@example.org"))
        self.run_for(3600)
        self.assertEqual(self.mailbag.messages, [])
        self.assertTrue(self.queued(queue_id).warned)

    def test_then_failure_after_expiry(self) -> None:
        self.enqueue("sender@example.org", "a@example.com")
        self.runner(delay_warning=600, max_lifetime=7200)
        self.run_for(7300)
        self.assertEqual(self.queue_ids(), [])
        actions = [dsn.field("Action") for dsn in self.dsns()]
        self.assertEqual(actions, [["delayed"], ["failed"]])


class OutcomeEventTests(RunnerTestCase):
    def test_each_recipient_outcome_is_one_event(self) -> None:
        queue_id = self.enqueue("sender@example.org", "a@example.com", "b@remote.example")
        self.runner()
        self.clock.advance(0)
        outcomes = [e for e in self.events if "recipient" in e]
        self.assertEqual(sorted((e["recipient"], e["status"]) for e in outcomes),
                         [("a@example.com", "delivered"), ("b@remote.example", "transient")])
        for event in outcomes:
            self.assertEqual(event["queue_id"], queue_id)
            self.assertEqual(event["sender"], "sender@example.org")
            self.assertIn("reply", event)
            self.assertEqual(event["attempt"], 1)
            # The line operators read.
            self.assertEqual(
                formatEvent(event),
                f"{queue_id}: to=<{event['recipient']}> status={event['status']}"
                f" reply={event['reply']}")

    def test_an_expanded_recipient_names_its_original(self) -> None:
        """
        A router may answer with a list rather than a Deferred; each
        address it expands into has an event of its own, naming the
        envelope's recipient as the original.
        """
        @implementer(IRouter)
        class ListRouter:
            def route(self, envelope: Any, recipient: Mailbox) -> Any:
                if str(recipient) == "list@example.com":
                    return [(Mailbox.parse(a), recipient, Route("mailbag"))
                            for a in ("x@example.com", "y@example.com")]
                return [(recipient, recipient, Route("mailbag"))]

        self.router = ListRouter()
        queue_id = self.enqueue("sender@example.org", "list@example.com", "z@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertIsNone(self.entry(queue_id))
        outcomes = [e for e in self.events if "recipient" in e]
        self.assertEqual(
            sorted((e["recipient"], e["original"], e["status"]) for e in outcomes),
            [("x@example.com", "list@example.com", "delivered"),
             ("y@example.com", "list@example.com", "delivered"),
             ("z@example.com", "z@example.com", "delivered")])


class ReadOriginalTests(SynchronousTestCase):
    def test_whole(self) -> None:
        data, whole = read_original(io.BytesIO(MESSAGE), b"X-A: 1\r\n", True, 1000)
        self.assertEqual((data, whole), (b"X-A: 1\r\n" + MESSAGE, True))

    def test_too_large_for_whole(self) -> None:
        data, whole = read_original(io.BytesIO(MESSAGE), b"", True, 20)
        self.assertEqual((data, whole), (b"Subject: test\r\n", False))

    def test_header_section(self) -> None:
        data, whole = read_original(io.BytesIO(MESSAGE), b"X-A: 1\r\n", False, 1000)
        self.assertEqual((data, whole),
                         (b"X-A: 1\r\nSubject: test\r\nMessage-ID: <m1@example.org>\r\n", False))

    def test_no_header_fields(self) -> None:
        self.assertEqual(read_original(io.BytesIO(b"\r\nbody\r\n"), b"", False, 1000),
                         (b"", False))
        self.assertEqual(read_original(io.BytesIO(b"\r\nbody\r\n"), b"X-A: 1\r\n", False, 1000),
                         (b"X-A: 1\r\n", False))

    def test_header_section_without_body(self) -> None:
        self.assertEqual(read_original(io.BytesIO(b"Subject: x\r\n"), b"", False, 1000),
                         (b"Subject: x\r\n", False))

    def test_long_header_section_is_cut_at_a_line_end(self) -> None:
        headers = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 50) for n in range(1000))
        data, _ = read_original(io.BytesIO(headers + b"\r\nbody"), b"", False, 5000)
        self.assertLessEqual(len(data), 5000)
        self.assertTrue(data.endswith(b"\r\n"))
        self.assertTrue(headers.startswith(data))

    def test_closes_the_file(self) -> None:
        file = io.BytesIO(MESSAGE)
        read_original(file, b"", False, 1000)
        self.assertTrue(file.closed)


class ScheduleTests(SynchronousTestCase):
    def test_last_interval_repeats_with_jitter(self) -> None:
        schedule = RetrySchedule.parse("5m,10m")
        rng = random.Random(7)
        self.assertTrue(270 <= schedule.delay(1, rng) <= 330)
        for attempt in (2, 3, 10):
            self.assertTrue(540 <= schedule.delay(attempt, rng) <= 660)

    def test_next_attempt_never_passes_the_deadline(self) -> None:
        schedule = RetrySchedule.parse("1h")
        rng = random.Random(7)
        self.assertTrue(3240 <= schedule.next_attempt(0, 1, rng) <= 3960)
        self.assertEqual(schedule.next_attempt(0, 1, rng, deadline=600), 600)
        self.assertEqual(schedule.next_attempt(700, 1, rng, deadline=600), 700)

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration("4h"), 14400)
        self.assertEqual(parse_duration("5d"), 432000)
        self.assertRaises(ValueError, parse_duration, "soon")
        self.assertRaises(ValueError, RetrySchedule.parse, "0")

    def test_defaults(self) -> None:
        self.assertEqual(DEFAULT_MAX_LIFETIME, parse_duration("5d"))
        self.assertEqual(DEFAULT_DELAY_WARNING, parse_duration("4h"))
        self.assertEqual(DEFAULT_BOUNCE_SIZE_LIMIT, 50_000)

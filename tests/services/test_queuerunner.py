"""Tests for the queue runner, on a memory store and a fake clock."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.envelope import DeliveryStatus, EntryState, RecipientResult, Route
from mailframe.reply import Reply
from mailframe.services.queuerunner import NO_TRANSPORT, QueueRunner
from mailframe.services.schedule import RetrySchedule, parse_duration
from mailframe.testing import MemoryQueueStore, RecordingTransport, StaticRouter, envelope


def enqueue(store: MemoryQueueStore, *recipients: str) -> str:
    writer = store.open_writer()
    writer.write(b"Subject: test\r\n\r\nbody\r\n")
    return_value: Deferred[str] = writer.commit(envelope("sender@example.org", *recipients))
    return str(return_value.result)


class QueueRunnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryQueueStore(self.clock)
        self.transport = RecordingTransport()
        self.router = StaticRouter({"example.com": Route("local", {"where": "here"})})

    def runner(self, **kwargs: Any) -> QueueRunner:
        runner = QueueRunner(self.store, self.router, {"local": self.transport}, self.clock,
                             random=random.Random(1), **kwargs)
        runner.startService()
        self.addCleanup(runner.stopService)
        return runner

    def test_delivers_and_removes(self) -> None:
        queue_id = enqueue(self.store, "a@example.com", "b@example.com")
        self.runner()
        self.clock.advance(0)
        self.assertEqual(len(self.transport.deliveries), 1)
        entry, recipients, route = self.transport.deliveries[0]
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual([str(r) for r, _ in recipients], ["a@example.com", "b@example.com"])
        self.assertEqual(route.arguments, {"where": "here"})
        self.assertIsNone(self.successResultOf(self.store.get(queue_id)))

    def test_missing_transport_defers_with_reason(self) -> None:
        queue_id = enqueue(self.store, "a@elsewhere.org")
        self.runner()
        self.clock.advance(0)
        entry = self.successResultOf(self.store.get(queue_id))
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertIn(NO_TRANSPORT, entry.reason)
        # First retry after 5 minutes, ±10 %.
        self.assertTrue(1_000_000 + 270 <= entry.next_attempt <= 1_000_000 + 330)

    def test_wake_delivers_new_mail_at_once(self) -> None:
        runner = self.runner(poll_interval=60)
        self.clock.advance(0)
        enqueue(self.store, "a@example.com")
        runner.wake()
        self.clock.advance(0)
        self.assertEqual(len(self.transport.deliveries), 1)

    def test_transient_failure_is_retried(self) -> None:
        failures = [True]

        def outcome(recipient: Mailbox) -> RecipientResult:
            if failures.pop() if failures else False:
                return RecipientResult(recipient, DeliveryStatus.TRANSIENT,
                                       Reply(451, "4.2.0", "try later"))
            return RecipientResult(recipient, DeliveryStatus.DELIVERED, Reply(250, "2.0.0", "ok"))

        self.transport.outcome = outcome
        queue_id = enqueue(self.store, "a@example.com")
        self.runner(poll_interval=1)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(self.store.get(queue_id)).state,
                         EntryState.DEFERRED)
        for _ in range(400):
            self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.store.get(queue_id)))
        self.assertEqual(len(self.transport.deliveries), 2)


class ScheduleTests(SynchronousTestCase):
    def test_last_interval_repeats_with_jitter(self) -> None:
        schedule = RetrySchedule.parse("5m,10m")
        rng = random.Random(7)
        self.assertTrue(270 <= schedule.delay(1, rng) <= 330)
        for attempt in (2, 3, 10):
            self.assertTrue(540 <= schedule.delay(attempt, rng) <= 660)

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration("4h"), 14400)
        self.assertEqual(parse_duration("5d"), 432000)
        self.assertRaises(ValueError, parse_duration, "soon")
        self.assertRaises(ValueError, RetrySchedule.parse, "0")


class OutcomeEventTests(SynchronousTestCase):
    def test_each_recipient_outcome_is_one_event(self) -> None:
        from twisted.logger import Logger

        clock = Clock()
        store = MemoryQueueStore(clock)
        events: list[dict[str, Any]] = []
        queue_id = enqueue(store, "a@example.com", "b@remote.example")
        runner = QueueRunner(store, StaticRouter({"example.com": Route("local")}),
                             {"local": RecordingTransport()}, clock, random=random.Random(1))
        runner.log = Logger(observer=events.append)
        runner.startService()
        clock.advance(0)
        outcomes = [e for e in events if "recipient" in e]
        self.assertEqual(sorted((e["recipient"], e["status"]) for e in outcomes),
                         [("a@example.com", "delivered"), ("b@remote.example", "transient")])
        for event in outcomes:
            self.assertEqual(event["queue_id"], queue_id)
            self.assertEqual(event["sender"], "sender@example.org")
            self.assertIn("reply", event)
        runner.stopService()

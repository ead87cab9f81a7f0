"""
The queue runner on a store shared with other runners (the postgres store):
a lease taken over during an attempt, and a store that is unavailable, are
each one logged line, not a failure with a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult
from mailframe.stores import LeaseLost, StoreUnavailable
from tests.services.test_queuerunner import RunnerTestCase


class SharedStoreTests(RunnerTestCase):
    def fail_records(self, error: Exception) -> list[str]:
        recorded: list[str] = []

        def record(entry: QueueEntry) -> Deferred[None]:
            recorded.append(entry.queue_id)
            return defer.fail(error)

        self.store.record = record  # type: ignore[method-assign]
        return recorded

    def delivered(self, recipient: Any) -> RecipientResult:
        from mailframe.reply import Reply

        return RecipientResult(recipient, DeliveryStatus.DELIVERED, Reply(250, "2.0.0", "OK"))

    def test_lease_taken_over_during_the_attempt(self) -> None:
        self.transport.outcome = self.delivered
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        recorded = self.fail_records(LeaseLost(queue_id))
        self.runner()
        self.clock.advance(0)
        self.assertEqual(recorded, [queue_id])
        self.assertFalse(any(e.get("log_failure") for e in self.events))
        warnings = [e for e in self.events if "lease ran out" in e.get("log_format", "")]
        self.assertEqual([e["queue_id"] for e in warnings], [queue_id])

    def test_store_unavailable_when_recording(self) -> None:
        self.transport.outcome = self.delivered
        queue_id = self.enqueue("sender@example.org", "a@example.com")
        self.fail_records(StoreUnavailable("the database is down"))
        self.runner()
        self.clock.advance(0)
        self.assertFalse(any(e.get("log_failure") for e in self.events))
        self.assertTrue(any(e.get("error") == "the database is down" for e in self.events))
        self.assertIsNotNone(self.entry(queue_id))

    def test_claims_failing_are_retried_at_the_next_poll(self) -> None:
        claims: list[float] = []

        def claim(now: float, limit: int, lease: float) -> Deferred[list[QueueEntry]]:
            claims.append(now)
            return defer.fail(StoreUnavailable("the database is down"))

        self.store.claim = claim  # type: ignore[method-assign]
        self.runner(poll_interval=5)
        self.clock.advance(0)
        self.clock.advance(5)
        self.assertEqual(len(claims), 2)
        self.assertFalse(any(e.get("log_failure") for e in self.events))
        failed = [e for e in self.events if e.get("log_format", "").startswith("Queue pass failed")]
        self.assertEqual(len(failed), 2)

"""
Renewal of the lease before the message data and before its end: a node
whose lease is lost stops before the final dot, in the SMTP transport (with
DATA and with BDAT) and in the LMTP transport, on the memory store.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.envelope import EntryState, QueueEntry
from mailframe.stores import LeaseLost
from mailframe.testing import MemoryQueueStore
from tests.transports import test_lmtp, test_smtp


class CountingStore(MemoryQueueStore):
    """A memory store that counts renewals, which fail from the *fail_from*-th on."""

    def __init__(self, clock: Clock, fail_from: int | None = None) -> None:
        super().__init__(clock)
        self.renewals = 0
        self.fail_from = fail_from

    def renew(self, queue_id: str, lease: float) -> Deferred[None]:
        self.renewals += 1
        if self.fail_from is not None and self.renewals >= self.fail_from:
            return defer.fail(LeaseLost(queue_id))
        return super().renew(queue_id, lease)


def _claimed(harness: Any, store: CountingStore, clock: Clock, *recipients: str) -> QueueEntry:
    harness.store = store
    harness.transport.store = store
    entry: QueueEntry = harness.queue(*recipients)
    claimed = harness.test.successResultOf(store.claim(clock.seconds(), 10, 60))
    assert [e.queue_id for e in claimed] == [entry.queue_id]
    assert claimed[0].state is EntryState.ACTIVE
    return claimed[0]  # type: ignore[no-any-return]


class SMTPRenewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def harness(self, fail_from: int | None, **settings: Any) -> tuple[Any, Any, CountingStore]:
        harness = test_smtp.Harness(self, tls="none", **settings)
        server = test_smtp.MailServer(harness.network, "192.0.2.1")
        store = CountingStore(self.clock, fail_from)
        return harness, server, store

    def test_renewed_twice_and_delivered(self) -> None:
        harness, server, store = self.harness(None)
        entry = _claimed(harness, store, self.clock, "bob@example.org")
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("delivered", 250)])
        self.assertEqual(store.renewals, 2)
        self.assertEqual(len(server.messages()), 1)

    def test_lease_lost_before_the_data(self) -> None:
        harness, server, store = self.harness(1)
        entry = _claimed(harness, store, self.clock, "bob@example.org")
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("transient", 451)])
        self.assertIn("lease", results[0].reply.text[0])
        self.assertEqual(server.messages(), [])

    def test_lease_lost_before_the_final_dot(self) -> None:
        harness, server, store = self.harness(2)
        entry = _claimed(harness, store, self.clock, "bob@example.org", "carol@example.org")
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("transient", 451), ("transient", 451)])
        self.assertEqual(store.renewals, 2)
        self.assertEqual(server.messages(), [])

    def test_lease_lost_before_bdat_last(self) -> None:
        harness, server, store = self.harness(2, chunking=True)
        entry = _claimed(harness, store, self.clock, "bob@example.org")
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("transient", 451)])
        self.assertEqual(store.renewals, 2)
        self.assertEqual(server.messages(), [])

    def test_expired_lease_of_the_memory_store(self) -> None:
        """The memory store's own renew fails once the lease has run out."""
        harness, server, store = self.harness(None)
        entry = _claimed(harness, store, self.clock, "bob@example.org")
        self.clock.advance(61)
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("transient", 451)])
        self.assertEqual(server.messages(), [])

    def test_an_entry_not_claimed_has_no_lease_to_renew(self) -> None:
        harness, server, store = self.harness(1)
        harness.store = store
        harness.transport.store = store
        entry = harness.queue("bob@example.org")
        results = harness.deliver(entry, test_smtp.MX)
        self.assertEqual(test_smtp.codes(results), [("delivered", 250)])
        self.assertEqual(store.renewals, 0)
        self.assertEqual(len(server.messages()), 1)


class LMTPRenewTests(SynchronousTestCase):
    def test_lease_lost_before_the_final_dot(self) -> None:
        clock = Clock()
        harness = test_lmtp.Harness(self)
        store = CountingStore(clock, 2)
        entry = _claimed(harness, store, clock)
        results = harness.deliver(entry)
        self.assertEqual(test_lmtp.codes(results), [("transient", 451), ("transient", 451)])
        self.assertEqual(harness.peer.messages, [])

    def test_renewed_and_delivered(self) -> None:
        clock = Clock()
        harness = test_lmtp.Harness(self)
        store = CountingStore(clock)
        entry = _claimed(harness, store, clock)
        results = harness.deliver(entry)
        self.assertEqual(test_lmtp.codes(results), [("delivered", 250), ("delivered", 250)])
        self.assertEqual(store.renewals, 2)
        self.assertEqual(len(harness.peer.messages), 1)

"""The memory store: the contract, and the knobs that tests use."""

from __future__ import annotations

import random

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.envelope import DSNOptions, EntryState, QueuedRecipient, RecipientState
from mailframe.interfaces import IQueueStore
from mailframe.reply import Reply
from mailframe.stores import LeaseLost, MemoryQueueStore
from mailframe.testing._fakes import envelope
from mailframe.testing._store_contract import QueueStoreContract

LATER = Reply(451, "4.4.1", "later")


class MemoryStoreContractTests(QueueStoreContract, TestCase):
    def make_store(self) -> MemoryQueueStore:
        return MemoryQueueStore(Clock())


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryQueueStore(self.clock, random.Random(3), high_water=1000)

    def commit(self, data: bytes = b"Subject: x\r\n\r\nbody\r\n", **fields: object) -> str:
        writer = self.store.open_writer()
        writer.write(data)
        env = envelope("sender@example.org", "alice@example.com", "bob@example.com", **fields)
        return self.successResultOf(writer.commit(env))

    def claim(self, limit: int = 10) -> list[str]:
        claimed = self.successResultOf(self.store.claim(self.clock.seconds(), limit, 60))
        return [e.queue_id for e in claimed]

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IQueueStore, self.store))

    def test_commit_fires_at_once(self) -> None:
        queue_id = self.commit()
        entry = self.successResultOf(self.store.get(queue_id))
        self.assertEqual(entry.next_attempt, 1000)

    def test_seeded_ids(self) -> None:
        other = MemoryQueueStore(self.clock, random.Random(3))
        self.assertEqual(self.store.open_writer().queue_id, other.open_writer().queue_id)

    def test_paused_writes_pause_the_producer(self) -> None:
        self.store.paused_writes = True
        writer = self.store.open_writer()
        producer = Producer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * 600)
        self.assertEqual(producer.calls, [])
        writer.write(b"b" * 600)
        self.assertEqual(producer.calls, ["pause"])
        self.assertTrue(writer.paused)
        writer.write(b"c" * 600)
        self.assertEqual(producer.calls, ["pause"])
        self.store.drain_writes()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertFalse(writer.paused)
        queue_id = self.successResultOf(writer.commit(envelope()))
        message = self.successResultOf(self.store.open_message(queue_id)).read()
        self.assertEqual(message, b"a" * 600 + b"b" * 600 + b"c" * 600)

    def test_commit_drains_held_writes(self) -> None:
        self.store.paused_writes = True
        writer = self.store.open_writer()
        producer = Producer()
        writer.registerProducer(producer, True)
        writer.write(b"x" * 2000)
        queue_id = self.successResultOf(writer.commit(envelope()))
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(self.successResultOf(self.store.get(queue_id)).size, 2000)

    def test_abort_resumes(self) -> None:
        self.store.paused_writes = True
        writer = self.store.open_writer()
        producer = Producer()
        writer.registerProducer(producer, True)
        writer.write(b"x" * 2000)
        writer.abort()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_pull_producer_is_asked_for_more(self) -> None:
        writer = self.store.open_writer()
        producer = Producer()
        writer.registerProducer(producer, False)
        self.assertEqual(producer.calls, [])
        self.clock.advance(0)
        self.assertEqual(producer.calls, ["resume"])
        writer.write(b"chunk")
        self.clock.advance(0)
        self.assertEqual(producer.calls, ["resume", "resume"])
        writer.unregisterProducer()
        writer.write(b"last")
        self.clock.advance(0)
        self.assertEqual(producer.calls, ["resume", "resume"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pull_producer_waits_while_full(self) -> None:
        self.store.paused_writes = True
        writer = self.store.open_writer()
        producer = Producer()
        writer.registerProducer(producer, False)
        self.clock.advance(0)
        writer.write(b"x" * 2000)
        self.clock.advance(0)
        self.assertEqual(producer.calls, ["resume"])
        self.store.drain_writes()
        self.clock.advance(0)
        self.assertEqual(producer.calls, ["resume", "resume"])

    def test_second_producer_refused(self) -> None:
        writer = self.store.open_writer()
        writer.registerProducer(Producer(), True)
        self.assertRaises(RuntimeError, writer.registerProducer, Producer(), True)

    def test_write_after_commit_refused(self) -> None:
        writer = self.store.open_writer()
        self.successResultOf(writer.commit(envelope()))
        self.assertRaises(RuntimeError, writer.write, b"late")
        self.failureResultOf(writer.commit(envelope()), RuntimeError)
        writer.abort()
        self.assertEqual(len(self.successResultOf(self.store.list())), 1)

    def test_lease_renewal_follows_the_clock(self) -> None:
        queue_id = self.commit()
        self.successResultOf(self.store.claim(self.clock.seconds(), 10, 60))
        self.clock.advance(59)
        self.successResultOf(self.store.renew(queue_id, 60))
        self.clock.advance(59)
        self.successResultOf(self.store.renew(queue_id, 60))
        self.clock.advance(61)
        self.failureResultOf(self.store.renew(queue_id, 60), LeaseLost)

    def test_recover_returns_claimed_entries(self) -> None:
        queue_id = self.commit()
        self.successResultOf(self.store.claim(self.clock.seconds(), 10, 600))
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(self.store.recover()), 1)
        entry = self.successResultOf(self.store.get(queue_id))
        self.assertEqual(entry.state, EntryState.DEFERRED)
        claimed = self.successResultOf(self.store.claim(self.clock.seconds(), 10, 600))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    def test_capacity(self) -> None:
        store = MemoryQueueStore(self.clock, capacity=100)
        self.assertTrue(store.has_room(100))
        writer = store.open_writer()
        writer.write(b"x" * 60)
        self.successResultOf(writer.commit(envelope()))
        self.assertTrue(store.has_room(40))
        self.assertFalse(store.has_room(41))
        self.assertTrue(self.store.has_room(10**12))

    def test_format_2_fields_survive(self) -> None:
        """The envelope's DSN parameters, and each recipient's record."""
        alice = Mailbox("alice", "example.com")
        dsn = ((alice, DSNOptions(frozenset({"SUCCESS"}), "rfc822;alice@example.com")),)
        queue_id = self.commit(ret="FULL", envid="abc", dsn=dsn)
        [entry] = self.successResultOf(self.store.claim(self.clock.seconds(), 10, 60))
        self.assertEqual((entry.envelope.ret, entry.envelope.envid, entry.envelope.dsn),
                         ("FULL", "abc", dsn))
        recipients = (
            QueuedRecipient(alice, RecipientState.DELIVERED, 1, Reply(250, "2.0.0", "OK"),
                            "mx.example.com", 0.0, "delivered"),
            QueuedRecipient(entry.recipients[1].mailbox, RecipientState.PENDING, 1, LATER,
                            "mx.example.net", 1600.0),
        )
        self.successResultOf(self.store.record(
            attrs.evolve(entry, recipients=recipients, attempts=1, warned=True)))
        stored = self.successResultOf(self.store.get(queue_id))
        self.assertEqual((stored.recipients, stored.attempts, stored.warned),
                         (recipients, 1, True))
        self.assertFalse(stored.done)

    def test_record_takes_only_the_delivery_state(self) -> None:
        """Its envelope, state, due time, reason and size are the store's."""
        queue_id = self.commit()
        [entry] = self.successResultOf(self.store.claim(self.clock.seconds(), 10, 60))
        changed = attrs.evolve(
            entry,
            envelope=attrs.evolve(entry.envelope, envid="forged"),
            state=EntryState.HOLD,
            next_attempt=1e12,
            reason="not mine",
            size=1,
            attempts=3,
        )
        self.successResultOf(self.store.record(changed))
        stored = self.successResultOf(self.store.get(queue_id))
        self.assertEqual(stored, attrs.evolve(entry, attempts=3))

    def test_renewed_lease_runs_out(self) -> None:
        queue_id = self.commit()
        self.assertEqual(self.claim(), [queue_id])
        self.clock.advance(50)
        self.successResultOf(self.store.renew(queue_id, 60))
        self.clock.advance(30)
        self.assertEqual(self.claim(), [])
        self.clock.advance(30)
        self.assertEqual(self.claim(), [queue_id])

    def test_claims_of_one_alternate(self) -> None:
        old = [self.commit() for _ in range(3)]
        self.claim()
        for queue_id in old:
            self.successResultOf(self.store.reschedule(queue_id, self.clock.seconds(), "later"))
        new = [self.commit() for _ in range(3)]
        taken = [self.claim(1)[0] for _ in range(6)]
        # Each claim of one takes from the other side than the last.
        sides = [queue_id in new for queue_id in taken]
        self.assertEqual(sides, [sides[0], not sides[0]] * 3)
        self.assertEqual([q for q in taken if q in new], new)
        self.assertEqual(sorted(q for q in taken if q in old), sorted(old))

    def test_notify_on_change(self) -> None:
        calls: list[None] = []
        self.store.notify_on_change(lambda: calls.append(None))
        queue_id = self.commit()
        self.successResultOf(self.store.hold(queue_id, "operator"))
        self.assertEqual(calls, [])
        self.successResultOf(self.store.release(queue_id))
        self.assertEqual(len(calls), 1)
        self.successResultOf(self.store.requeue(queue_id))
        self.successResultOf(self.store.flush())
        self.assertEqual(len(calls), 3)
        self.successResultOf(self.store.delete(queue_id))
        self.assertEqual(len(calls), 3)

    def test_recover_keeps_the_history(self) -> None:
        queue_id = self.commit()
        [entry] = self.successResultOf(self.store.claim(self.clock.seconds(), 10, 600))
        pending = tuple(attrs.evolve(r, attempts=1, reply=LATER) for r in entry.recipients)
        self.successResultOf(self.store.record(attrs.evolve(entry, recipients=pending)))
        self.successResultOf(self.store.recover())
        stored = self.successResultOf(self.store.get(queue_id))
        self.assertEqual((stored.state, stored.recipients), (EntryState.DEFERRED, pending))

    def test_stats_oldest_is_the_earliest_arrival(self) -> None:
        for received_at in (500.0, 200.0, 900.0):
            self.commit(received_at=received_at)
        stats = self.successResultOf(self.store.stats())
        self.assertEqual((stats[EntryState.INCOMING], stats.oldest), (3, 200.0))

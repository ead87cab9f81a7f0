"""The memory store: the contract, and the knobs that tests use."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailframe.envelope import EntryState
from mailframe.interfaces import IQueueStore
from mailframe.stores import LeaseLost, MemoryQueueStore
from mailframe.testing._fakes import envelope
from mailframe.testing._store_contract import QueueStoreContract


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

    def commit(self, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> str:
        writer = self.store.open_writer()
        writer.write(data)
        return self.successResultOf(writer.commit(envelope()))

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

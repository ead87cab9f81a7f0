"""The discard store: accepts every message and keeps none, for benchmarks."""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.envelope import EntryState
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores import NoSuchEntry
from mailframe.stores.discard import DiscardQueueStore, discard_maker
from mailframe.testing import envelope


class DiscardStoreTests(SynchronousTestCase):
    def test_commits_at_once_and_keeps_nothing(self) -> None:
        store = DiscardQueueStore(Clock())
        self.assertTrue(verifyObject(IQueueStore, store))
        self.assertEqual(self.successResultOf(store.recover()), 0)
        writer = store.open_writer()
        self.assertTrue(verifyObject(IQueueWriter, writer))
        writer.write(b"Subject: x\r\n\r\nbody\r\n")
        queue_id = self.successResultOf(writer.commit(envelope("a@example.org", "b@example.com")))
        self.assertEqual(queue_id, writer.queue_id)
        self.assertEqual(store.committed, 1)
        self.assertEqual(self.successResultOf(store.list()), [])
        self.assertIsNone(self.successResultOf(store.get(queue_id)))
        self.assertEqual(self.successResultOf(store.claim(0, 10, 60)), [])
        self.assertEqual(self.successResultOf(store.stats())[EntryState.INCOMING], 0)
        self.failureResultOf(store.open_message(queue_id), NoSuchEntry)
        self.failureResultOf(store.delete(queue_id), NoSuchEntry)

    def test_refuses_an_empty_envelope_like_any_store(self) -> None:
        writer = DiscardQueueStore(Clock()).open_writer()
        empty = attrs.evolve(envelope("a@example.org"), recipients=())
        self.failureResultOf(writer.commit(empty), ValueError)

    def test_is_not_durable(self) -> None:
        self.assertFalse(discard_maker.durable)
        self.assertEqual((discard_maker.kind, discard_maker.name), ("store", "discard"))

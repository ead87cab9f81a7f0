"""
The contract suite of :class:`~mailframe.interfaces.IQueueStore`: every queue
store, built in or from a plugin, runs it.

Combine :class:`QueueStoreContract` with
:class:`twisted.trial.unittest.TestCase` and supply ``make_store()``::

    class MyStoreTests(QueueStoreContract, TestCase):
        def make_store(self):
            store = MyStore(...)
            return store.recover().addCallback(lambda _: store)

The suite uses times far in the future (:attr:`QueueStoreContract.now`),
so that it works the same whether the store's clock is real or fake.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.envelope import (
    ClientInfo,
    DeliveryStatus,
    EntryState,
    Envelope,
    QueueEntry,
    RecipientResult,
    RecipientState,
)
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.reply import Reply

__all__ = ["QueueStoreContract"]

_Test = Generator[Deferred[Any], Any, None]
_OK = Reply(250, "2.0.0", "OK")
_LATER = Reply(451, "4.4.1", "try again later")
_NEVER = Reply(550, "5.1.1", "no such user")
_STATUS_REPLY = {
    DeliveryStatus.DELIVERED: _OK,
    DeliveryStatus.TRANSIENT: _LATER,
    DeliveryStatus.PERMANENT: _NEVER,
}
ALICE = Mailbox("alice", "example.com")
BOB = Mailbox("bob", "example.net")
#: Bytes a store must keep exactly: CRLF and bare LF, a lone dot, NUL and
#: 8-bit octets, and more than one 64 KiB chunk.
MESSAGE = (
    b"Received: from client.example\r\nSubject: test\r\n\r\n.\r\n..dot\nbare LF\r\n"
    + bytes(range(256))
    + b"x" * (150 * 1024)
    + b"\r\n"
)


class QueueStoreContract:
    """
    ``test_*`` methods that every :class:`~mailframe.interfaces.IQueueStore`
    passes. Needs ``make_store()``, returning a recovered, empty store or a
    Deferred firing with one.

    Unknown queue ids fail with :class:`KeyError` (or a subclass); a lease
    that was lost, or never taken, fails :meth:`renew` with some exception.
    """

    # Supplied by the unittest.TestCase this is combined with.
    assertEqual: Any
    assertIn: Any
    assertIsNone: Any
    assertIsNotNone: Any
    assertTrue: Any
    assertFalse: Any
    assertGreaterEqual: Any
    assertLessEqual: Any
    assertNotEqual: Any
    fail: Any

    #: A time after every time the store's clock gives during a test.
    now = 4_000_000_000.0

    def make_store(self) -> Any:
        raise NotImplementedError

    def envelope(self, *recipients: Mailbox) -> Envelope:
        """The envelope of the messages the suite commits."""
        return Envelope(
            sender=Mailbox("sender", "example.org"),
            recipients=recipients or (ALICE, BOB),
            size=len(MESSAGE),
            smtputf8=False,
            client=ClientInfo(
                address="192.0.2.7",
                port=40123,
                helo="client.example",
                esmtp=True,
                tls="TLSv1.3",
                authenticated_as=None,
                hostname="client.example",
                listener="mx",
            ),
            received_at=1_700_000_000.25,
        )

    # -- helpers ------------------------------------------------------------

    def _store(self) -> Deferred[Any]:
        return defer.maybeDeferred(self.make_store)

    @inlineCallbacks
    def _commit(
        self, store: Any, message: bytes = MESSAGE, envelope: Envelope | None = None
    ) -> Generator[Deferred[Any], Any, str]:
        writer = store.open_writer()
        for start in range(0, len(message), 4096):
            writer.write(message[start : start + 4096])
        queue_id = yield writer.commit(envelope or self.envelope())
        self.assertEqual(queue_id, writer.queue_id)
        return str(queue_id)

    @inlineCallbacks
    def _read(self, store: Any, queue_id: str) -> Generator[Deferred[Any], Any, bytes]:
        f = yield store.open_message(queue_id)
        try:
            return bytes(f.read())
        finally:
            f.close()

    @inlineCallbacks
    def _fails(self, d: Deferred[Any], kind: type[BaseException]) -> _Test:
        try:
            yield d
        except kind:
            return
        self.fail(f"expected {kind.__name__}")

    def _results(self, *outcomes: tuple[Mailbox, DeliveryStatus]) -> list[RecipientResult]:
        return [RecipientResult(r, status, _STATUS_REPLY[status]) for r, status in outcomes]

    def _states(self, entry: QueueEntry) -> dict[Mailbox, RecipientState]:
        return dict(entry.recipients)

    def _ids(self, entries: Sequence[QueueEntry]) -> list[str]:
        return [e.queue_id for e in entries]

    # -- the contract ---------------------------------------------------------

    @inlineCallbacks
    def test_provides_interfaces(self) -> _Test:
        store = yield self._store()
        self.assertTrue(verifyObject(IQueueStore, store))
        writer = store.open_writer()
        self.assertTrue(verifyObject(IQueueWriter, writer))
        writer.abort()

    @inlineCallbacks
    def test_starts_empty(self) -> _Test:
        store = yield self._store()
        self.assertEqual((yield store.list()), [])
        stats = yield store.stats()
        for state in EntryState:
            self.assertEqual(stats[state], 0)
        self.assertTrue(store.has_room(1024))

    @inlineCallbacks
    def test_queue_ids_are_distinct_strings(self) -> _Test:
        store = yield self._store()
        writers = [store.open_writer() for _ in range(20)]
        ids = [w.queue_id for w in writers]
        for queue_id in ids:
            self.assertTrue(isinstance(queue_id, str) and queue_id)
        self.assertEqual(len(set(ids)), len(ids))
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.INCOMING], 20)
        for writer in writers:
            writer.abort()

    @inlineCallbacks
    def test_commit_then_get(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield store.get(queue_id)
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual(entry.envelope, self.envelope())
        self.assertEqual(entry.state, EntryState.ACTIVE)
        self.assertEqual(
            entry.recipients, ((ALICE, RecipientState.PENDING), (BOB, RecipientState.PENDING))
        )
        self.assertEqual(entry.pending, (ALICE, BOB))
        self.assertEqual(entry.attempts, 0)
        self.assertEqual(entry.size, len(MESSAGE))
        self.assertLessEqual(entry.next_attempt, self.now)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.ACTIVE], 1)
        self.assertEqual(stats[EntryState.INCOMING], 0)

    @inlineCallbacks
    def test_commit_then_list_and_claim(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        self.assertEqual(self._ids((yield store.list())), [queue_id])
        claimed = yield store.claim(self.now, 10, 60)
        self.assertEqual(self._ids(claimed), [queue_id])
        self.assertEqual(claimed[0].envelope, self.envelope())
        self.assertEqual(claimed[0].state, EntryState.ACTIVE)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)

    @inlineCallbacks
    def test_writer_reads_back_what_was_written(self) -> _Test:
        store = yield self._store()
        writer = store.open_writer()
        half = len(MESSAGE) // 2
        writer.write(MESSAGE[:half])
        f = yield writer.open_message()
        try:
            self.assertEqual(f.read(), MESSAGE[:half])
        finally:
            f.close()
        writer.write(MESSAGE[half:])
        queue_id = yield writer.commit(self.envelope())
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)

    @inlineCallbacks
    def test_empty_message(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store, b"")
        self.assertEqual((yield self._read(store, queue_id)), b"")
        self.assertEqual((yield store.get(queue_id)).size, 0)

    @inlineCallbacks
    def test_abort_leaves_nothing(self) -> _Test:
        store = yield self._store()
        writer = store.open_writer()
        writer.write(MESSAGE)
        writer.abort()
        writer.abort()
        writer.write(b"ignored after abort")
        store.open_writer().abort()
        self.assertIsNone((yield store.get(writer.queue_id)))
        self.assertEqual((yield store.list()), [])
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.INCOMING], 0)
        yield self._fails(store.open_message(writer.queue_id), KeyError)

    @inlineCallbacks
    def test_commit_needs_recipients(self) -> _Test:
        store = yield self._store()
        writer = store.open_writer()
        writer.write(b"Subject: nobody\r\n\r\n")
        envelope = Envelope(Mailbox("sender", "example.org"), ())
        yield self._fails(writer.commit(envelope), ValueError)
        writer.abort()
        self.assertEqual((yield store.list()), [])

    @inlineCallbacks
    def test_claim_respects_lease(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        self.assertEqual(self._ids((yield store.claim(self.now, 10, 60))), [queue_id])
        self.assertEqual((yield store.claim(self.now + 30, 10, 60)), [])
        again = yield store.claim(self.now + 61, 10, 60)
        self.assertEqual(self._ids(again), [queue_id])

    @inlineCallbacks
    def test_claim_limit_and_order(self) -> _Test:
        store = yield self._store()
        ids = []
        for _ in range(3):
            ids.append((yield self._commit(store, b"short\r\n")))
        first = yield store.claim(self.now, 2, 60)
        self.assertEqual(len(first), 2)
        second = yield store.claim(self.now, 2, 60)
        self.assertEqual(len(second), 1)
        self.assertEqual(sorted(self._ids(first) + self._ids(second)), sorted(ids))
        self.assertEqual((yield store.claim(self.now, 0, 60)), [])

    @inlineCallbacks
    def test_renew(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield self._fails(store.renew(queue_id, 60), Exception)
        yield store.claim(self.now, 10, 60)
        yield store.renew(queue_id, 600)
        yield self._fails(store.renew("NO-SUCH-ID", 60), KeyError)

    @inlineCallbacks
    def test_record_all_delivered_removes(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.record(
            queue_id,
            self._results((ALICE, DeliveryStatus.DELIVERED), (BOB, DeliveryStatus.DELIVERED)),
        )
        self.assertIsNone((yield store.get(queue_id)))
        self.assertEqual((yield store.list()), [])
        yield self._fails(store.open_message(queue_id), KeyError)

    @inlineCallbacks
    def test_record_failed_and_delivered_removes(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.record(queue_id, self._results((ALICE, DeliveryStatus.PERMANENT)))
        yield store.record(queue_id, self._results((BOB, DeliveryStatus.DELIVERED)))
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_record_partial_keeps_pending(self) -> _Test:
        store = yield self._store()
        carol = Mailbox("carol", "example.com")
        queue_id = yield self._commit(store, envelope=self.envelope(ALICE, BOB, carol))
        yield store.claim(self.now, 10, 60)
        yield store.record(
            queue_id,
            self._results(
                (ALICE, DeliveryStatus.DELIVERED),
                (BOB, DeliveryStatus.TRANSIENT),
                (carol, DeliveryStatus.PERMANENT),
            ),
        )
        entry = yield store.get(queue_id)
        self.assertEqual(
            self._states(entry),
            {
                ALICE: RecipientState.DELIVERED,
                BOB: RecipientState.PENDING,
                carol: RecipientState.FAILED,
            },
        )
        self.assertEqual(entry.pending, (BOB,))
        self.assertEqual(entry.attempts, 1)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)

    @inlineCallbacks
    def test_record_counts_one_attempt_per_claim(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.record(queue_id, self._results((ALICE, DeliveryStatus.TRANSIENT)))
        yield store.record(queue_id, self._results((BOB, DeliveryStatus.TRANSIENT)))
        self.assertEqual((yield store.get(queue_id)).attempts, 1)
        yield store.reschedule(queue_id, self.now + 100, "later")
        yield store.claim(self.now + 100, 10, 60)
        yield store.record(queue_id, self._results((ALICE, DeliveryStatus.TRANSIENT)))
        self.assertEqual((yield store.get(queue_id)).attempts, 2)

    @inlineCallbacks
    def test_record_uses_original_recipient(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        expanded = Mailbox("alice.smith", "mail.example.com")
        result = RecipientResult(expanded, DeliveryStatus.DELIVERED, _OK, original=ALICE)
        yield store.record(queue_id, [result])
        entry = yield store.get(queue_id)
        self.assertEqual(entry.pending, (BOB,))

    @inlineCallbacks
    def test_record_unknown_recipient_fails(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        stranger = Mailbox("mallory", "example.com")
        yield self._fails(
            store.record(queue_id, self._results((stranger, DeliveryStatus.DELIVERED))),
            ValueError,
        )
        self.assertEqual((yield store.get(queue_id)).pending, (ALICE, BOB))

    @inlineCallbacks
    def test_reschedule_defers_until_when(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.record(queue_id, self._results((ALICE, DeliveryStatus.TRANSIENT)))
        yield store.reschedule(queue_id, self.now + 300, "greylisted")
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertEqual(entry.next_attempt, self.now + 300)
        self.assertEqual(entry.reason, "greylisted")
        # The lease ended: only the time of the next attempt counts now.
        self.assertEqual((yield store.claim(self.now + 299, 10, 600)), [])
        claimed = yield store.claim(self.now + 300, 10, 60)
        self.assertEqual(self._ids(claimed), [queue_id])
        self.assertEqual(claimed[0].state, EntryState.ACTIVE)

    @inlineCallbacks
    def test_hold_and_release(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.hold(queue_id, "suspicious")
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.HOLD)
        self.assertEqual(entry.reason, "suspicious")
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        self.assertEqual((yield store.stats())[EntryState.HOLD], 1)
        yield store.release(queue_id)
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.ACTIVE)
        self.assertEqual(self._ids((yield store.claim(self.now, 10, 60))), [queue_id])

    @inlineCallbacks
    def test_hold_survives_reschedule(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.hold(queue_id, "operator")
        yield store.reschedule(queue_id, self.now + 10, "transient failure")
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.HOLD)
        self.assertEqual((yield store.claim(self.now + 1000, 10, 60)), [])

    @inlineCallbacks
    def test_requeue(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.claim(self.now, 10, 60)
        yield store.record(queue_id, self._results((ALICE, DeliveryStatus.DELIVERED)))
        yield store.reschedule(queue_id, self.now + 3600, "later")
        yield store.requeue(queue_id)
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.ACTIVE)
        self.assertEqual(entry.attempts, 1)
        self.assertEqual(entry.pending, (BOB,))
        self.assertEqual(self._ids((yield store.claim(self.now, 10, 60))), [queue_id])

    @inlineCallbacks
    def test_flush(self) -> _Test:
        store = yield self._store()
        ids = []
        for _ in range(2):
            ids.append((yield self._commit(store, b"flush me\r\n")))
        yield store.claim(self.now, 10, 60)
        for queue_id in ids:
            yield store.reschedule(queue_id, self.now + 3600, "later")
        held = yield self._commit(store, b"held\r\n")
        yield store.hold(held, "operator")
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        yield store.flush()
        self.assertEqual((yield store.stats())[EntryState.DEFERRED], 0)
        claimed = yield store.claim(self.now, 10, 60)
        self.assertEqual(sorted(self._ids(claimed)), sorted(ids))
        self.assertEqual((yield store.get(held)).state, EntryState.HOLD)

    @inlineCallbacks
    def test_delete(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        kept = yield self._commit(store, b"kept\r\n")
        yield store.delete(queue_id)
        self.assertIsNone((yield store.get(queue_id)))
        self.assertEqual(self._ids((yield store.list())), [kept])
        yield self._fails(store.open_message(queue_id), KeyError)
        yield self._fails(store.delete(queue_id), KeyError)

    @inlineCallbacks
    def test_quarantine(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield store.quarantine(queue_id, "cannot parse")
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.QUARANTINE)
        self.assertEqual(entry.reason, "cannot parse")
        self.assertEqual(entry.envelope, self.envelope())
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        listed = yield store.list(state=EntryState.QUARANTINE)
        self.assertEqual(self._ids(listed), [queue_id])
        self.assertEqual((yield store.stats())[EntryState.QUARANTINE], 1)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)
        yield self._fails(store.requeue(queue_id), ValueError)
        yield self._fails(store.release(queue_id), ValueError)
        yield store.delete(queue_id)
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_release_needs_hold(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        yield self._fails(store.release(queue_id), ValueError)

    @inlineCallbacks
    def test_stats(self) -> _Test:
        store = yield self._store()
        ids = []
        for _ in range(4):
            ids.append((yield self._commit(store, b"count me\r\n")))
        yield store.claim(self.now, 1, 60)
        yield store.reschedule(ids[0], self.now + 60, "later")
        yield store.hold(ids[1], "operator")
        yield store.quarantine(ids[2], "broken")
        writer = store.open_writer()
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.DEFERRED], 1)
        self.assertEqual(stats[EntryState.HOLD], 1)
        self.assertEqual(stats[EntryState.QUARANTINE], 1)
        self.assertEqual(stats[EntryState.ACTIVE], 1)
        self.assertEqual(stats[EntryState.INCOMING], 1)
        self.assertEqual(stats[EntryState.DONE], 0)
        writer.abort()

    @inlineCallbacks
    def test_list_pages_with_after(self) -> _Test:
        store = yield self._store()
        ids = []
        for _ in range(5):
            ids.append((yield self._commit(store, b"page\r\n")))
        seen: list[str] = []
        after = None
        while True:
            page = yield store.list(after=after, limit=2)
            if not page:
                break
            self.assertLessEqual(len(page), 2)
            seen.extend(self._ids(page))
            after = page[-1].queue_id
        self.assertEqual(seen, sorted(ids))
        yield store.hold(ids[3], "operator")
        held = yield store.list(state=EntryState.HOLD)
        self.assertEqual(self._ids(held), [ids[3]])
        active = yield store.list(state=EntryState.ACTIVE, after=sorted(ids)[0])
        self.assertEqual(self._ids(active), [i for i in sorted(ids)[1:] if i != ids[3]])

    @inlineCallbacks
    def test_unknown_ids(self) -> _Test:
        store = yield self._store()
        missing = "NO-SUCH-ID"
        self.assertIsNone((yield store.get(missing)))
        for d in [
            store.open_message(missing),
            store.record(missing, self._results((ALICE, DeliveryStatus.DELIVERED))),
            store.reschedule(missing, self.now, "later"),
            store.hold(missing, "operator"),
            store.release(missing),
            store.requeue(missing),
            store.delete(missing),
            store.quarantine(missing, "broken"),
        ]:
            yield self._fails(d, KeyError)

    @inlineCallbacks
    def test_back_pressure_releases(self) -> _Test:
        """A registered producer is never left paused once writes are stored."""
        store = yield self._store()
        writer = store.open_writer()
        producer = _Producer()
        writer.registerProducer(producer, True)
        for start in range(0, len(MESSAGE), 1024):
            writer.write(MESSAGE[start : start + 1024])
        queue_id = yield writer.commit(self.envelope())
        writer.unregisterProducer()
        self.assertFalse(producer.paused)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)


class _Producer:
    """A streaming producer that remembers whether it is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass

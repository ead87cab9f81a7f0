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

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.envelope import (
    ClientInfo,
    DSNOptions,
    EntryState,
    Envelope,
    QueuedRecipient,
    QueueEntry,
    RecipientState,
)
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.reply import Reply

__all__ = ["QueueStoreContract"]

_Test = Generator[Deferred[Any], Any, None]
_OK = Reply(250, "2.0.0", "OK")
_LATER = Reply(451, "4.4.1", "try again later")
_NEVER = Reply(550, "5.1.1", "no such user")
_STATE_REPLY = {
    RecipientState.DELIVERED: _OK,
    RecipientState.PENDING: _LATER,
    RecipientState.BOUNCED: _NEVER,
    RecipientState.EXPIRED: _LATER,
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
            ret="HDRS",
            envid="envelope id 1",
            dsn=((ALICE, DSNOptions(frozenset({"SUCCESS", "FAILURE"}), "rfc822;a@example.com")),),
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

    def _attempted(
        self,
        entry: QueueEntry,
        *outcomes: tuple[Mailbox, RecipientState],
        report: str | None = None,
    ) -> QueueEntry:
        """*entry* after an attempt that gave these recipients these states."""
        states = dict(outcomes)
        recipients = tuple(
            attrs.evolve(
                r,
                state=states[r.mailbox],
                attempts=r.attempts + 1,
                reply=_STATE_REPLY[states[r.mailbox]],
                remote="mx.example.net",
                next_attempt=self.now + 300,
                report=report if states[r.mailbox] is not RecipientState.PENDING else None,
            )
            if r.mailbox in states
            else r
            for r in entry.recipients
        )
        return attrs.evolve(entry, recipients=recipients, attempts=entry.attempts + 1)

    @inlineCallbacks
    def _claim_one(self, store: Any, queue_id: str) -> Generator[Deferred[Any], Any, QueueEntry]:
        claimed = yield store.claim(self.now, 10, 60)
        self.assertEqual(self._ids(claimed), [queue_id])
        return claimed[0]  # type: ignore[no-any-return]

    def _states(self, entry: QueueEntry) -> dict[Mailbox, RecipientState]:
        return {r.mailbox: r.state for r in entry.recipients}

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
        # A message being received is not an entry yet.
        self.assertEqual((yield store.stats())[EntryState.INCOMING], 0)
        self.assertEqual((yield store.list()), [])
        for writer in writers:
            writer.abort()

    @inlineCallbacks
    def test_commit_then_get(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield store.get(queue_id)
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual(entry.envelope, self.envelope())
        self.assertEqual(entry.state, EntryState.INCOMING)
        self.assertEqual(tuple(r.mailbox for r in entry.recipients), (ALICE, BOB))
        for recipient in entry.recipients:
            self.assertEqual(recipient.state, RecipientState.PENDING)
            self.assertEqual(recipient.attempts, 0)
            self.assertIsNone(recipient.reply)
            self.assertIsNone(recipient.report)
        self.assertEqual(entry.pending, (ALICE, BOB))
        self.assertEqual(entry.attempts, 0)
        self.assertFalse(entry.warned)
        self.assertEqual(entry.size, len(MESSAGE))
        self.assertLessEqual(entry.next_attempt, self.now)
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.INCOMING], 1)
        self.assertEqual(stats[EntryState.ACTIVE], 0)
        self.assertGreaterEqual(stats.size, len(MESSAGE))
        # The arrival of the oldest entry, as the store knows it: the
        # envelope's time, or the time the store made the entry.
        self.assertIsNotNone(stats.oldest)
        self.assertLessEqual(stats.oldest, self.now)

    @inlineCallbacks
    def test_commit_into_hold(self) -> _Test:
        store = yield self._store()
        writer = store.open_writer()
        writer.write(MESSAGE)
        queue_id = yield writer.commit(self.envelope(), hold="held by policy")
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.HOLD)
        self.assertEqual(entry.reason, "held by policy")
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        yield store.release(queue_id)
        self.assertEqual(self._ids((yield store.claim(self.now, 10, 60))), [queue_id])

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
    def test_claim_takes_incoming_and_deferred_in_turn(self) -> _Test:
        store = yield self._store()
        old = []
        for _ in range(4):
            old.append((yield self._commit(store, b"old\r\n")))
        yield store.claim(self.now, 10, 60)
        for queue_id in old:
            yield store.reschedule(queue_id, self.now, "later")
        new = []
        for _ in range(4):
            new.append((yield self._commit(store, b"new\r\n")))
        claimed = self._ids((yield store.claim(self.now, 4, 60)))
        self.assertEqual(len([q for q in claimed if q in new]), 2)
        self.assertEqual(len([q for q in claimed if q in old]), 2)

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
        entry = yield self._claim_one(store, queue_id)
        yield store.record(
            self._attempted(
                entry, (ALICE, RecipientState.DELIVERED), (BOB, RecipientState.DELIVERED)
            )
        )
        self.assertIsNone((yield store.get(queue_id)))
        self.assertEqual((yield store.list()), [])
        yield self._fails(store.open_message(queue_id), KeyError)

    @inlineCallbacks
    def test_record_final_states_remove(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield self._claim_one(store, queue_id)
        entry = self._attempted(entry, (ALICE, RecipientState.BOUNCED))
        yield store.record(entry)
        self.assertEqual((yield store.get(queue_id)).pending, (BOB,))
        yield store.record(self._attempted(entry, (BOB, RecipientState.EXPIRED)))
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_record_keeps_entry_while_report_owed(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield self._claim_one(store, queue_id)
        entry = self._attempted(
            entry, (ALICE, RecipientState.BOUNCED), (BOB, RecipientState.DELIVERED),
            report="failed",
        )
        yield store.record(entry)
        kept = yield store.get(queue_id)
        self.assertEqual(kept.pending, ())
        self.assertEqual([r.report for r in kept.recipients], ["failed", "failed"])
        reported = tuple(attrs.evolve(r, report=None) for r in entry.recipients)
        yield store.record(attrs.evolve(entry, recipients=reported))
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_record_stores_each_recipient(self) -> _Test:
        store = yield self._store()
        carol = Mailbox("carol", "example.com")
        queue_id = yield self._commit(store, envelope=self.envelope(ALICE, BOB, carol))
        entry = yield self._claim_one(store, queue_id)
        attempted = self._attempted(
            entry,
            (ALICE, RecipientState.DELIVERED),
            (BOB, RecipientState.PENDING),
            (carol, RecipientState.BOUNCED),
        )
        yield store.record(attrs.evolve(attempted, warned=True))
        stored = yield store.get(queue_id)
        self.assertEqual(
            self._states(stored),
            {
                ALICE: RecipientState.DELIVERED,
                BOB: RecipientState.PENDING,
                carol: RecipientState.BOUNCED,
            },
        )
        self.assertEqual(stored.recipients, attempted.recipients)
        bob = stored.recipients[1]
        self.assertEqual((bob.attempts, bob.reply, bob.remote), (1, _LATER, "mx.example.net"))
        self.assertEqual(bob.next_attempt, self.now + 300)
        self.assertEqual(stored.pending, (BOB,))
        self.assertEqual(stored.attempts, 1)
        self.assertTrue(stored.warned)
        self.assertEqual(stored.envelope, self.envelope(ALICE, BOB, carol))
        self.assertEqual((yield self._read(store, queue_id)), MESSAGE)

    @inlineCallbacks
    def test_record_other_recipients_fails(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield self._claim_one(store, queue_id)
        stranger = QueuedRecipient(Mailbox("mallory", "example.com"))
        wrong = attrs.evolve(entry, recipients=(entry.recipients[0], stranger))
        yield self._fails(store.record(wrong), ValueError)
        self.assertEqual((yield store.get(queue_id)).pending, (ALICE, BOB))

    @inlineCallbacks
    def test_record_after_delete_fails(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield self._claim_one(store, queue_id)
        yield store.delete(queue_id)
        yield self._fails(
            store.record(self._attempted(entry, (ALICE, RecipientState.PENDING))), KeyError
        )
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_reschedule_defers_until_when(self) -> _Test:
        store = yield self._store()
        queue_id = yield self._commit(store)
        entry = yield self._claim_one(store, queue_id)
        yield store.record(self._attempted(entry, (ALICE, RecipientState.PENDING)))
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
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertLessEqual(entry.next_attempt, self.now)
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
        entry = yield self._claim_one(store, queue_id)
        yield store.record(self._attempted(entry, (ALICE, RecipientState.DELIVERED)))
        yield store.reschedule(queue_id, self.now + 3600, "later")
        yield store.requeue(queue_id)
        entry = yield store.get(queue_id)
        self.assertEqual(entry.state, EntryState.DEFERRED)
        self.assertLessEqual(entry.next_attempt, self.now)
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
        woken: list[None] = []
        store.notify_on_change(lambda: woken.append(None))
        yield store.flush()
        self.assertEqual((yield store.stats())[EntryState.DEFERRED], 2)
        self.assertTrue(woken)
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
        self.assertEqual(entry.state, EntryState.CORRUPT)
        self.assertEqual(entry.reason, "cannot parse")
        self.assertEqual(entry.envelope, self.envelope())
        self.assertEqual((yield store.claim(self.now, 10, 60)), [])
        listed = yield store.list(state=EntryState.CORRUPT)
        self.assertEqual(self._ids(listed), [queue_id])
        self.assertEqual((yield store.stats())[EntryState.CORRUPT], 1)
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
        writer.write(b"being received\r\n")
        stats = yield store.stats()
        self.assertEqual(stats[EntryState.DEFERRED], 1)
        self.assertEqual(stats[EntryState.HOLD], 1)
        self.assertEqual(stats[EntryState.CORRUPT], 1)
        self.assertEqual(stats[EntryState.ACTIVE], 0)
        self.assertEqual(stats[EntryState.INCOMING], 1)
        self.assertGreaterEqual(stats.size, 4 * len(b"count me\r\n"))
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
        incoming = yield store.list(state=EntryState.INCOMING, after=sorted(ids)[0])
        self.assertEqual(self._ids(incoming), [i for i in sorted(ids)[1:] if i != ids[3]])

    @inlineCallbacks
    def test_unknown_ids(self) -> _Test:
        store = yield self._store()
        missing = "NO-SUCH-ID"
        self.assertIsNone((yield store.get(missing)))
        for d in [
            store.open_message(missing),
            store.record(QueueEntry.new(missing, self.envelope(), self.now, 0, EntryState.ACTIVE)),
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

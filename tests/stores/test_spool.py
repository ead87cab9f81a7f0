"""
The spool: the contract on a real directory with real threads, and what only
a durable store must do: its directory layout, the order of ``fsync`` and
``rename`` before a commit or a record fires, group commit, back-pressure,
recovery after a crash without reading an envelope, corrupt entries set
aside at claim, the ``mailframe queue`` command's second instance beside a
running server, and no file I/O on the reactor thread.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailframe.address import Mailbox
from mailframe.envelope import EntryState, Envelope, QueueEntry, RecipientState
from mailframe.reply import Reply
from mailframe.stores import EntryStateError, NoSuchEntry, SpoolQueueStore
from mailframe.stores import spool as spool_module
from mailframe.stores._ids import queue_id_time
from mailframe.stores._serialize import entry_from_json
from mailframe.stores.spool import WRITE_CHUNK, _MessageFile, _read_trailer
from mailframe.testing._fakes import envelope
from mailframe.testing._store_contract import QueueStoreContract

_Test = Generator[Deferred[Any], Any, None]
ALICE = Mailbox.parse("alice@example.com")
BOB = Mailbox.parse("bob@example.com")
OK = Reply(250, "2.0.0", "OK")
LATER = Reply(451, "4.4.1", "later")
MESSAGE = b"Subject: test\r\n\r\nHello\r\n"
#: The octets after the entry's JSON at the end of a ``.msg``.
TRAILER_SIZE = 16
STATES = ("incoming", "active", "deferred", "hold", "corrupt")
LAYOUT = ["active", "corrupt", "deferred", "env", "hold", "incoming", "lock", "tmp"]
DELIVERED = RecipientState.DELIVERED
PENDING = RecipientState.PENDING


def two_recipients() -> Envelope:
    return envelope("sender@example.org", "alice@example.com", "bob@example.com")


def attempted(entry: QueueEntry, *outcomes: tuple[Mailbox, RecipientState]) -> QueueEntry:
    """*entry* after an attempt that gave these recipients these states."""
    states = dict(outcomes)
    recipients = tuple(
        attrs.evolve(
            r,
            state=states[r.mailbox],
            attempts=r.attempts + 1,
            reply=OK if states[r.mailbox] is DELIVERED else LATER,
            remote="mx.example.net",
        )
        if r.mailbox in states
        else r
        for r in entry.recipients
    )
    return attrs.evolve(entry, recipients=recipients, attempts=entry.attempts + 1)


def delivered(entry: QueueEntry) -> QueueEntry:
    return attempted(entry, *((r.mailbox, DELIVERED) for r in entry.recipients))


def started_pool(test: TestCase | SynchronousTestCase, threads: int = 4) -> ThreadPool:
    pool = ThreadPool(1, threads, "spool-test")
    pool.start()
    test.addCleanup(pool.stop)
    return pool


def temp_dir(test: TestCase | SynchronousTestCase) -> str:
    """A directory that is removed after *test* (trial's mktemp() is relative to the cwd)."""
    path = tempfile.mkdtemp(prefix="mailframe-spool-")
    test.addCleanup(shutil.rmtree, path, True)
    return os.path.join(path, "spool")


def message_in(path: str) -> bytes:
    """The message of a committed ``.msg`` file, without its trailer."""
    with open(path, "rb") as f:
        data = f.read()
    return data[: len(data) - len(_read_trailer(path)) - TRAILER_SIZE]


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def capture_log(test: TestCase | SynchronousTestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float) -> _Test:
    """Let the real reactor run until *predicate* holds; fail after *timeout* seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout} s")
        yield deferLater(reactor, 0.05, lambda: None)


class SpoolContractTests(QueueStoreContract, TestCase):
    """The contract, with a thread pool of the test's own."""

    def make_store(self) -> Deferred[SpoolQueueStore]:
        pool = started_pool(self)
        store = SpoolQueueStore(temp_dir(self), reactor, threadpool=pool, min_free=0)
        self.addCleanup(store.stop)
        return store.recover().addCallback(lambda _: store)


class SpoolDefaultPoolContractTests(QueueStoreContract, TestCase):
    """The contract, with the reactor's thread pool."""

    def make_store(self) -> Deferred[SpoolQueueStore]:
        store = SpoolQueueStore(temp_dir(self), reactor, min_free=0)
        self.addCleanup(store.stop)
        return store.recover().addCallback(lambda _: store)


class _SpoolFiles:
    """Helpers to look at a spool's files."""

    path: str

    def dir(self, name: str) -> str:
        return os.path.join(self.path, name)

    def file(self, name: str, queue_id: str, suffix: str = ".msg") -> str:
        return os.path.join(self.path, name, queue_id + suffix)

    def trailer(self, name: str, queue_id: str) -> QueueEntry:
        """The entry as committed, from the trailer of its ``.msg``."""
        return entry_from_json(_read_trailer(self.file(name, queue_id)), queue_id)

    def env(self, queue_id: str) -> QueueEntry:
        """The entry as its ``env/<id>.env`` has it."""
        with open(self.file("env", queue_id, ".env"), "rb") as f:
            return entry_from_json(f.read(), queue_id)

    def read(self, name: str, file_name: str) -> bytes:
        with open(os.path.join(self.path, name, file_name), "rb") as f:
            return f.read()

    def write_file(self, name: str, file_name: str, data: bytes) -> None:
        with open(os.path.join(self.path, name, file_name), "wb") as f:
            f.write(data)

    def where(self) -> dict[str, list[str]]:
        """Every state directory that holds something, with what it holds."""
        return {name: listing(self.dir(name)) for name in STATES if listing(self.dir(name))}


class SpoolTests(_SpoolFiles, TestCase):
    """The spool with real threads and a real directory."""

    def setUp(self) -> None:
        self.pool = started_pool(self)
        self.path = temp_dir(self)

    def make(self, **kwargs: Any) -> SpoolQueueStore:
        """A store on the real reactor, with threads of its own unless given a pool."""
        kwargs.setdefault("reactor", reactor)
        kwargs.setdefault("min_free", 0)
        store = SpoolQueueStore(self.path, **kwargs)
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def recovered(self, **kwargs: Any) -> Generator[Deferred[Any], Any, SpoolQueueStore]:
        store = self.make(**kwargs)
        yield store.recover()
        return store

    @inlineCallbacks
    def commit(
        self, store: SpoolQueueStore, data: bytes = MESSAGE, hold: str | None = None
    ) -> Generator[Deferred[Any], Any, str]:
        writer = store.open_writer()
        writer.write(data)
        queue_id = yield writer.commit(two_recipients(), hold=hold)
        return str(queue_id)

    @inlineCallbacks
    def claim(
        self, store: SpoolQueueStore, now: float = 4e9
    ) -> Generator[Deferred[Any], Any, dict[str, QueueEntry]]:
        claimed = yield store.claim(now, 100, 600)
        return {entry.queue_id: entry for entry in claimed}

    # -- layout and lifecycle ----------------------------------------------------

    @inlineCallbacks
    def test_layout_after_commit(self) -> _Test:
        store = yield self.recovered()
        self.assertEqual(listing(self.path), LAYOUT)
        data = b"x" * 200_000 + b"\r\n.\r\n"
        queue_id = yield self.commit(store, data)
        # One file in incoming/: the message, then the entry as committed.
        self.assertEqual(self.where(), {"incoming": [queue_id + ".msg"]})
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(listing(self.dir("env")), [])
        self.assertEqual(message_in(self.file("incoming", queue_id)), data)
        stored = yield store.get(queue_id)
        self.assertEqual(self.trailer("incoming", queue_id), stored)
        self.assertEqual(stored.state, EntryState.INCOMING)
        self.assertEqual(stored.size, len(data))
        # The server's own changes never touch the trigger.
        self.assertNotIn("trigger", listing(self.path))

    @inlineCallbacks
    def test_open_message_gives_the_message_alone(self) -> _Test:
        store = yield self.recovered()
        data = b"Subject: exact\r\n\r\n" + bytes(range(256)) * 1000 + b"\r\n"
        queue_id = yield self.commit(store, data)
        message = yield store.open_message(queue_id)
        try:
            self.assertEqual(message.read(), data)
            self.assertEqual(message.read(), b"")
            self.assertEqual(message.seek(0, os.SEEK_END), len(data))
            message.seek(-2, os.SEEK_END)
            self.assertEqual(message.read(10), b"\r\n")
            message.seek(0)
            self.assertEqual(message.read(16), b"Subject: exact\r\n")
        finally:
            message.close()

    @inlineCallbacks
    def test_commit_into_hold(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store, hold="held by policy")
        self.assertEqual(self.where(), {"hold": [queue_id + ".msg"]})
        on_disk = self.trailer("hold", queue_id)
        self.assertEqual((on_disk.state, on_disk.reason), (EntryState.HOLD, "held by policy"))
        self.assertEqual((yield store.claim(4e9, 10, 60)), [])

    @inlineCallbacks
    def test_a_commit_costs_two_fsyncs(self) -> _Test:
        """The file, and the directory it was renamed into (group commit aside)."""
        store = yield self.recovered()
        before = store.stats_fsyncs, store.stats_dir_fsyncs
        yield self.commit(store)
        self.assertEqual((store.stats_fsyncs - before[0], store.stats_dir_fsyncs - before[1]),
                         (2, 1))

    @inlineCallbacks
    def test_stop_logs_the_fsyncs(self) -> _Test:
        """
        Stopping logs the ``fsync`` calls made since the start, and how many
        were of directories: what the benchmark reads to count group commit.
        """
        store = yield self.recovered()
        yield self.commit(store)
        events = capture_log(self)
        yield store.stop()
        [event] = [e for e in events if "dir_fsyncs" in e]
        self.assertEqual((event["fsyncs"], event["dir_fsyncs"]),
                         (store.stats_fsyncs, store.stats_dir_fsyncs))
        self.assertGreaterEqual(event["fsyncs"], 2)
        self.assertGreaterEqual(event["dir_fsyncs"], 1)

    @inlineCallbacks
    def test_recover_first(self) -> _Test:
        store = self.make()
        self.assertRaises(RuntimeError, store.open_writer)
        yield self._refused(store.claim(4e9, 10, 60))
        yield store.recover()
        store.open_writer().abort()
        yield self._refused(store.recover())

    @inlineCallbacks
    def _refused(self, d: Deferred[Any]) -> _Test:
        try:
            yield d
        except RuntimeError:
            return
        self.fail("expected RuntimeError")

    @inlineCallbacks
    def test_claim_renames_into_active(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        claimed = yield self.claim(store)
        self.assertEqual(list(claimed), [queue_id])
        self.assertEqual(claimed[queue_id].state, EntryState.ACTIVE)
        self.assertEqual(claimed[queue_id].envelope, two_recipients())
        self.assertEqual(self.where(), {"active": [queue_id + ".msg"]})
        message = yield store.open_message(queue_id)
        with message:
            self.assertEqual(message.read(), MESSAGE)

    @inlineCallbacks
    def test_record_writes_the_env_durably(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        before = store.stats_fsyncs, store.stats_dir_fsyncs
        recorded = attempted(entry, (ALICE, DELIVERED), (BOB, PENDING))
        yield store.record(recorded)
        # The .env and env/ itself were fsynced before the record fired.
        self.assertEqual((store.stats_fsyncs - before[0], store.stats_dir_fsyncs - before[1]),
                         (2, 1))
        self.assertEqual(listing(self.dir("env")), [queue_id + ".env"])
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(self.env(queue_id).recipients, recorded.recipients)
        # The trailer keeps the entry as committed; the .env takes precedence.
        self.assertEqual(self.trailer("active", queue_id).pending, (ALICE, BOB))
        self.assertEqual((yield store.get(queue_id)).pending, (BOB,))
        restarted = yield self.recovered()
        stored = yield restarted.get(queue_id)
        self.assertEqual((stored.recipients, stored.attempts), (recorded.recipients, 1))

    @inlineCallbacks
    def test_record_stores_only_the_delivery_state(self) -> _Test:
        """The envelope, state, due time, reason and size of a record are not its to change."""
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        recorded = attempted(entry, (ALICE, DELIVERED))
        forged = attrs.evolve(
            recorded,
            envelope=attrs.evolve(entry.envelope, envid="forged", recipients=(BOB,)),
            state=EntryState.HOLD,
            next_attempt=1.0,
            reason="not mine",
            size=1,
            warned=True,
        )
        yield store.record(forged)
        self.assertEqual(self.env(queue_id), attrs.evolve(recorded, warned=True))
        stored = yield store.get(queue_id)
        self.assertEqual(stored.envelope, two_recipients())
        self.assertEqual((stored.state, stored.size, stored.reason),
                         (EntryState.ACTIVE, len(MESSAGE), ""))

    @inlineCallbacks
    def test_record_by_a_store_that_did_not_claim(self) -> _Test:
        """It checks the recipients against the files, and keeps what they say."""
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        other = self.make()
        wrong = attrs.evolve(entry, recipients=entry.recipients[:1])
        try:
            yield other.record(wrong)
        except ValueError:
            pass
        else:
            self.fail("a record with other recipients was taken")
        self.assertEqual(listing(self.dir("env")), [])
        forged = attrs.evolve(attempted(entry, (BOB, PENDING)), reason="not mine",
                              envelope=attrs.evolve(entry.envelope, envid="forged"))
        yield other.record(forged)
        # (The state in an .env is not read: the directory tells it.)
        stored = attrs.evolve(self.env(queue_id), state=EntryState.ACTIVE)
        self.assertEqual(stored, attempted(entry, (BOB, PENDING)))

    @inlineCallbacks
    def test_done_record_removes_every_file(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        entry = attempted(entry, (ALICE, DELIVERED), (BOB, PENDING))
        yield store.record(entry)
        yield store.reschedule(queue_id, 4e9, "451 4.4.1 later")
        self.assertEqual(listing(self.dir("env")), [queue_id + ".env", queue_id + ".why"])
        entry = (yield self.claim(store))[queue_id]
        yield store.record(delivered(entry))
        self.assertEqual(self.where(), {})
        self.assertEqual(listing(self.dir("env")), [])
        self.assertIsNone((yield store.get(queue_id)))

    @inlineCallbacks
    def test_reschedule_sets_the_modification_time(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        yield store.record(attempted(entry, (ALICE, PENDING)))
        when = 5e9 + 0.25
        yield store.reschedule(queue_id, when, "greylisted")
        self.assertEqual(self.where(), {"deferred": [queue_id + ".msg"]})
        self.assertAlmostEqual(os.stat(self.file("deferred", queue_id)).st_mtime, when, places=5)
        self.assertEqual(self.read("env", queue_id + ".why"), b"greylisted")
        stored = yield store.get(queue_id)
        self.assertEqual((stored.state, stored.reason), (EntryState.DEFERRED, "greylisted"))
        self.assertAlmostEqual(stored.next_attempt, when, places=5)
        self.assertEqual((yield store.claim(when - 1, 10, 60)), [])
        # After a restart, the due time is the file's.
        restarted = yield self.recovered()
        self.assertAlmostEqual((yield restarted.get(queue_id)).next_attempt, when, places=5)
        self.assertEqual((yield restarted.claim(when - 1, 10, 60)), [])
        self.assertEqual(list((yield self.claim(restarted, when))), [queue_id])
        # A reschedule without a reason leaves no stale one behind: the
        # recipients' replies tell why.
        yield restarted.reschedule(queue_id, when, "")
        self.assertEqual(listing(self.dir("env")), [queue_id + ".env"])
        self.assertEqual((yield restarted.get(queue_id)).reason, str(LATER))

    @inlineCallbacks
    def test_reschedule_writes_the_reason_before_the_move(self) -> _Test:
        """
        A reader that finds the entry in ``deferred/`` also finds its
        reason: the ``.why`` is written while the entry is still active.
        """
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = (yield self.claim(store))[queue_id]
        yield store.record(attempted(entry, (ALICE, PENDING)))
        seen: list[bytes | None] = []
        rename = os.rename

        def spying_rename(source: str, target: str) -> None:
            if target == self.file("deferred", queue_id):
                why = os.path.join(self.dir("env"), queue_id + ".why")
                seen.append(self.read("env", queue_id + ".why") if os.path.exists(why) else None)
            rename(source, target)

        self.patch(spool_module.os, "rename", spying_rename)
        yield store.reschedule(queue_id, 5e9, "451 4.4.1 later")
        self.assertEqual(seen, [b"451 4.4.1 later"])

    @inlineCallbacks
    def test_abort_removes_temp_file(self) -> _Test:
        store = yield self.recovered()
        writer = store.open_writer()
        writer.write(b"x" * 300_000)
        yield store.wait_idle()
        self.assertEqual(listing(self.dir("tmp")), [writer.queue_id + ".msg"])
        writer.abort()
        writer.abort()
        yield store.wait_idle()
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(self.where(), {})

    @inlineCallbacks
    def test_quarantine_moves_the_file(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        yield store.quarantine(queue_id, "looks broken")
        self.assertEqual(self.where(), {"corrupt": [queue_id + ".msg"]})
        self.assertEqual(self.read("env", queue_id + ".why"), b"looks broken")
        entry = yield store.get(queue_id)
        self.assertEqual((entry.state, entry.reason), (EntryState.CORRUPT, "looks broken"))
        yield store.quarantine(queue_id, "still broken")
        restarted = yield self.recovered()
        entry = yield restarted.get(queue_id)
        self.assertEqual((entry.state, entry.reason), (EntryState.CORRUPT, "still broken"))
        self.assertEqual(entry.envelope, two_recipients())
        message = yield restarted.open_message(queue_id)
        with message:
            self.assertEqual(message.read(), MESSAGE)
        self.assertEqual((yield restarted.claim(4e9, 10, 60)), [])
        yield restarted.delete(queue_id)
        self.assertEqual(self.where(), {})
        self.assertEqual(listing(self.dir("env")), [])

    # -- recovery ----------------------------------------------------------------

    @inlineCallbacks
    def test_recovery_after_crash(self) -> _Test:
        store = yield self.recovered()
        leased = yield self.commit(store)
        partial = yield self.commit(store)
        later = yield self.commit(store)
        claimed = yield self.claim(store)
        yield store.record(attempted(claimed[partial], (ALICE, DELIVERED)))
        yield store.reschedule(later, 5e9, "451 4.4.1 later")
        fresh = yield self.commit(store)
        held = yield self.commit(store, hold="policy")
        in_flight = store.open_writer()
        in_flight.write(b"y" * (WRITE_CHUNK + 1))
        yield store.wait_idle()
        # What a crash leaves: a message being received, a removal stopped
        # between its unlinks, debris in tmp/, and a file that is not ours.
        self.assertEqual(listing(self.dir("tmp")), [in_flight.queue_id + ".msg"])
        self.write_file("tmp", "REWRITTEN.env", b"{}")
        os.mkdir(os.path.join(self.dir("tmp"), "junk"))
        self.write_file("env", "GONE.env", b"{}")
        self.write_file("env", "GONE.why", b"removed")
        self.write_file("incoming", "README", b"not ours")

        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 5)
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(self.where(), {
            "incoming": sorted([fresh + ".msg", "README"]),
            "deferred": sorted(q + ".msg" for q in (leased, partial, later)),
            "hold": [held + ".msg"],
        })
        self.assertEqual(listing(self.dir("env")), sorted([later + ".why", partial + ".env"]))
        now = reactor.seconds()
        for queue_id in (leased, partial):
            self.assertLessEqual(os.stat(self.file("deferred", queue_id)).st_mtime, now)
            entry = yield restarted.get(queue_id)
            self.assertEqual(entry.state, EntryState.DEFERRED)
            self.assertLessEqual(entry.next_attempt, now)
        self.assertEqual((yield restarted.get(partial)).pending, (BOB,))
        entry = yield restarted.get(later)
        self.assertEqual((entry.state, entry.next_attempt, entry.reason),
                         (EntryState.DEFERRED, 5e9, "451 4.4.1 later"))
        entry = yield restarted.get(held)
        self.assertEqual((entry.state, entry.reason), (EntryState.HOLD, "policy"))
        again = yield self.claim(restarted, now)
        self.assertEqual(sorted(again), sorted([fresh, leased, partial]))
        self.assertEqual(again[partial].pending, (BOB,))
        message = yield restarted.open_message(leased)
        with message:
            self.assertEqual(message.read(), MESSAGE)

    @inlineCallbacks
    def test_recovery_reads_no_envelope(self) -> _Test:
        """
        States and due times come from the directories alone: damage that
        no parser gets past is found at claim, set aside in corrupt/, and
        counted, and the other entries go on.
        """
        store = yield self.recovered()
        good = []
        for _ in range(2):
            good.append((yield self.commit(store)))
        bad = yield self.commit(store)
        deep = yield self.commit(store)
        later = yield self.commit(store)
        yield self.claim(store)
        yield store.reschedule(later, 4e9, "later")
        # bad: its trailer and its .env are both damaged; deep: its trailer
        # is fine, but its .env, which takes precedence, nests too deep to
        # parse; later: deferred, with an .env that is not JSON.
        for queue_id in [*good, bad, deep]:
            yield store.reschedule(queue_id, 1.0, "")
        with open(self.file("deferred", bad), "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"DAMAGED!")
        self.write_file("env", bad + ".env", b"\x00not json")
        self.write_file("env", deep + ".env", b"[" * 100_000 + b"]" * 100_000)
        self.write_file("env", later + ".env", b"{")

        parsed: list[bytes] = []
        real = spool_module.entry_from_json

        def spy(data: bytes, queue_id: str | None = None) -> QueueEntry:
            parsed.append(data)
            return real(data, queue_id)

        self.patch(spool_module, "entry_from_json", spy)
        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 5)
        self.assertEqual(parsed, [])
        self.assertEqual((yield restarted.stats())[EntryState.DEFERRED], 5)

        events = capture_log(self)
        claimed = yield restarted.claim(4e9 - 30, 10, 60)
        self.assertEqual(sorted(e.queue_id for e in claimed), sorted(good))
        self.assertEqual(restarted.stats_corrupt, 2)
        self.assertEqual(listing(self.dir("corrupt")), sorted([bad + ".msg", deep + ".msg"]))
        warnings = [e for e in events if e.get("log_namespace") == "mailframe.stores.spool"
                    and e.get("log_level") is LogLevel.warn]
        self.assertEqual(sorted(e["queue_id"] for e in warnings), sorted([bad, deep]))
        for queue_id in (bad, deep):
            entry = yield restarted.get(queue_id)
            self.assertEqual(entry.state, EntryState.CORRUPT)
            self.assertIn("unreadable", entry.reason)
        self.assertEqual((yield restarted.get(bad)).envelope.recipients, ())
        # Claims go on, and never hand out what is corrupt.
        self.assertEqual((yield restarted.claim(4e9, 10, 60)), [])
        self.assertEqual(restarted.stats_corrupt, 3)
        self.assertIn(later + ".msg", listing(self.dir("corrupt")))
        for entry in claimed:
            yield restarted.record(delivered(entry))
        self.assertEqual(self.where(), {"corrupt": sorted(q + ".msg" for q in (bad, deep, later))})

    @inlineCallbacks
    def test_damaged_trailer_of_a_committed_file(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        kept = yield self.commit(store, b"kept\r\n")
        path = self.file("incoming", queue_id)
        os.truncate(path, os.path.getsize(path) - 3)
        entry = yield store.get(queue_id)
        self.assertEqual((entry.state, entry.envelope.recipients), (EntryState.INCOMING, ()))
        self.assertIn("unreadable", entry.reason)
        self.assertEqual([e.queue_id for e in (yield store.list())], sorted([queue_id, kept]))
        # Where the message ends is not known: it is not handed out for
        # delivery with part of its trailer.
        try:
            yield store.open_message(queue_id)
        except OSError as error:
            self.assertEqual(error.errno, errno.EBADMSG)
        else:
            self.fail("a message without its trailer was opened")
        # A restarted server sets it aside when it claims it; an operator
        # can look at all of the file there.
        restarted = yield self.recovered()
        claimed = yield restarted.claim(4e9, 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [kept])
        self.assertEqual(self.where(), {"active": [kept + ".msg"], "corrupt": [queue_id + ".msg"]})
        message = yield restarted.open_message(queue_id)
        with message:
            self.assertTrue(message.read().startswith(MESSAGE))
        yield restarted.delete(queue_id)
        self.assertEqual(self.where(), {"active": [kept + ".msg"]})

    @inlineCallbacks
    def test_recovery_goes_on_when_an_active_entry_moves(self) -> _Test:
        """A ``mailframe queue`` may move an entry while the server starts."""
        store = yield self.recovered()
        moved = yield self.commit(store)
        stays = yield self.commit(store)
        yield self.claim(store)
        real_utime = os.utime

        def utime(path: Any, *args: Any, **kwargs: Any) -> None:
            if path == self.file("active", moved):
                os.rename(path, self.file("hold", moved))
            real_utime(path, *args, **kwargs)

        self.patch(os, "utime", utime)
        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 2)
        self.assertEqual(self.where(), {"deferred": [stays + ".msg"], "hold": [moved + ".msg"]})
        self.assertEqual((yield restarted.get(moved)).state, EntryState.HOLD)

    @inlineCallbacks
    def test_recovery_keeps_incoming_in_order(self) -> _Test:
        clock = SteppedClock()
        store = yield self.recovered(reactor=clock)
        ids = []
        for _ in range(40):
            ids.append((yield self.commit(store)))
        self.assertEqual(ids, sorted(ids))
        restarted = yield self.recovered(reactor=clock)
        taken = []
        for _ in ids:
            taken += [e.queue_id for e in (yield restarted.claim(4e9, 1, 60))]
        self.assertEqual(taken, ids)

    # -- durability ----------------------------------------------------------------

    @inlineCallbacks
    def test_no_file_io_on_the_reactor_thread(self) -> _Test:
        seen: dict[str, list[threading.Thread]] = {}

        def spy(name: str, real: Callable[..., Any], paths: bool) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if not paths or str(args[0]).startswith(self.path):
                    seen.setdefault(name, []).append(threading.current_thread())
                return real(*args, **kwargs)

            return call

        spied = [("fsync", False), ("rename", True), ("unlink", True), ("open", True),
                 ("utime", True), ("scandir", True), ("listdir", True)]
        for name, paths in spied:
            self.patch(os, name, spy(name, getattr(os, name), paths))

        store = yield self.recovered()
        store.notify_on_change(lambda: None)
        ids = []
        for size in (10, 100_000, 1_000_000):
            ids.append((yield self.commit(store, b"z" * size)))
        ids.append((yield self.commit(store, hold="policy")))
        writer = store.open_writer()
        writer.write(b"w" * 200_000)
        writer.abort()
        claimed = yield self.claim(store)
        yield store.record(attempted(claimed[ids[0]], (ALICE, PENDING)))
        yield store.reschedule(ids[0], 4e9, "later")
        yield store.flush()
        yield store.hold(ids[0], "operator")
        yield store.release(ids[0])
        yield store.requeue(ids[0])
        yield store.quarantine(ids[1], "broken")
        message = yield store.open_message(ids[1])
        message.close()
        yield store.list()
        yield store.get(ids[0])
        yield store.stats()
        yield store.delete(ids[1])
        yield store.record(delivered(claimed[ids[2]]))
        # The command's instance too.
        command = self.make()
        yield command.hold(ids[0], "operator")
        yield command.release(ids[0])
        yield command.flush()
        yield command.list()
        yield store.wait_idle()
        yield self.recovered()

        self.assertEqual(sorted(seen), sorted(name for name, _ in spied))
        main = threading.main_thread()
        for name, threads in seen.items():
            self.assertNotIn(main, threads, f"os.{name} ran on the reactor thread")
        # Every fsync the stores counted is one that was seen off the
        # reactor thread (the last recovery had nothing to make durable).
        self.assertEqual(store.stats_fsyncs + command.stats_fsyncs, len(seen["fsync"]))

    @inlineCallbacks
    def test_group_commit_one_thread(self) -> _Test:
        """
        With one thread, all commits queue before the first directory fsync,
        which covers the first; the second covers all the others.
        """
        store = yield self.recovered(threads=1)
        before = store.stats_dir_fsyncs
        writers = [store.open_writer() for _ in range(10)]
        commits = []
        for writer in writers:
            writer.write(MESSAGE)
            commits.append(writer.commit(two_recipients()))
        yield gatherResults(commits)
        self.assertEqual(store.stats_dir_fsyncs - before, 2)
        self.assertEqual(len(listing(self.dir("incoming"))), 10)
        self.assertEqual(len((yield store.list())), 10)

    @inlineCallbacks
    def test_group_commit_many_threads(self) -> _Test:
        store = yield self.recovered()
        before_dirs, before_all = store.stats_dir_fsyncs, store.stats_fsyncs
        count = 20
        commits = []
        for _ in range(count):
            writer = store.open_writer()
            writer.write(MESSAGE)
            commits.append(writer.commit(two_recipients()))
        yield gatherResults(commits)
        dir_fsyncs = store.stats_dir_fsyncs - before_dirs
        self.assertLess(dir_fsyncs, count)
        self.assertGreaterEqual(dir_fsyncs, 1)
        # One fsync per message file, and the shared directory fsyncs.
        self.assertEqual(store.stats_fsyncs - before_all, count + dir_fsyncs)

    @inlineCallbacks
    def test_back_pressure_with_a_busy_thread(self) -> _Test:
        pool = started_pool(self, threads=1)
        store = yield self.recovered(threadpool=pool, high_water=256 * 1024)
        gate = threading.Event()
        self.addCleanup(gate.set)
        pool.callInThread(gate.wait, 30)
        writer = store.open_writer()
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        chunk = b"p" * 16 * 1024
        for _ in range(64):
            writer.write(chunk)
        self.assertEqual(producer.calls, ["pause"])
        gate.set()
        yield store.wait_idle()
        self.assertEqual(producer.calls, ["pause", "resume"])
        writer.unregisterProducer()
        queue_id = yield writer.commit(two_recipients())
        self.assertEqual(message_in(self.file("incoming", queue_id)), chunk * 64)

    # -- space ---------------------------------------------------------------------

    @inlineCallbacks
    def test_has_room(self) -> _Test:
        store = self.make(min_free=2**62)
        self.assertFalse(store.has_room(1))
        yield store.recover()
        self.assertFalse(store.has_room(1))
        roomy = self.make(min_free=0)
        self.assertTrue(roomy.has_room(1024))
        stat = os.statvfs(self.path)
        free = stat.f_bavail * stat.f_frsize
        self.assertFalse(roomy.has_room(free // 2 + 64 * 1024 * 1024))
        default = SpoolQueueStore(self.path, reactor, threadpool=self.pool)
        self.assertEqual(default.min_free, 64 * 1024 * 1024)
        self.assertEqual(default.has_room(1024), free >= 64 * 1024 * 1024)

    def test_has_room_before_the_directory_exists(self) -> None:
        store = SpoolQueueStore(
            os.path.join(self.path, "not", "yet"), reactor, threadpool=self.pool, min_free=0
        )
        self.assertTrue(store.has_room(1))


class SteppedClock:
    """The real reactor's threads, with a clock that moves 10 ms a look, so ids sort."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def seconds(self) -> float:
        self.now += 0.01
        return self.now

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return reactor.callLater(delay, f, *args, **kwargs)

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        reactor.callFromThread(f, *args, **kwargs)

    def getThreadPool(self) -> ThreadPool:
        return reactor.getThreadPool()


class CommandViewTests(_SpoolFiles, TestCase):
    """
    The ``mailframe queue`` command's view: a second instance on the same
    directory, never recovered, beside a recovered server's.
    """

    def setUp(self) -> Deferred[None]:
        self.pool = started_pool(self)
        self.path = temp_dir(self)
        self.server = SpoolQueueStore(self.path, reactor, threadpool=self.pool, min_free=0)
        self.addCleanup(self.server.stop)
        self.command = SpoolQueueStore(self.path, reactor, threadpool=self.pool, min_free=0)
        self.addCleanup(self.command.wait_idle)
        self.woken: list[float] = []
        return self.server.recover().addCallback(lambda _: None)

    @inlineCallbacks
    def commit(
        self, data: bytes = MESSAGE, hold: str | None = None
    ) -> Generator[Deferred[Any], Any, str]:
        writer = self.server.open_writer()
        writer.write(data)
        queue_id = yield writer.commit(two_recipients(), hold=hold)
        return str(queue_id)

    @inlineCallbacks
    def claim(self, now: float = 4e9) -> Generator[Deferred[Any], Any, dict[str, QueueEntry]]:
        claimed = yield self.server.claim(now, 100, 600)
        return {entry.queue_id: entry for entry in claimed}

    @inlineCallbacks
    def fails(self, d: Deferred[Any], kind: type[BaseException]) -> _Test:
        try:
            yield d
        except kind:
            return
        self.fail(f"expected {kind.__name__}")

    def watch(self) -> None:
        self.server.notify_on_change(lambda: self.woken.append(reactor.seconds()))

    def trigger(self) -> int:
        try:
            return os.stat(os.path.join(self.path, "trigger")).st_mtime_ns
        except FileNotFoundError:
            return 0

    @inlineCallbacks
    def test_reads_the_queue(self) -> _Test:
        sizes = [10, 70_000, 300, 5, 1000]
        ids = []
        for size in sizes:
            ids.append((yield self.commit(b"m" * size)))
        claimed = yield self.server.claim(4e9, 1, 600)
        yield self.server.reschedule(claimed[0].queue_id, 5e9, "later")
        self.assertRaises(RuntimeError, self.command.open_writer)
        yield self.fails(self.command.claim(4e9, 10, 60), RuntimeError)
        # Pages in id order, after the last id of the one before.
        seen: list[str] = []
        after = None
        while page := (yield self.command.list(after=after, limit=2)):
            self.assertLessEqual(len(page), 2)
            seen += [e.queue_id for e in page]
            after = page[-1].queue_id
        self.assertEqual(seen, sorted(ids))
        deferred = yield self.command.list(state=EntryState.DEFERRED)
        self.assertEqual([e.queue_id for e in deferred], [claimed[0].queue_id])
        for queue_id in ids:
            self.assertEqual((yield self.command.get(queue_id)), (yield self.server.get(queue_id)))
        stats = yield self.command.stats()
        self.assertEqual((stats[EntryState.INCOMING], stats[EntryState.DEFERRED]), (4, 1))
        on_disk = sum(os.path.getsize(self.file(state, queue_id))
                      for state in STATES for queue_id in ids
                      if os.path.exists(self.file(state, queue_id)))
        self.assertEqual(stats.size, on_disk)
        self.assertGreaterEqual(stats.size, sum(sizes))
        self.assertEqual(stats.oldest, queue_id_time(min(ids)))
        message = yield self.command.open_message(ids[1])
        with message:
            self.assertEqual(message.read(), b"m" * sizes[1])
        self.assertIsNone((yield self.command.get("NO-SUCH-ID")))
        self.assertIsNone((yield self.command.get("../../etc/passwd")))

    @inlineCallbacks
    def test_a_page_is_not_cut_short_by_entries_that_leave(self) -> _Test:
        ids = []
        for _ in range(6):
            ids.append((yield self.commit()))
        ids.sort()
        real = self.command._load
        left: list[str] = []

        def load(queue_id: str, now: float) -> QueueEntry | None:
            if not left:
                # The server delivers the first two as the page is read.
                left.extend(ids[:2])
                for gone in left:
                    os.unlink(self.file("incoming", gone))
            return real(queue_id, now)

        self.patch(self.command, "_load", load)
        page = yield self.command.list(limit=2)
        self.assertEqual([e.queue_id for e in page], ids[2:4])

    @inlineCallbacks
    def test_paging_across_scan_windows_sees_every_entry_once(self) -> _Test:
        ids = []
        for _ in range(11):
            ids.append((yield self.commit()))
        ids.sort()
        scans: list[None] = []
        real = spool_module._scandir

        def counting(directory: str) -> Any:
            if directory.endswith("incoming"):
                scans.append(None)
            return real(directory)

        self.patch(spool_module, "_scandir", counting)
        for window in (1, 3, 50):
            self.patch(spool_module, "LIST_WINDOW", window)
            del scans[:]
            seen: list[str] = []
            after = None
            while True:
                page = yield self.command.list(after=after, limit=2)
                if not page:
                    break
                seen.extend(e.queue_id for e in page)
                after = page[-1].queue_id
            self.assertEqual(seen, ids)
            # One scan serves a window of pages (6 pages, then the end).
            self.assertEqual(len(scans), {1: 6, 3: 2, 50: 1}[window])

    @inlineCallbacks
    def test_hold_of_an_entry_under_delivery_outlasts_its_reschedule(self) -> _Test:
        queue_id = yield self.commit()
        entry = (yield self.claim())[queue_id]
        yield self.command.hold(queue_id, "operator")
        self.assertEqual(self.where(), {"hold": [queue_id + ".msg"]})
        # The attempt that was under way ends: its results are kept, and
        # the entry stays on hold.
        yield self.server.record(attempted(entry, (ALICE, DELIVERED), (BOB, PENDING)))
        yield self.server.reschedule(queue_id, 4e9 + 10, "451 4.4.1 later")
        self.assertEqual(self.where(), {"hold": [queue_id + ".msg"]})
        self.assertEqual((yield self.server.claim(6e9, 10, 60)), [])
        stored = yield self.command.get(queue_id)
        self.assertEqual((stored.state, stored.reason, stored.pending),
                         (EntryState.HOLD, "operator", (BOB,)))
        self.watch()
        yield self.command.release(queue_id)
        self.assertEqual(self.where(), {"deferred": [queue_id + ".msg"]})
        yield wait_for(lambda: bool(self.woken), 5)
        again = yield self.claim()
        self.assertEqual(list(again), [queue_id])
        self.assertEqual(again[queue_id].pending, (BOB,))

    @inlineCallbacks
    def test_delete_of_an_entry_under_delivery(self) -> _Test:
        """
        The server's record fails with NoSuchEntry, whether it would have
        kept the entry or removed it, and brings nothing back.
        """
        kept = yield self.commit()
        done = yield self.commit()
        quiet = yield self.commit()
        claimed = yield self.claim()
        for queue_id in (kept, done, quiet):
            yield self.command.delete(queue_id)
        self.assertEqual(self.where(), {})
        yield self.fails(self.server.record(attempted(claimed[kept], (ALICE, PENDING))),
                         NoSuchEntry)
        yield self.fails(self.server.record(delivered(claimed[done])), NoSuchEntry)
        # The runner stops there; a reschedule would find nothing either.
        yield self.fails(self.server.reschedule(kept, 4e9, "later"), NoSuchEntry)
        # An attempt that ends without a record reschedules quietly.
        yield self.server.reschedule(quiet, 4e9, "later")
        self.assertEqual(self.where(), {})
        self.assertEqual(listing(self.dir("env")), [])
        for queue_id in (kept, done, quiet):
            self.assertIsNone((yield self.server.get(queue_id)))
        self.assertEqual((yield self.server.claim(6e9, 10, 60)), [])

    @inlineCallbacks
    def test_release_wakes_the_server(self) -> _Test:
        self.watch()
        queue_id = yield self.commit(hold="policy")
        self.assertEqual((yield self.server.claim(reactor.seconds(), 10, 60)), [])
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.woken, [])
        before = self.trigger()
        released_at = reactor.seconds()
        yield self.command.release(queue_id)
        self.assertGreater(self.trigger(), before)
        yield wait_for(lambda: bool(self.woken), 5)
        self.assertLess(self.woken[0] - released_at, 3.0)
        claimed = yield self.server.claim(reactor.seconds(), 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    @inlineCallbacks
    def test_flush_wakes_the_server(self) -> _Test:
        self.watch()
        queue_id = yield self.commit()
        yield self.claim(reactor.seconds())
        yield self.server.reschedule(queue_id, reactor.seconds() + 3600, "later")
        self.assertEqual((yield self.server.claim(reactor.seconds(), 10, 60)), [])
        self.assertEqual((yield self.command.flush()), 1)
        yield wait_for(lambda: bool(self.woken), 5)
        claimed = yield self.server.claim(reactor.seconds(), 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    @inlineCallbacks
    def test_requeue_wakes_the_server(self) -> _Test:
        self.watch()
        queue_id = yield self.commit()
        yield self.claim(reactor.seconds())
        yield self.server.reschedule(queue_id, reactor.seconds() + 3600, "later")
        yield self.command.requeue(queue_id)
        yield wait_for(lambda: bool(self.woken), 5)
        claimed = yield self.server.claim(reactor.seconds(), 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    @inlineCallbacks
    def test_the_server_follows_holds_and_deletes(self) -> _Test:
        self.watch()
        held = yield self.commit()
        deleted = yield self.commit()
        yield self.command.hold(held, "operator")
        yield self.command.delete(deleted)
        yield wait_for(lambda: bool(self.woken), 5)
        self.assertEqual((yield self.server.claim(6e9, 10, 60)), [])
        self.assertEqual(self.server.stats_corrupt, 0)
        self.assertEqual(self.where(), {"hold": [held + ".msg"]})

    @inlineCallbacks
    def test_refusals(self) -> _Test:
        queue_id = yield self.commit()
        yield self.claim()
        yield self.fails(self.command.requeue(queue_id), EntryStateError)
        yield self.fails(self.command.release(queue_id), EntryStateError)
        yield self.command.quarantine(queue_id, "operator")
        yield self.fails(self.command.hold(queue_id, "operator"), EntryStateError)
        yield self.fails(self.command.requeue(queue_id), EntryStateError)
        yield self.fails(self.command.delete("NO-SUCH-ID"), NoSuchEntry)

    @inlineCallbacks
    def test_every_change_moves_the_trigger_on(self) -> _Test:
        """Even two changes within one tick of the clock."""
        frozen = time.time_ns()
        self.patch(time, "time_ns", lambda: frozen)
        first = yield self.commit()
        second = yield self.commit()
        stamps = [self.trigger()]
        for change in [
            lambda: self.command.hold(first, "operator"),
            lambda: self.command.release(first),
            lambda: self.command.requeue(first),
            lambda: self.command.flush(),
            lambda: self.command.quarantine(second, "broken"),
            lambda: self.command.delete(second),
        ]:
            yield change()
            stamps.append(self.trigger())
        self.assertEqual(stamps, sorted(set(stamps)))
        # The server's own changes do not touch it.
        third = yield self.commit()
        claimed = yield self.claim()
        yield self.server.hold(third, "operator")
        yield self.server.release(third)
        yield self.server.record(attempted(claimed[third], (ALICE, PENDING)))
        yield self.server.flush()
        self.assertEqual(self.trigger(), stamps[-1])


class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class SyncReactor(Clock):
    """A clock whose callFromThread runs the call at once, for :class:`ManualPool`."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> Any:
        raise AssertionError("the test gives its own pool")


class ManualPool:
    """
    A thread pool that runs nothing until the test says, on the test's own
    thread: the order of every step is the test's to choose.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callInThreadWithCallback(
        self, on_result: Any, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.jobs.append((on_result, f, args, kwargs))

    def names(self) -> list[str]:
        return [f.__name__ for _, f, _, _ in self.jobs]

    def run_one(self, name: str | None = None) -> str:
        """Run the first job, or the first one called *name*, and report its result."""
        return self.run_held(name)()

    def run_held(self, name: str | None = None) -> Callable[[], str]:
        """
        Run the first job (called *name*) now, and return what reports its
        result, when the test calls it: as a thread whose result reaches
        the reactor late.
        """
        index = 0 if name is None else self.names().index(name)
        on_result, f, args, kwargs = self.jobs.pop(index)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            failure = Failure()

            def report() -> str:
                on_result(False, failure)
                return str(f.__name__)
        else:

            def report() -> str:
                on_result(True, result)
                return str(f.__name__)

        return report

    def run_all(self) -> list[str]:
        ran = []
        while self.jobs:
            ran.append(self.run_one())
        return ran


class SpoolStepTests(_SpoolFiles, SynchronousTestCase):
    """The spool's steps one by one, with a pool the test runs by hand."""

    def setUp(self) -> None:
        self.path = temp_dir(self)
        self.clock = SyncReactor()
        self.pool = ManualPool()
        self.store = self.make()

    def make(self, **kwargs: Any) -> SpoolQueueStore:
        store = SpoolQueueStore(self.path, self.clock, threadpool=self.pool, min_free=0, **kwargs)
        self.settle(store.recover())
        return store

    def settle(self, d: Deferred[Any]) -> Any:
        self.pool.run_all()
        return self.successResultOf(d)

    def commit(self, store: SpoolQueueStore | None = None, hold: str | None = None) -> str:
        writer = (store or self.store).open_writer()
        writer.write(MESSAGE)
        return str(self.settle(writer.commit(two_recipients(), hold=hold)))

    def touch_trigger(self) -> None:
        """What the ``mailframe queue`` command does after a change."""
        path = os.path.join(self.path, "trigger")
        with open(path, "ab"):
            pass
        stamp = os.stat(path).st_mtime_ns + 1_000_000
        os.utime(path, ns=(stamp, stamp))

    def trace(self) -> list[tuple[str, ...]]:
        """Record every fsync and rename, by path within the spool."""
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to name the files that are fsynced")
        events: list[tuple[str, ...]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            events.append(("fsync", os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), self.path)))
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            relative = os.path.relpath(src, self.path), os.path.relpath(dst, self.path)
            events.append(("rename", *relative))
            real_rename(src, dst)

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)
        return events

    # -- commits -------------------------------------------------------------------

    def test_small_message_costs_one_hop_and_a_shared_dir_fsync(self) -> None:
        writer = self.store.open_writer()
        writer.write(b"x" * 1000)
        self.assertEqual(self.pool.jobs, [])
        d = writer.commit(two_recipients())
        self.assertEqual(self.pool.names(), ["_finish"])
        self.pool.run_one()
        self.assertNoResult(d)
        self.assertEqual(self.pool.names(), ["_fsync_dir"])
        self.pool.run_one()
        self.assertEqual(self.successResultOf(d), writer.queue_id)
        self.assertEqual(self.pool.jobs, [])

    def test_commit_order(self) -> None:
        events = self.trace()
        writer = self.store.open_writer()
        queue_id = writer.queue_id
        writer.write(b"y" * 100_000)
        writer.write(b"z" * 10)
        d = writer.commit(two_recipients())
        d.addCallback(lambda result: events.append(("fired", result)))
        self.pool.run_all()
        self.assertEqual(
            events,
            [
                ("fsync", f"tmp/{queue_id}.msg"),
                ("rename", f"tmp/{queue_id}.msg", f"incoming/{queue_id}.msg"),
                ("fsync", "incoming"),
                ("fired", queue_id),
            ],
        )

    def test_commit_into_hold_order(self) -> None:
        events = self.trace()
        writer = self.store.open_writer()
        queue_id = writer.queue_id
        writer.write(MESSAGE)
        d = writer.commit(two_recipients(), hold="policy")
        d.addCallback(lambda result: events.append(("fired", result)))
        self.pool.run_all()
        self.assertEqual(
            events,
            [
                ("fsync", f"tmp/{queue_id}.msg"),
                ("rename", f"tmp/{queue_id}.msg", f"hold/{queue_id}.msg"),
                ("fsync", "hold"),
                ("fired", queue_id),
            ],
        )

    def test_group_commit(self) -> None:
        before = self.store.stats_dir_fsyncs, self.store.stats_fsyncs
        commits = []
        for _ in range(10):
            writer = self.store.open_writer()
            writer.write(MESSAGE)
            commits.append(writer.commit(two_recipients()))
        self.assertEqual(self.pool.names(), ["_finish"] * 10)
        self.pool.run_one()
        # The first commit's rename is done: a directory fsync starts.
        self.assertEqual(self.pool.names(), ["_finish"] * 9 + ["_fsync_dir"])
        for _ in range(9):
            self.pool.run_one()
        # The other nine wait for the running fsync to end, and share the next.
        self.assertEqual(self.pool.names(), ["_fsync_dir"])
        self.pool.run_one()
        self.successResultOf(commits[0])
        for d in commits[1:]:
            self.assertNoResult(d)
        self.assertEqual(self.pool.names(), ["_fsync_dir"])
        self.pool.run_one()
        for d in commits:
            self.successResultOf(d)
        self.assertEqual(self.store.stats_dir_fsyncs - before[0], 2)
        # One fsync per message file, and the two directory fsyncs.
        self.assertEqual(self.store.stats_fsyncs - before[1], 10 + 2)

    def test_finished_entries_are_removed_in_groups(self) -> None:
        ids = [self.commit() for _ in range(5)]
        claimed = {e.queue_id: e for e in self.settle(self.store.claim(4e9, 10, 60))}
        first = self.store.record(delivered(claimed[ids[0]]))
        self.assertEqual(self.pool.names(), ["_remove_all"])
        finish_first = self.pool.run_held()
        # Removals asked for while a group is in a thread wait for the next,
        # which takes them all in one trip.
        rest = [self.store.record(delivered(claimed[q])) for q in ids[1:]]
        self.assertEqual(self.pool.jobs, [])
        finish_first()
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.pool.names(), ["_remove_all"])
        for d in rest:
            self.assertNoResult(d)
        self.pool.run_one()
        for d in rest:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.pool.jobs, [])
        self.assertEqual(self.where(), {})
        self.assertEqual(self.settle(self.store.stats())[EntryState.ACTIVE], 0)

    def record_unlinks(self) -> list[str]:
        """The paths, within the spool, of every unlink from now on."""
        unlinked: list[str] = []
        real_unlink = os.unlink

        def unlink(path: str) -> None:
            unlinked.append(os.path.relpath(path, self.path))
            real_unlink(path)

        self.patch(os, "unlink", unlink)
        return unlinked

    def test_an_entry_committed_here_is_removed_with_one_unlink(self) -> None:
        """
        It has no .env or .why to look for: its delivery recorded nothing
        before it was done.
        """
        queue_id = self.commit()
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        unlinked = self.record_unlinks()
        self.settle(self.store.record(delivered(entry)))
        self.assertEqual(unlinked, [f"active/{queue_id}.msg"])
        self.assertEqual(self.where(), {})

    def test_an_entry_whose_state_was_recorded_has_it_removed(self) -> None:
        queue_id = self.commit()
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        alice = entry.recipients[0].mailbox
        entry = attempted(entry, (alice, DELIVERED))
        self.settle(self.store.record(entry))
        self.assertTrue(os.path.exists(self.file("env", queue_id, ".env")))
        unlinked = self.record_unlinks()
        self.settle(self.store.record(delivered(entry)))
        self.assertEqual(unlinked, [f"active/{queue_id}.msg", f"env/{queue_id}.env",
                                    f"env/{queue_id}.why"])
        self.assertEqual(listing(self.dir("env")), [])

    def test_an_entry_claimed_from_its_files_has_them_all_removed(self) -> None:
        """Deferred, then claimed again: its .why is looked for and removed."""
        queue_id = self.commit()
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        self.settle(self.store.reschedule(queue_id, 0, "try later"))
        self.assertTrue(os.path.exists(self.file("env", queue_id, ".why")))
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        self.settle(self.store.record(delivered(entry)))
        self.assertEqual(listing(self.dir("env")), [])
        self.assertEqual(self.where(), {})

    def test_an_entry_gone_from_a_group_fails_alone(self) -> None:
        ids = [self.commit() for _ in range(3)]
        claimed = {e.queue_id: e for e in self.settle(self.store.claim(4e9, 10, 60))}
        first = self.store.record(delivered(claimed[ids[0]]))
        finish_first = self.pool.run_held()
        # An operator deletes the second behind the runner's back.
        os.unlink(self.file("active", ids[1]))
        rest = [self.store.record(delivered(claimed[q])) for q in ids[1:]]
        finish_first()
        self.successResultOf(first)
        self.pool.run_all()
        self.failureResultOf(rest[0], NoSuchEntry)
        self.assertIsNone(self.successResultOf(rest[1]))
        self.assertEqual(self.where(), {})

    def test_back_pressure(self) -> None:
        # Each write passes WRITE_CHUNK and goes to a thread; the high water
        # mark is between three of them and four, and half of it between
        # one and two.
        chunk = b"b" * (WRITE_CHUNK + WRITE_CHUNK // 4)
        store = self.make(high_water=16 * len(chunk) // 5)
        writer = store.open_writer()
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        for _ in range(3):
            writer.write(chunk)
        self.assertEqual(producer.calls, [])
        writer.write(chunk)  # four chunks outstanding, over the mark
        self.assertEqual(producer.calls, ["pause"])
        self.assertTrue(writer.paused)
        writer.write(chunk)
        self.assertEqual(producer.calls, ["pause"])
        # One writer's chunks go to the pool one after another, in order.
        self.assertEqual(self.pool.names(), ["_append"])
        self.pool.run_one()
        self.pool.run_one()
        self.pool.run_one()  # two chunks: still above half the mark
        self.assertEqual(producer.calls, ["pause"])
        self.pool.run_one()  # one chunk
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertFalse(writer.paused)
        queue_id = self.settle(writer.commit(two_recipients()))
        self.assertEqual(message_in(self.file("incoming", queue_id)), chunk * 5)
        self.assertEqual(self.settle(store.get(queue_id)).size, len(chunk) * 5)

    def test_write_error_fails_the_commit(self) -> None:
        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        writer = self.store.open_writer()
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        self.patch(os, "write", full)
        writer.write(b"e" * 100_000)
        self.pool.run_all()
        writer.write(b"more, dropped")
        d = writer.commit(two_recipients())
        self.pool.run_all()
        failure = self.failureResultOf(d, OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        writer.abort()
        self.pool.run_all()
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(self.where(), {})
        self.assertEqual(self.settle(self.store.stats())[EntryState.INCOMING], 0)
        self.assertEqual(self.settle(self.store.claim(4e9, 10, 60)), [])

    def test_failed_commit_removes_its_files(self) -> None:
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            if os.path.dirname(src) == self.dir("tmp"):
                raise OSError(errno.EIO, "I/O error")
            real_rename(src, dst)

        self.patch(os, "rename", rename)
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(two_recipients())
        self.pool.run_all()
        self.failureResultOf(d, OSError)
        writer.abort()
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(self.where(), {})
        self.assertIsNone(self.settle(self.store.get(writer.queue_id)))

    def test_failed_dir_fsync_fails_the_commit(self) -> None:
        """The file was renamed already: it goes, since its client hears no 250."""
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to tell directories from files")
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(two_recipients())
        self.pool.run_all()
        self.failureResultOf(d, OSError)
        self.assertEqual(self.where(), {})
        self.assertEqual(self.settle(self.store.list()), [])
        self.assertEqual(self.settle(self.store.claim(4e9, 10, 60)), [])

    def open_files(self) -> set[str]:
        """The message files within the spool that this process has open."""
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to list open files")
        paths = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if target.startswith(self.path + os.sep) and target.endswith(".msg"):
                paths.add(os.path.relpath(target, self.path))
        return paths

    def test_a_claim_opens_the_message_for_its_delivery(self) -> None:
        queue_id = self.commit()
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        self.assertEqual(entry.queue_id, queue_id)
        # The claim's trip opened the file: the first open needs none.
        d = self.store.open_message(queue_id)
        self.assertEqual(self.pool.names(), [])
        message = self.successResultOf(d)
        self.addCleanup(message.close)
        self.assertEqual(message.read(), MESSAGE)
        # A second open goes to a thread, as before.
        again = self.store.open_message(queue_id)
        self.assertEqual(self.pool.run_all(), ["_open_message"])
        with self.successResultOf(again) as second:
            self.assertEqual(second.read(), MESSAGE)

    def test_a_message_the_claim_opened_is_closed_when_the_attempt_ends(self) -> None:
        """
        Whatever ends an attempt that never opened its message (a record, a
        reschedule, an operator's change, or the store's stop), the file
        that the claim opened is closed, and the next open finds the entry
        as it is then.
        """
        ids = [self.commit() for _ in range(4)]
        claimed = {e.queue_id: e for e in self.settle(self.store.claim(4e9, 10, 60))}
        self.assertEqual(self.open_files(), {f"active/{q}.msg" for q in ids})
        self.settle(self.store.record(delivered(claimed[ids[0]])))
        self.settle(self.store.reschedule(ids[1], 5e9, "451 4.4.1 later"))
        self.settle(self.store.hold(ids[2], "by the operator"))
        self.assertEqual(self.open_files(), {f"active/{ids[3]}.msg"})
        gone = self.store.open_message(ids[0])
        self.pool.run_all()
        self.failureResultOf(gone, NoSuchEntry)
        with self.settle(self.store.open_message(ids[2])) as held:
            self.assertEqual(held.read(), MESSAGE)
        self.settle(self.store.stop())
        self.assertEqual(self.open_files(), set())

    def test_writes_stay_in_order(self) -> None:
        writer = self.store.open_writer()
        # Each part is more than the writer keeps, and goes to a thread.
        parts = [bytes([65 + i]) * (WRITE_CHUNK + 1) for i in range(6)]
        for part in parts:
            writer.write(part)
        d = writer.commit(two_recipients())
        self.assertEqual(self.pool.run_all(), ["_append"] * 6 + ["_finish", "_fsync_dir"])
        queue_id = self.successResultOf(d)
        self.assertEqual(message_in(self.file("incoming", queue_id)), b"".join(parts))

    # -- records and other changes -------------------------------------------------

    def test_record_order(self) -> None:
        queue_id = self.commit()
        [entry] = self.settle(self.store.claim(4e9, 10, 60))
        events = self.trace()
        d = self.store.record(attempted(entry, (ALICE, PENDING)))
        d.addCallback(lambda _: events.append(("fired",)))
        self.assertEqual(self.pool.names(), ["_write_env"])
        self.pool.run_one()
        self.assertNoResult(d)
        self.assertEqual(self.pool.names(), ["_fsync_dir"])
        self.pool.run_one()
        self.successResultOf(d)
        self.assertEqual(
            events,
            [
                ("fsync", f"tmp/{queue_id}.env"),
                ("rename", f"tmp/{queue_id}.env", f"env/{queue_id}.env"),
                ("fsync", "env"),
                ("fired",),
            ],
        )

    def test_records_share_env_fsyncs(self) -> None:
        for _ in range(6):
            self.commit()
        claimed = self.settle(self.store.claim(4e9, 10, 60))
        before = self.store.stats_dir_fsyncs
        records = [self.store.record(attempted(e, (ALICE, PENDING))) for e in claimed]
        self.pool.run_all()
        for d in records:
            self.successResultOf(d)
        self.assertEqual(self.store.stats_dir_fsyncs - before, 2)

    def test_hold_is_durable(self) -> None:
        queue_id = self.commit()
        events = self.trace()
        d = self.store.hold(queue_id, "operator")
        d.addCallback(lambda _: events.append(("fired",)))
        self.pool.run_all()
        self.successResultOf(d)
        self.assertEqual(
            [e for e in events if e[0] == "rename" or e == ("fsync", "hold")],
            [("rename", f"incoming/{queue_id}.msg", f"hold/{queue_id}.msg"), ("fsync", "hold")],
        )
        self.assertEqual(events[-1], ("fired",))

    def test_a_deferred_entry_never_shows_its_old_time(self) -> None:
        """
        Its modification time is its due time before it is renamed into
        deferred/: a scan in between would find it due at once.
        """
        queue_id = self.commit()
        self.settle(self.store.claim(0, 10, 60))
        seen: list[float] = []
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            if dst == self.file("deferred", queue_id):
                seen.append(os.stat(src).st_mtime)
            real_rename(src, dst)

        self.patch(os, "rename", rename)
        self.settle(self.store.reschedule(queue_id, 5e9, "later"))
        self.assertEqual(seen, [5e9])

    def test_failed_flush_reports_the_error(self) -> None:
        queue_id = self.commit()
        self.settle(self.store.claim(4e9, 10, 60))
        self.settle(self.store.reschedule(queue_id, 5e9, "later"))

        def utime(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "utime", utime)
        flushed = self.store.flush()
        self.pool.run_all()
        self.failureResultOf(flushed, OSError)

    # -- another process, and rescans --------------------------------------------------

    def test_watching_starts_once_recovered(self) -> None:
        """A callback given before recovery is called on changes after it."""
        store = SpoolQueueStore(self.path, self.clock, threadpool=self.pool, min_free=0)
        woken: list[None] = []
        store.notify_on_change(lambda: woken.append(None))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.settle(store.recover())
        self.touch_trigger()
        self.clock.advance(1)
        self.assertEqual(self.pool.names(), ["_scan_states"])
        self.pool.run_all()
        self.assertEqual(woken, [None])
        self.settle(store.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_rescan_asked_during_one_follows_it(self) -> None:
        woken: list[None] = []
        self.store.notify_on_change(lambda: woken.append(None))
        self.touch_trigger()
        self.clock.advance(1)
        report = self.pool.run_held("_scan_states")
        # Another change, seen while the first scan's findings are on
        # their way: the scan may have looked before it.
        self.touch_trigger()
        self.clock.advance(1)
        self.assertEqual(self.pool.names(), [])
        report()
        self.assertEqual(woken, [None])
        self.assertEqual(self.pool.names(), ["_scan_states"])
        self.pool.run_all()
        self.assertEqual(woken, [None, None])
        self.clock.advance(1)
        self.assertEqual(self.pool.names(), [])

    def test_a_commit_during_a_rescan_is_kept(self) -> None:
        self.store.notify_on_change(lambda: None)
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        self.touch_trigger()
        self.clock.advance(1)
        d = writer.commit(two_recipients())
        # The scan looks before the commit's rename; its findings arrive
        # after the commit fired.
        report = self.pool.run_held("_scan_states")
        self.pool.run_all()
        queue_id = self.successResultOf(d)
        report()
        claimed = self.settle(self.store.claim(4e9, 10, 60))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    def test_a_commit_seen_by_a_rescan_before_it_fired(self) -> None:
        self.store.notify_on_change(lambda: None)
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(two_recipients())
        self.pool.run_one("_finish")
        # Renamed into incoming/, its directory not fsynced yet: a scan
        # finds it, and the commit still fires, once.
        self.touch_trigger()
        self.clock.advance(1)
        self.pool.run_one("_scan_states")
        self.pool.run_all()
        queue_id = self.successResultOf(d)
        self.assertEqual(self.where(), {"incoming": [queue_id + ".msg"]})
        claimed = self.settle(self.store.claim(4e9, 10, 60))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    def test_a_reschedule_during_a_rescan_is_kept(self) -> None:
        self.store.notify_on_change(lambda: None)
        queue_id = self.commit()
        self.settle(self.store.claim(0, 10, 60))
        self.touch_trigger()
        self.clock.advance(1)
        # The scan sees the entry in active/; the reschedule moves it.
        report = self.pool.run_held("_scan_states")
        self.settle(self.store.reschedule(queue_id, 500, "later"))
        report()
        self.assertEqual(self.settle(self.store.claim(499, 10, 60)), [])
        claimed = self.settle(self.store.claim(500, 10, 60))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    def test_an_entry_moved_away_is_not_claimed_nor_corrupt(self) -> None:
        """
        An entry held by an operator after its lease ran out, or right
        after a claim's rename, is left where it is.
        """
        command = SpoolQueueStore(self.path, self.clock, threadpool=self.pool, min_free=0)
        queue_id = self.commit()
        self.settle(self.store.claim(0, 10, 60))
        self.settle(command.hold(queue_id, "operator"))
        self.assertEqual(self.settle(self.store.claim(61, 10, 60)), [])
        self.assertEqual(self.store.stats_corrupt, 0)
        self.assertEqual(self.where(), {"hold": [queue_id + ".msg"]})
        # The claim looked again: the server knows it is held.
        self.assertEqual(self.settle(self.store.get(queue_id)).state, EntryState.HOLD)

        self.settle(command.release(queue_id))
        restarted = self.make()
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            real_rename(src, dst)
            if dst == self.file("active", queue_id):
                real_rename(dst, self.file("hold", queue_id))

        self.patch(os, "rename", rename)
        self.assertEqual(self.settle(restarted.claim(1000, 10, 60)), [])
        self.assertEqual(restarted.stats_corrupt, 0)
        self.assertEqual(self.where(), {"hold": [queue_id + ".msg"]})


class MessageFileTests(SynchronousTestCase):
    def test_seeks_within_the_message_only(self) -> None:
        path = os.path.join(temp_dir(self) + "-m", "x.msg")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"message bytes" + b"TRAILER")
        message = io.BufferedReader(_MessageFile(io.FileIO(path, "rb"), len(b"message bytes")))
        try:
            self.assertEqual(message.seek(0, os.SEEK_END), 13)
            self.assertEqual(message.read(), b"")
            message.seek(8)
            self.assertEqual(message.read(), b"bytes")
            message.seek(-5, os.SEEK_END)
            self.assertEqual(message.read(3), b"byt")
            message.seek(0)
            self.assertEqual(message.read(), b"message bytes")
        finally:
            message.close()

    def test_a_seek_costs_a_system_call_only_when_a_read_needs_it(self) -> None:
        """
        Finding the message's size, then reading it from the start, as a
        relayed delivery does, moves the file's offset not once.
        """
        path = os.path.join(temp_dir(self) + "-m", "x.msg")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"message bytes" + b"TRAILER")
        moves: list[int] = []

        class Raw(io.FileIO):
            def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
                moves.append(offset)
                return super().seek(offset, whence)

        message = io.BufferedReader(_MessageFile(Raw(path, "rb"), 13))
        try:
            self.assertEqual(message.seek(0, os.SEEK_END), 13)
            self.assertEqual(message.seek(0), 0)
            self.assertEqual(message.read(), b"message bytes")
            self.assertEqual(moves, [])
            message.seek(8)
            self.assertEqual(message.read(), b"bytes")
            self.assertEqual(moves, [8])
        finally:
            message.close()

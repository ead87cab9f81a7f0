"""
The spool: the contract on a real directory with real threads, and what only
a durable store must do: commit order, group commit, back-pressure, recovery
after a crash, quarantine, and no fsync on the reactor thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailframe.address import Mailbox
from mailframe.envelope import (
    DeliveryStatus,
    EntryState,
    QueueEntry,
    RecipientResult,
    RecipientState,
)
from mailframe.reply import Reply
from mailframe.stores import SpoolQueueStore
from mailframe.stores._serialize import entry_from_json, entry_to_json
from mailframe.stores.spool import _read_trailer
from mailframe.testing._fakes import envelope
from mailframe.testing._store_contract import QueueStoreContract

_Test = Generator[Deferred[Any], Any, None]
ALICE = Mailbox.parse("alice@example.com")
BOB = Mailbox.parse("bob@example.com")
OK = Reply(250, "2.0.0", "OK")
LATER = Reply(451, "4.4.1", "later")
MESSAGE = b"Subject: test\r\n\r\nHello\r\n"


def two_recipients() -> Any:
    return envelope("sender@example.org", "alice@example.com", "bob@example.com")


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
    return data[: len(data) - len(_read_trailer(path)) - 16]


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


class SpoolContractTests(QueueStoreContract, TestCase):
    """The contract, with a thread pool of the test's own."""

    def make_store(self) -> Deferred[SpoolQueueStore]:
        pool = started_pool(self)
        store = SpoolQueueStore(temp_dir(self), reactor, threadpool=pool, min_free=0)
        self.addCleanup(store.wait_idle)
        return store.recover().addCallback(lambda _: store)


class SpoolDefaultPoolContractTests(QueueStoreContract, TestCase):
    """The contract, with the reactor's thread pool."""

    def make_store(self) -> Deferred[SpoolQueueStore]:
        store = SpoolQueueStore(temp_dir(self), reactor, min_free=0)
        self.addCleanup(store.wait_idle)
        return store.recover().addCallback(lambda _: store)


class SpoolTests(TestCase):
    """The spool with real threads and a real directory."""

    def setUp(self) -> None:
        self.pool = started_pool(self)
        self.path = temp_dir(self)

    def make(self, **kwargs: Any) -> SpoolQueueStore:
        kwargs.setdefault("threadpool", self.pool)
        kwargs.setdefault("min_free", 0)
        store = SpoolQueueStore(self.path, reactor, **kwargs)
        self.addCleanup(store.wait_idle)
        return store

    @inlineCallbacks
    def recovered(self, **kwargs: Any) -> Generator[Deferred[Any], Any, SpoolQueueStore]:
        store = self.make(**kwargs)
        yield store.recover()
        return store

    @inlineCallbacks
    def commit(
        self, store: SpoolQueueStore, data: bytes = MESSAGE, env: Any = None
    ) -> Generator[Deferred[Any], Any, str]:
        writer = store.open_writer()
        writer.write(data)
        queue_id = yield writer.commit(env or two_recipients())
        return str(queue_id)

    def dir(self, name: str) -> str:
        return os.path.join(self.path, name)

    def file(self, name: str, queue_id: str, suffix: str) -> str:
        return os.path.join(self.path, name, queue_id + suffix)

    def read_env(self, name: str, queue_id: str) -> QueueEntry:
        """The entry as its ``.env`` has it, or else its message's trailer."""
        try:
            with open(self.file(name, queue_id, ".env"), "rb") as f:
                return entry_from_json(f.read(), queue_id)
        except FileNotFoundError:
            return entry_from_json(_read_trailer(self.file(name, queue_id, ".msg")), queue_id)

    def read_message(self, name: str, queue_id: str) -> bytes:
        """The message in a ``.msg`` file, without the trailer."""
        return message_in(self.file(name, queue_id, ".msg"))

    def write_file(self, name: str, file_name: str, data: bytes) -> None:
        with open(os.path.join(self.path, name, file_name), "wb") as f:
            f.write(data)

    # -- layout and lifecycle ----------------------------------------------------

    @inlineCallbacks
    def test_layout_after_commit(self) -> _Test:
        store = yield self.recovered()
        data = b"x" * 200_000 + b"\r\n.\r\n"
        queue_id = yield self.commit(store, data)
        # One file: the message, then the entry as committed.
        self.assertEqual(listing(self.dir("queue")), [queue_id + ".msg"])
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual(listing(self.dir("quarantine")), [])
        self.assertEqual(self.read_message("queue", queue_id), data)
        self.assertEqual(self.read_env("queue", queue_id), (yield store.get(queue_id)))
        message = yield store.open_message(queue_id)
        try:
            self.assertEqual(message.read(), data)
            self.assertEqual(message.read(), b"")
        finally:
            message.close()
        # A change of state writes the .env, which then takes precedence.
        yield store.hold(queue_id, "looking")
        self.assertEqual(listing(self.dir("queue")), [queue_id + ".env", queue_id + ".msg"])
        self.assertEqual(self.read_env("queue", queue_id).state, EntryState.HOLD)

    @inlineCallbacks
    def test_recover_first(self) -> _Test:
        store = self.make()
        self.assertRaises(RuntimeError, store.open_writer)
        yield store.recover()
        store.open_writer().abort()
        try:
            yield store.recover()
        except RuntimeError:
            pass
        else:
            self.fail("a second recover() must be refused")

    @inlineCallbacks
    def test_state_updates_are_written(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        yield store.claim(4e9, 10, 60)
        yield store.record(queue_id, [RecipientResult(ALICE, DeliveryStatus.DELIVERED, OK)])
        yield store.reschedule(queue_id, 5e9, "451 later")
        on_disk = self.read_env("queue", queue_id)
        self.assertEqual(on_disk, (yield store.get(queue_id)))
        self.assertEqual(on_disk.state, EntryState.DEFERRED)
        self.assertEqual(on_disk.attempts, 1)
        self.assertEqual(dict(on_disk.recipients)[ALICE], RecipientState.DELIVERED)
        yield store.hold(queue_id, "operator")
        self.assertEqual(self.read_env("queue", queue_id).state, EntryState.HOLD)
        self.assertEqual(listing(self.dir("tmp")), [])

    @inlineCallbacks
    def test_record_done_removes_files(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        yield store.record(
            queue_id,
            [
                RecipientResult(ALICE, DeliveryStatus.DELIVERED, OK),
                RecipientResult(BOB, DeliveryStatus.DELIVERED, OK),
            ],
        )
        self.assertEqual(listing(self.dir("queue")), [])

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
        self.assertEqual(listing(self.dir("queue")), [])

    @inlineCallbacks
    def test_quarantine_moves_files(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        yield store.quarantine(queue_id, "looks broken")
        self.assertEqual(listing(self.dir("queue")), [])
        self.assertEqual(listing(self.dir("quarantine")), [queue_id + ".env", queue_id + ".msg"])
        on_disk = self.read_env("quarantine", queue_id)
        self.assertEqual((on_disk.state, on_disk.reason), (EntryState.QUARANTINE, "looks broken"))
        yield store.quarantine(queue_id, "still broken")
        self.assertEqual(self.read_env("quarantine", queue_id).reason, "still broken")

        restarted = yield self.recovered()
        entry = yield restarted.get(queue_id)
        self.assertEqual((entry.state, entry.reason), (EntryState.QUARANTINE, "still broken"))
        message = yield restarted.open_message(queue_id)
        with message:
            self.assertEqual(message.read(), MESSAGE)
        yield restarted.delete(queue_id)
        self.assertEqual(listing(self.dir("quarantine")), [])

    # -- recovery ----------------------------------------------------------------

    @inlineCallbacks
    def test_recovery_after_crash(self) -> _Test:
        store = yield self.recovered()
        leased = yield self.commit(store)
        partial = yield self.commit(store)
        later = yield self.commit(store)
        yield store.claim(4e9, 10, 600)
        yield store.record(partial, [RecipientResult(ALICE, DeliveryStatus.DELIVERED, OK)])
        yield store.reschedule(later, 5e9, "451 later")
        in_flight = store.open_writer()
        in_flight.write(b"y" * 100_000)
        yield store.wait_idle()
        # What a crash leaves: a message being received, a removal stopped
        # between its unlinks, and other debris in tmp/.
        self.assertEqual(listing(self.dir("tmp")), [in_flight.queue_id + ".msg"])
        self.write_file("tmp", "ORPHANENV.env", b"{}")
        os.mkdir(os.path.join(self.dir("tmp"), "junk"))
        self.write_file("queue", "HALFREMOVED.env", b"{}")
        self.write_file("queue", "README", b"not ours")
        # A message file with no entry at its end is not ours to delete.
        self.write_file("queue", "STRAY.msg", b"Subject: who wrote this?\r\n")

        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 4)
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertNotIn("HALFREMOVED.env", listing(self.dir("queue")))
        self.assertNotIn("STRAY.msg", listing(self.dir("queue")))
        self.assertIn("STRAY.msg", listing(self.dir("quarantine")))
        self.assertEqual((yield restarted.get("STRAY")).state, EntryState.QUARANTINE)
        self.assertIn("README", listing(self.dir("queue")))
        now = reactor.seconds()
        for queue_id in (leased, partial):
            entry = yield restarted.get(queue_id)
            self.assertEqual(entry.state, EntryState.DEFERRED)
            self.assertLessEqual(entry.next_attempt, now)
        self.assertEqual((yield restarted.get(partial)).pending, (BOB,))
        entry = yield restarted.get(later)
        self.assertEqual((entry.state, entry.next_attempt), (EntryState.DEFERRED, 5e9))
        claimed = yield restarted.claim(now, 10, 60)
        self.assertEqual(sorted(e.queue_id for e in claimed), sorted([leased, partial]))
        message = yield restarted.open_message(leased)
        with message:
            self.assertEqual(message.read(), MESSAGE)
        stats = yield restarted.stats()
        self.assertEqual(stats[EntryState.INCOMING], 0)

    @inlineCallbacks
    def test_recovery_quarantines_unreadable_envelopes(self) -> _Test:
        store = yield self.recovered()
        good = yield self.commit(store)
        self.write_file("queue", "GARBAGE.env", b"\x00not json")
        self.write_file("queue", "GARBAGE.msg", b"Subject: lost\r\n")
        document = _read_trailer(self.file("queue", good, ".msg"))
        # A good envelope under another file's name is damage too.
        self.write_file("queue", "MISNAMED.env", document)
        self.write_file("queue", "MISNAMED.msg", MESSAGE)

        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 3)
        self.assertEqual(listing(self.dir("queue")), [good + ".msg"])
        self.assertEqual(
            listing(self.dir("quarantine")),
            ["GARBAGE.env", "GARBAGE.msg", "MISNAMED.env", "MISNAMED.msg"],
        )
        with open(self.file("quarantine", "GARBAGE", ".env"), "rb") as f:
            self.assertEqual(f.read(), b"\x00not json")
        for queue_id in ("GARBAGE", "MISNAMED"):
            entry = yield restarted.get(queue_id)
            self.assertEqual(entry.state, EntryState.QUARANTINE)
            self.assertIn("unreadable", entry.reason)
        self.assertEqual((yield restarted.get("GARBAGE")).size, len(b"Subject: lost\r\n"))
        claimed = yield restarted.claim(4e9, 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [good])
        listed = yield restarted.list(state=EntryState.QUARANTINE)
        self.assertEqual([e.queue_id for e in listed], ["GARBAGE", "MISNAMED"])
        yield restarted.delete("GARBAGE")
        self.assertEqual(listing(self.dir("quarantine")), ["MISNAMED.env", "MISNAMED.msg"])

    @inlineCallbacks
    def test_recovery_finishes_interrupted_removals(self) -> _Test:
        """A removal unlinks the .msg first; an .env left alone is removed."""
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        yield store.hold(queue_id, "looking")
        os.unlink(self.file("queue", queue_id, ".msg"))
        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 0)
        self.assertEqual(listing(self.dir("queue")), [])
        self.assertIsNone((yield restarted.get(queue_id)))

    @inlineCallbacks
    def test_recovery_finishes_interrupted_quarantines(self) -> _Test:
        store = yield self.recovered()
        env_only = yield self.commit(store)
        moved_both = yield self.commit(store)
        # Stopped after the new .env was in place, before the message moved:
        entry = yield store.get(env_only)
        held = attrs.evolve(entry, state=EntryState.QUARANTINE, reason="operator")
        self.write_file("quarantine", env_only + ".env", entry_to_json(held))
        # Stopped after both moved, before the old .env went:
        yield store.hold(moved_both, "looking")
        with open(self.file("queue", moved_both, ".env"), "rb") as f:
            old = f.read()
        yield store.quarantine(moved_both, "operator")
        self.write_file("queue", moved_both + ".env", old)

        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 2)
        self.assertEqual(listing(self.dir("queue")), [])
        for queue_id in (env_only, moved_both):
            entry = yield restarted.get(queue_id)
            self.assertEqual((entry.state, entry.reason), (EntryState.QUARANTINE, "operator"))
            message = yield restarted.open_message(queue_id)
            with message:
                self.assertEqual(message.read(), MESSAGE)

    @inlineCallbacks
    def test_recovery_drops_finished_entries(self) -> _Test:
        store = yield self.recovered()
        queue_id = yield self.commit(store)
        entry = yield store.get(queue_id)
        done = tuple((r, RecipientState.DELIVERED) for r, _ in entry.recipients)
        finished = attrs.evolve(entry, recipients=done)
        self.write_file("queue", queue_id + ".env", entry_to_json(finished))
        restarted = self.make()
        self.assertEqual((yield restarted.recover()), 0)
        self.assertEqual(listing(self.dir("queue")), [])

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

        for name, paths in [("fsync", False), ("rename", True), ("unlink", True), ("open", True)]:
            self.patch(os, name, spy(name, getattr(os, name), paths))

        store = yield self.recovered()
        ids = []
        for size in (10, 100_000, 1_000_000):
            ids.append((yield self.commit(store, b"z" * size)))
        writer = store.open_writer()
        writer.write(b"w" * 200_000)
        writer.abort()
        yield store.claim(4e9, 10, 60)
        yield store.record(ids[0], [RecipientResult(ALICE, DeliveryStatus.TRANSIENT, LATER)])
        yield store.reschedule(ids[0], 4e9, "later")
        yield store.flush()
        yield store.hold(ids[0], "operator")
        yield store.release(ids[0])
        yield store.requeue(ids[0])
        yield store.quarantine(ids[1], "broken")
        message = yield store.open_message(ids[1])
        message.close()
        yield store.delete(ids[1])
        yield store.record(
            ids[2],
            [
                RecipientResult(ALICE, DeliveryStatus.DELIVERED, OK),
                RecipientResult(BOB, DeliveryStatus.DELIVERED, OK),
            ],
        )
        yield store.wait_idle()
        yield self.recovered()

        self.assertEqual(sorted(seen), ["fsync", "open", "rename", "unlink"])
        main = threading.main_thread()
        for name, threads in seen.items():
            self.assertNotIn(main, threads, f"os.{name} ran on the reactor thread")
        # Every fsync the store counted is one that was seen off the reactor
        # thread (the second recovery had nothing to make durable).
        self.assertEqual(store.stats_fsyncs, len(seen["fsync"]))

    @inlineCallbacks
    def test_group_commit_one_thread(self) -> _Test:
        """
        With one thread, all commits queue before the first directory fsync,
        which covers the first; the second covers all the others.
        """
        store = yield self.recovered(threadpool=started_pool(self, threads=1))
        before = store.stats_dir_fsyncs
        writers = [store.open_writer() for _ in range(10)]
        commits = []
        for writer in writers:
            writer.write(MESSAGE)
            commits.append(writer.commit(two_recipients()))
        ids = []
        for d in commits:
            ids.append((yield d))
        self.assertEqual(store.stats_dir_fsyncs - before, 2)
        self.assertEqual(len(listing(self.dir("queue"))), 10)
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
        self.assertEqual(self.read_message("queue", queue_id), chunk * 64)

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

    def run_one(self) -> str:
        on_result, f, args, kwargs = self.jobs.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)
        return str(f.__name__)

    def run_all(self) -> list[str]:
        ran = []
        while self.jobs:
            ran.append(self.run_one())
        return ran


class SpoolStepTests(SynchronousTestCase):
    """The spool's steps one by one, with a pool the test runs by hand."""

    def setUp(self) -> None:
        self.path = temp_dir(self)
        self.clock = SyncReactor()
        self.pool = ManualPool()
        self.store = self.make()

    def make(self, **kwargs: Any) -> SpoolQueueStore:
        store = SpoolQueueStore(self.path, self.clock, threadpool=self.pool, min_free=0, **kwargs)
        d = store.recover()
        self.pool.run_all()
        self.successResultOf(d)
        return store

    def dir(self, name: str) -> str:
        return os.path.join(self.path, name)

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
                ("rename", f"tmp/{queue_id}.msg", f"queue/{queue_id}.msg"),
                ("fsync", "queue"),
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
        # The first commit's renames are done: a directory fsync starts.
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

    def test_state_changes_share_dir_fsyncs(self) -> None:
        ids = []
        for _ in range(5):
            writer = self.store.open_writer()
            writer.write(MESSAGE)
            d = writer.commit(two_recipients())
            self.pool.run_all()
            ids.append(self.successResultOf(d))
        before = self.store.stats_dir_fsyncs
        holds = [self.store.hold(queue_id, "operator") for queue_id in ids]
        self.pool.run_all()
        for d in holds:
            self.successResultOf(d)
        self.assertLessEqual(self.store.stats_dir_fsyncs - before, 2)

    def test_back_pressure(self) -> None:
        store = self.make(high_water=256 * 1024)
        writer = store.open_writer()
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        chunk = b"b" * 80 * 1024  # each write passes WRITE_CHUNK and goes to a thread
        for _ in range(3):
            writer.write(chunk)
        self.assertEqual(producer.calls, [])
        writer.write(chunk)  # 320 KiB outstanding, over 256 KiB
        self.assertEqual(producer.calls, ["pause"])
        self.assertTrue(writer.paused)
        writer.write(chunk)
        self.assertEqual(producer.calls, ["pause"])
        # One writer's chunks go to the pool one after another, in order.
        self.assertEqual(self.pool.names(), ["_append"])
        self.pool.run_one()
        self.pool.run_one()
        self.pool.run_one()  # 160 KiB: still above half
        self.assertEqual(producer.calls, ["pause"])
        self.pool.run_one()  # 80 KiB
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertFalse(writer.paused)
        d = writer.commit(two_recipients())
        self.pool.run_all()
        queue_id = self.successResultOf(d)
        self.assertEqual(message_in(os.path.join(self.dir("queue"), queue_id + ".msg")),
                         chunk * 5)
        self.assertEqual(self.successResultOf(store.get(queue_id)).size, len(chunk) * 5)

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
        self.assertEqual(os.listdir(self.dir("tmp")), [])
        self.assertEqual(os.listdir(self.dir("queue")), [])
        stats = self.successResultOf(self.store.stats())
        self.assertEqual(stats[EntryState.INCOMING], 0)

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
        self.assertEqual(os.listdir(self.dir("tmp")), [])
        self.assertEqual(os.listdir(self.dir("queue")), [])
        self.assertIsNone(self.successResultOf(self.store.get(writer.queue_id)))

    def test_failed_dir_fsync_fails_the_commit(self) -> None:
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
        self.assertEqual(os.listdir(self.dir("queue")), [])
        self.assertEqual(self.successResultOf(self.store.list()), [])

    def test_failed_flush_reports_the_error(self) -> None:
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(two_recipients())
        self.pool.run_all()
        queue_id = self.successResultOf(d)
        self.successResultOf(self.store.claim(4e9, 10, 60))
        rescheduled = self.store.reschedule(queue_id, 5e9, "later")
        self.pool.run_all()
        self.successResultOf(rescheduled)

        def rename(src: str, dst: str) -> None:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "rename", rename)
        flushed = self.store.flush()
        self.pool.run_all()
        self.failureResultOf(flushed, OSError)

    def test_writes_stay_in_order(self) -> None:
        writer = self.store.open_writer()
        parts = [bytes([65 + i]) * 70_000 for i in range(6)]
        for part in parts:
            writer.write(part)
        d = writer.commit(two_recipients())
        self.assertEqual(self.pool.run_all(), ["_append"] * 6 + ["_finish", "_fsync_dir"])
        queue_id = self.successResultOf(d)
        self.assertEqual(message_in(os.path.join(self.dir("queue"), queue_id + ".msg")),
                         b"".join(parts))


class MessageFileTests(SynchronousTestCase):
    def test_seeks_within_the_message_only(self) -> None:
        from mailframe.stores.spool import _open_first

        path = os.path.join(temp_dir(self) + "-m", "x.msg")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"message bytes" + b"TRAILER")
        message = _open_first([path], len(b"message bytes"))
        try:
            self.assertEqual(message.seek(0, os.SEEK_END), 13)
            self.assertEqual(message.read(), b"")
            message.seek(8)
            self.assertEqual(message.read(), b"bytes")
            message.seek(-5, os.SEEK_END)
            self.assertEqual(message.read(3), b"byt")
        finally:
            message.close()

"""
One spool shared by worker processes: each worker's store has a slot, its
own ``active/<slot>/`` and ``tmp/<slot>/``. Two stores on one directory
stand for two workers: a claim race gives each entry to exactly one, a
worker's recovery leaves the others' active entries alone, and the
``mailframe queue`` command's view sees every slot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailframe.envelope import EntryState
from mailframe.stores import SpoolQueueStore, StoreUnavailable
from mailframe.stores.spool import WRITE_CHUNK

from .test_spool import MESSAGE, delivered, listing, started_pool, temp_dir, two_recipients

_Test = Generator[Deferred[Any], Any, None]
#: Locks the file named by its argument as a server does, says so, and
#: holds it until its input ends.
_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
sys.stdin.read()
"""
NOW = 4e9


class SharedSpoolTests(TestCase):
    def setUp(self) -> None:
        self.pool = started_pool(self, threads=6)
        self.path = temp_dir(self)

    def make(self, slot: str | None) -> SpoolQueueStore:
        store = SpoolQueueStore(self.path, reactor, threadpool=self.pool, min_free=0, slot=slot)
        self.addCleanup(store.stop)
        return store

    @inlineCallbacks
    def worker(self, slot: str | None) -> Generator[Deferred[Any], Any, SpoolQueueStore]:
        store = self.make(slot)
        yield store.recover()
        return store

    @inlineCallbacks
    def commit(
        self, store: SpoolQueueStore, count: int
    ) -> Generator[Deferred[Any], Any, list[str]]:
        ids = []
        for _ in range(count):
            writer = store.open_writer()
            writer.write(MESSAGE)
            ids.append(str((yield writer.commit(two_recipients()))))
        return ids

    def names(self, *parts: str) -> list[str]:
        return [name[:-4] for name in listing(os.path.join(self.path, *parts))
                if name.endswith(".msg")]

    def hold_lock(self) -> int:
        """Lock the spool from another process, as a running server does; its pid."""
        os.makedirs(self.path, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, os.path.join(self.path, "lock")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdin is not None and holder.stdout is not None

        def release() -> None:
            holder.communicate(timeout=30)

        self.addCleanup(release)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        return holder.pid

    @inlineCallbacks
    def test_a_spool_locked_by_another_process_is_not_recovered(self) -> _Test:
        pid = self.hold_lock()
        with open(os.path.join(self.path, "tmp-marker"), "w"):
            pass
        store = self.make(None)
        try:
            yield store.recover()
        except StoreUnavailable as error:
            self.assertEqual(
                str(error),
                f"the spool {self.path} is in use by another mailframe server (pid {pid});"
                f" stop it, or give this one a queue_dir of its own")
        else:
            self.fail("recovered a spool that another process holds")
        # Nothing was touched: not even the directories were made.
        self.assertEqual(sorted(os.listdir(self.path)), ["lock", "tmp-marker"])

    @inlineCallbacks
    def test_workers_recover_their_slots_under_the_owner_lock(self) -> _Test:
        self.hold_lock()
        os.makedirs(os.path.join(self.path, "tmp"))
        worker = yield self.worker("1")
        self.assertEqual(len((yield self.commit(worker, 2))), 2)

    @inlineCallbacks
    def test_the_owner_writes_its_pid_and_takes_the_lock_again(self) -> _Test:
        yield self.worker(None)
        with open(os.path.join(self.path, "lock")) as handle:
            self.assertEqual(handle.read(), f"{os.getpid()}\n")
        # A POSIX lock is the process's: another store of it may recover.
        yield self.worker(None)

    def test_slot_names_are_checked(self) -> None:
        for bad in ("", "../x", "a/b", "x" * 33):
            self.assertRaises(ValueError, SpoolQueueStore, self.path, reactor, slot=bad)

    @inlineCallbacks
    def test_a_worker_writes_and_claims_in_its_slot(self) -> _Test:
        store = yield self.worker("3")
        writer = store.open_writer()
        writer.write(MESSAGE * (WRITE_CHUNK // len(MESSAGE) + 1))
        # A large message is written as it comes, into the slot's tmp/.
        yield store.wait_idle()
        self.assertEqual(listing(os.path.join(self.path, "tmp", "3")), [writer.queue_id + ".msg"])
        queue_id = yield writer.commit(two_recipients())
        self.assertEqual(self.names("incoming"), [queue_id])
        [entry] = yield store.claim(NOW, 10, 600)
        self.assertEqual(self.names("active", "3"), [queue_id])
        self.assertEqual(self.names("active"), [])
        yield store.reschedule(queue_id, NOW + 60, "later")
        self.assertEqual(self.names("deferred"), [queue_id])
        [entry] = yield store.claim(NOW + 61, 10, 600)
        yield store.record(delivered(entry))
        self.assertEqual(store.path, self.path)
        for state in ("incoming", "deferred", "hold", "corrupt"):
            self.assertEqual(self.names(state), [])
        self.assertEqual(self.names("active", "3"), [])

    @inlineCallbacks
    def test_a_claim_race_gives_each_entry_to_one_worker(self) -> _Test:
        first = yield self.worker("1")
        ids = yield self.commit(first, 60)
        # The second worker starts now, and sees all of them.
        second = yield self.worker("2")
        got = yield gatherResults([
            gatherResults([first.claim(NOW, 7, 600), second.claim(NOW, 7, 600)])
            for _ in range(10)
        ])
        mine = [e.queue_id for pair in got for e in pair[0]]
        theirs = [e.queue_id for pair in got for e in pair[1]]
        self.assertEqual(len(mine), len(set(mine)))
        self.assertEqual(len(theirs), len(set(theirs)))
        self.assertEqual(set(mine) & set(theirs), set())
        self.assertEqual(set(mine) | set(theirs), set(ids))
        self.assertEqual(sorted(self.names("active", "1")), sorted(mine))
        self.assertEqual(sorted(self.names("active", "2")), sorted(theirs))
        # Both got some: the second worker's index had them all.
        self.assertTrue(mine)
        self.assertTrue(theirs)

    @inlineCallbacks
    def test_recovery_of_a_slot_leaves_the_others_alone(self) -> _Test:
        zero = yield self.worker("0")
        ids = yield self.commit(zero, 4)
        claimed = yield zero.claim(NOW, 2, 600)
        busy = {e.queue_id for e in claimed}
        one = yield self.worker("1")
        taken = yield one.claim(NOW, 10, 600)
        # Slot 1 takes what was waiting, never what slot 0 is delivering.
        self.assertEqual({e.queue_id for e in taken}, set(ids) - busy)
        self.assertEqual(set(self.names("active", "0")), busy)
        # Slot 1 dies with its claims; its next self puts them back, due now.
        writer = one.open_writer()
        writer.write(MESSAGE * (WRITE_CHUNK // len(MESSAGE) + 1))
        yield one.wait_idle()
        again = yield self.worker("1")
        self.assertEqual(self.names("active", "1"), [])
        self.assertEqual(listing(os.path.join(self.path, "tmp", "1")), [])
        self.assertEqual(set(self.names("deferred")), set(ids) - busy)
        self.assertEqual(set(self.names("active", "0")), busy)
        retaken = yield again.claim(NOW, 10, 600)
        self.assertEqual({e.queue_id for e in retaken}, set(ids) - busy)
        # Slot 0 finishes its own, undisturbed.
        for entry in claimed:
            yield zero.record(delivered(entry))
        self.assertEqual(self.names("active", "0"), [])

    @inlineCallbacks
    def test_a_server_that_owns_the_spool_recovers_every_slot(self) -> _Test:
        zero = yield self.worker("0")
        one = yield self.worker("1")
        a = yield self.commit(zero, 2)
        yield zero.claim(NOW, 10, 600)
        b = yield self.commit(one, 1)
        yield one.claim(NOW, 10, 600)
        writer = one.open_writer()
        writer.write(MESSAGE * (WRITE_CHUNK // len(MESSAGE) + 1))
        yield one.wait_idle()
        whole = yield self.worker(None)
        self.assertEqual(set(self.names("deferred")), {*a, *b})
        self.assertEqual(self.names("active", "0") + self.names("active", "1"), [])
        self.assertEqual(listing(os.path.join(self.path, "tmp")), [])
        taken = yield whole.claim(NOW, 10, 600)
        self.assertEqual({e.queue_id for e in taken}, {*a, *b})
        self.assertEqual(set(self.names("active")), {*a, *b})

    @inlineCallbacks
    def test_the_command_sees_every_slot(self) -> _Test:
        zero = yield self.worker("0")
        one = yield self.worker("1")
        a = yield self.commit(zero, 2)
        b = yield self.commit(one, 2)
        yield zero.claim(NOW, 1, 600)
        yield one.claim(NOW, 1, 600)
        waiting = yield self.commit(one, 1)
        command = self.make(None)
        listed = yield command.list()
        self.assertEqual({e.queue_id for e in listed}, {*a, *b, *waiting})
        states = {e.queue_id: e.state for e in listed}
        self.assertEqual(list(states.values()).count(EntryState.ACTIVE), 2)
        active = yield command.list(EntryState.ACTIVE)
        self.assertEqual(len(active), 2)
        stats = yield command.stats()
        self.assertEqual(dict(stats.counts)[EntryState.ACTIVE], 2)
        self.assertEqual(dict(stats.counts)[EntryState.INCOMING], 3)
        [busy] = self.names("active", "1")
        entry = yield command.get(busy)
        self.assertEqual(entry.state, EntryState.ACTIVE)
        message = yield command.open_message(busy)
        try:
            self.assertEqual(message.read(), MESSAGE)
        finally:
            message.close()
        # An operator may hold it or delete it where it is.
        yield command.hold(busy, "look at it")
        self.assertEqual(self.names("hold"), [busy])
        [other] = self.names("active", "0")
        yield command.delete(other)
        self.assertEqual(self.names("active", "0"), [])
        after = yield command.stats()
        self.assertEqual(dict(after.counts)[EntryState.ACTIVE], 0)

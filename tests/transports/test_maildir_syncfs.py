"""
The ``maildir`` transport with ``sync = "filesystem"``: the deliveries that
wait while one group is written form the next group, which is written, made
durable by one ``syncfs``, renamed into ``new/``, and made durable again by
a second ``syncfs``; a failed ``syncfs`` fails its group and turns the
transport back to an ``fsync`` of each file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailframe.components import SettingError
from mailframe.envelope import DeliveryStatus, RecipientResult, Route
from mailframe.stores import _syncfs as syncfs_module
from mailframe.stores._syncfs import SYNC_FILESYSTEM, load_syncfs
from mailframe.testing import MemoryQueueStore, envelope
from mailframe.transports import maildir as maildir_module
from mailframe.transports.maildir import MaildirTransport, maildir_maker
from tests.stores.test_spool import ManualPool, SyncReactor, capture_log
from tests.transports.test_maildir import MaildirFixture

MESSAGE = b"Subject: hi\r\n\r\nline one\r\n"
DELIVERED = (b"Return-Path: <s@example.org>\nDelivered-To: alice@example.com\n"
             b"Subject: hi\n\nline one\n")


class RecordingSyncfs:
    """A ``syncfs`` that records, with what ``tmp/`` and ``new/`` hold, and can fail."""

    def __init__(self, root: str, events: list[tuple[Any, ...]]) -> None:
        self.root = root
        self.events = events
        self.fail_at: set[int] = set()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        path = os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), self.root)
        self.events.append(("syncfs", path, self.holding()))
        if self.calls in self.fail_at:
            raise OSError(errno.EIO, "syncfs: Input/output error")

    def holding(self) -> dict[str, bytes]:
        """Every file under the root's Maildirs, by path, with its content."""
        found = {}
        for top, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(top, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, self.root)] = f.read()
        return found


class FilesystemSyncStepTests(SynchronousTestCase):
    """Groups one step at a time, with a pool the test runs by hand."""

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to name the file systems that are synced")
        self.work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.work)
        self.root = os.path.join(self.work, "mail")
        self.events: list[tuple[Any, ...]] = []
        self.syncfs = RecordingSyncfs(self.work, self.events)
        self.patch(syncfs_module, "load_syncfs", lambda: (self.syncfs, ""))
        self.store = MemoryQueueStore(Clock())
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        queue_id = writer.commit(envelope("s@example.org", "alice@example.com")).result
        self.entry = self.successResultOf(self.store.get(queue_id))
        self.pool = ManualPool()
        self.transport = MaildirTransport(self.store, SyncReactor(), threadpool=self.pool,
                                          sync=SYNC_FILESYSTEM)
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.pool.run_all()
        self.successResultOf(self.transport.stop())

    def deliver(self, user: str = "alice") -> Deferred[list[RecipientResult]]:
        recipient = self.entry.envelope.recipients[0]
        route = Route("maildir", {"directory": os.path.join(self.root, user)})
        return self.transport.deliver(self.entry, [(recipient, recipient)], route)

    def trace(self) -> None:
        """Record every fsync and rename too, beside the syncfs calls."""
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.events.append(("rename", os.path.relpath(src, self.work),
                                os.path.relpath(dst, self.work)))
            real_rename(src, dst)

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)

    def test_delivery_order(self) -> None:
        """
        Into a new Maildir: the directories are made and the file written,
        then a syncfs, through the nearest directory that was there before;
        the rename into new/; and a second syncfs before the delivery
        counts. No fsync at all.
        """
        self.trace()
        d = self.deliver()
        self.assertEqual(self.pool.names(), ["_write_together"])
        self.assertNoResult(d)
        self.pool.run_one()
        [result] = self.successResultOf(d)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        [name] = os.listdir(os.path.join(self.root, "alice", "new"))
        tmp, new = f"mail/alice/tmp/{name}", f"mail/alice/new/{name}"
        self.assertEqual(self.events, [
            ("syncfs", ".", {tmp: DELIVERED}),
            ("rename", tmp, new),
            ("syncfs", ".", {new: DELIVERED}),
        ])
        self.assertIn(name, result.reply.text[0])
        self.assertEqual(self.transport.stats_syncfs, 2)
        self.assertIn(os.path.join(self.root, "alice"), maildir_module._known)

    def test_deliveries_that_wait_share_the_next_group(self) -> None:
        first = self.deliver()
        waiting = [self.deliver("alice"), self.deliver("bob")]
        # The two that came while the first group ran wait for the next.
        self.assertEqual(self.pool.names(), ["_write_together"])
        self.pool.run_one()
        self.assertEqual(self.successResultOf(first)[0].status, DeliveryStatus.DELIVERED)
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(self.pool.names(), ["_write_together"])
        self.pool.run_one()
        for d in waiting:
            self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
        self.assertEqual(self.transport.stats_syncfs, 4)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "alice", "new"))), 2)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "bob", "new"))), 1)

    def test_one_failed_delivery_leaves_the_rest_of_its_group(self) -> None:
        os.makedirs(self.root)
        with open(os.path.join(self.root, "bob"), "wb"):
            pass  # a file where bob's Maildir would be
        self.deliver("carol")
        bob, alice = self.deliver("bob"), self.deliver("alice")
        self.pool.run_all()
        [failed] = self.successResultOf(bob)
        self.assertEqual(failed.status, DeliveryStatus.TRANSIENT)
        self.assertEqual((failed.reply.code, failed.reply.status), (451, "4.3.0"))
        self.assertEqual(failed.reply.text, ("Maildir delivery failed: Not a directory",))
        self.assertEqual(self.successResultOf(alice)[0].status, DeliveryStatus.DELIVERED)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "alice", "new"))), 1)

    def check_failed_group(self, failing_call: int) -> None:
        log = capture_log(self)
        self.syncfs.fail_at = {failing_call}
        d = self.deliver()
        self.pool.run_one()
        [result] = self.successResultOf(d)
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)
        self.assertEqual((result.reply.code, result.reply.status), (451, "4.3.0"))
        # Not known to be durable, and to be tried again: nothing stays.
        alice = os.path.join(self.root, "alice")
        self.assertEqual(os.listdir(os.path.join(alice, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(alice, "new")), [])
        [critical] = [e for e in log if e["log_level"] is LogLevel.critical]
        self.assertIn("syncfs of a Maildir's file system failed", critical["log_format"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        # The Maildir made for the group is not trusted as durable.
        self.assertNotIn(alice, maildir_module._known)
        # From now on each delivery is fsynced on its own, as with "file".
        self.trace()
        calls = self.syncfs.calls
        d = self.deliver()
        self.assertEqual(self.pool.names(), ["deliver_to_maildir"])
        self.pool.run_one()
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
        self.assertEqual(self.syncfs.calls, calls)
        self.check_fsynced_on_its_own()

    def check_fsynced_on_its_own(self) -> None:
        """
        The last delivery was made durable as with ``sync = "file"``; and
        its Maildir, which a failed group made, with it.
        """
        alice = os.path.join(self.root, "alice")
        [name] = os.listdir(os.path.join(alice, "new"))
        self.assertEqual(self.events[-5:], [
            ("fsync", alice),
            ("fsync", self.root),
            ("fsync", os.path.join(alice, "tmp", name)),
            ("rename", f"mail/alice/tmp/{name}", f"mail/alice/new/{name}"),
            ("fsync", os.path.join(alice, "new")),
        ])
        self.assertIn(alice, maildir_module._known)

    def test_a_failed_first_syncfs_fails_its_group(self) -> None:
        self.check_failed_group(1)

    def test_a_failed_second_syncfs_fails_its_group(self) -> None:
        """The files already renamed into new/ are taken out again."""
        self.check_failed_group(2)

    def test_a_group_that_waited_on_a_failed_one_is_fsynced(self) -> None:
        self.syncfs.fail_at = {1}
        first, waiting = self.deliver(), self.deliver()
        self.pool.run_one()
        self.assertEqual(self.successResultOf(first)[0].status, DeliveryStatus.TRANSIENT)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.trace()
        self.pool.run_one()
        self.assertEqual(self.successResultOf(waiting)[0].status, DeliveryStatus.DELIVERED)
        self.assertEqual(self.syncfs.calls, 1)
        self.check_fsynced_on_its_own()


class FilesystemSyncContractTests(MaildirFixture, TestCase):
    """The contract, with the real syncfs and the transport's own threads."""

    def setUp(self) -> None:
        if load_syncfs()[0] is None:
            raise SkipTest(load_syncfs()[1])
        super().setUp()

    def make_transport(self) -> MaildirTransport:
        transport = MaildirTransport(self.store, reactor, sync=SYNC_FILESYSTEM)
        self.addCleanup(transport.stop)
        return transport

    async def test_delivers_with_the_real_syncfs(self) -> None:
        transport = self.make_transport()
        results = await Deferred.fromCoroutine(self._deliver_all(transport, 5))
        self.assertEqual({r.status for r in results}, {DeliveryStatus.DELIVERED})
        new = os.path.join(self.root, "alice", "new")
        self.assertEqual(len(os.listdir(new)), 5)
        for name in os.listdir(new):
            with open(os.path.join(new, name), "rb") as f:
                self.assertEqual(f.read(), DELIVERED + b".line two\n")
        self.assertGreaterEqual(transport.stats_syncfs, 2)
        await transport.stop()
        self.assertEqual(transport._sync_fds, {})

    async def _deliver_all(self, transport: MaildirTransport,
                           count: int) -> list[RecipientResult]:
        entry, recipients, route = self.sample_delivery()
        results: list[RecipientResult] = []
        for d in [transport.deliver(entry, recipients, route) for _ in range(count)]:
            results.extend(await d)
        return results


# -- choosing it -------------------------------------------------------------------


def test_the_sync_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert maildir_maker.check({})["sync"] == "file"
    monkeypatch.setattr(syncfs_module, "load_syncfs", lambda: (lambda fd: None, ""))
    assert maildir_maker.check({"sync": SYNC_FILESYSTEM})["sync"] == SYNC_FILESYSTEM
    with pytest.raises(SettingError) as raised:
        maildir_maker.check({"sync": "never"})
    assert raised.value.key == "sync"


def test_filesystem_sync_where_it_is_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncfs_module, "load_syncfs",
                        lambda: (None, "Linux 5.4.0 does not report write errors"))
    store = MemoryQueueStore(Clock())
    with pytest.raises(ValueError, match=r"cannot be used here: Linux 5\.4\.0"):
        MaildirTransport(store, reactor, sync=SYNC_FILESYSTEM)
    with pytest.raises(ValueError, match="'file' or 'filesystem', not 'never'"):
        MaildirTransport(store, reactor, sync="never")
    with pytest.raises(SettingError) as raised:
        maildir_maker.check({"sync": SYNC_FILESYSTEM})
    assert raised.value.key == "sync"
    assert "Linux 5.4.0" in raised.value.message


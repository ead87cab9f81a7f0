"""
The spool with ``sync = "filesystem"``: messages committed together share
one ``syncfs``, in the same order of operations as one ``fsync`` each; a
failed ``syncfs`` fails its group and turns the store back to an ``fsync``
per message; and the setting refuses what the system cannot do safely.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Generator
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mailframe.components import SettingError
from mailframe.stores import SpoolQueueStore
from mailframe.stores import _syncfs as syncfs_module
from mailframe.stores._syncfs import load_syncfs
from mailframe.stores._threads import DEFAULT_THREADS
from mailframe.stores.spool import SYNC_FILESYSTEM, SYNCFS_THREADS, WRITE_CHUNK, spool_maker
from mailframe.tap import Options
from tests.stores.test_spool import (
    MESSAGE,
    ManualPool,
    SyncReactor,
    _SpoolFiles,
    capture_log,
    listing,
    message_in,
    temp_dir,
    two_recipients,
)

_Test = Generator[Deferred[Any], Any, None]


class FakeSyncfs:
    """A ``syncfs`` that records, by path within the spool, and can fail."""

    def __init__(self, root: str, events: list[tuple[str, ...]]) -> None:
        self.root = root
        self.events = events
        self.fail_next = False

    def __call__(self, fd: int) -> None:
        self.events.append(("syncfs", os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"),
                                                      self.root)))
        if self.fail_next:
            self.fail_next = False
            raise OSError(errno.EIO, "syncfs: Input/output error")


class FilesystemSyncStepTests(_SpoolFiles, SynchronousTestCase):
    """Group commits one step at a time, with a pool the test runs by hand."""

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc to name the files that are synced")
        self.path = temp_dir(self)
        self.events: list[tuple[str, ...]] = []
        self.syncfs = FakeSyncfs(self.path, self.events)
        self.patch(syncfs_module, "load_syncfs", lambda: (self.syncfs, ""))
        self.clock = SyncReactor()
        self.pool = ManualPool()
        self.store = SpoolQueueStore(self.path, self.clock, threadpool=self.pool, min_free=0,
                                     sync=SYNC_FILESYSTEM)
        d = self.store.recover()
        self.pool.run_all()
        self.successResultOf(d)

    def trace(self) -> None:
        """Record every fsync and rename too, after the syncfs calls."""
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"),
                                                         self.path)))
            real_fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.events.append(("rename", os.path.relpath(src, self.path),
                                os.path.relpath(dst, self.path)))
            real_rename(src, dst)

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)

    def start(self, data: bytes = MESSAGE, hold: str | None = None) -> tuple[str, Deferred[str]]:
        writer = self.store.open_writer()
        writer.write(data)
        d = writer.commit(two_recipients(), hold=hold)
        d.addCallback(lambda queue_id: self.events.append(("fired", queue_id)) or queue_id)
        return writer.queue_id, d

    def test_commit_order(self) -> None:
        """
        Written, made durable by syncfs and renamed in one trip to a
        thread, then the directory in a second, shared with other commits:
        the order of an fsync per message.
        """
        self.trace()
        seen: list[bytes] = []

        def syncfs(fd: int) -> None:
            # Everything is written by the time syncfs runs.
            [name] = listing(self.dir("tmp"))
            seen.append(self.read("tmp", name))
            self.syncfs(fd)

        self.patch(self.store, "_syncfs", syncfs)
        queue_id, d = self.start(hold="policy")
        self.assertEqual(self.pool.names(), ["_write_together"])
        self.pool.run_one()
        self.assertEqual(self.pool.names(), ["_fsync_dir"])
        self.pool.run_one()
        self.assertEqual(self.successResultOf(d), queue_id)
        self.assertEqual(self.events, [
            ("syncfs", "."),
            ("rename", f"tmp/{queue_id}.msg", f"hold/{queue_id}.msg"),
            ("fsync", "hold"),
            ("fired", queue_id),
        ])
        self.assertEqual(seen, [self.read("hold", f"{queue_id}.msg")])
        self.assertEqual(message_in(self.file("hold", queue_id)), MESSAGE)
        self.assertEqual(self.trailer("hold", queue_id).reason, "policy")

    def test_commits_that_wait_share_the_next_syncfs(self) -> None:
        before = self.store.stats_fsyncs, self.store.stats_dir_fsyncs
        started = [self.start() for _ in range(10)]
        # The first commit's group starts at once; the others wait for it.
        self.assertEqual(self.pool.names(), ["_write_together"])
        self.pool.run_one()
        # Its directory fsync runs beside the next group's syncfs.
        self.assertEqual(sorted(self.pool.names()), ["_fsync_dir", "_write_together"])
        self.pool.run_one("_fsync_dir")
        self.successResultOf(started[0][1])
        for _, d in started[1:]:
            self.assertNoResult(d)
        self.pool.run_one("_write_together")
        for _, d in started[1:]:
            self.assertNoResult(d)
        # As the nine fire together, the first starts a directory fsync at
        # once; the other eight share the next.
        self.assertEqual(self.pool.run_all(), ["_fsync_dir"] * 2)
        self.assertEqual([self.successResultOf(d) for _, d in started[1:]],
                         [queue_id for queue_id, _ in started[1:]])
        self.assertEqual(self.events[:2], [("syncfs", "."), ("fired", started[0][0])])
        self.assertEqual(self.events.count(("syncfs", ".")), 2)
        self.assertEqual(self.store.stats_syncfs, 2)
        # No file fsync at all: only the directory fsyncs.
        self.assertEqual((self.store.stats_fsyncs - before[0],
                          self.store.stats_dir_fsyncs - before[1]), (3, 3))
        self.assertEqual(len(listing(self.dir("incoming"))), 10)
        listed = self.store.list()
        self.pool.run_all()
        self.assertEqual(len(self.successResultOf(listed)), 10)

    def test_a_large_message_is_appended_first(self) -> None:
        parts = [bytes([65 + i]) * (WRITE_CHUNK + 1) for i in range(3)]
        writer = self.store.open_writer()
        for part in parts:
            writer.write(part)
        d = writer.commit(two_recipients())
        self.assertEqual(self.pool.run_all(), ["_append"] * 3 + ["_write_together", "_fsync_dir"])
        queue_id = self.successResultOf(d)
        self.assertEqual(message_in(self.file("incoming", queue_id)), b"".join(parts))
        self.assertEqual(self.store.stats_syncfs, 1)

    def test_one_failed_rename_fails_its_commit_alone(self) -> None:
        ids = [self.start() for _ in range(2)]
        self.pool.run_one()
        real_rename = os.rename
        bad = ids[1][0]

        def rename(src: str, dst: str) -> None:
            if os.path.basename(src) == f"{bad}.msg":
                raise OSError(errno.EIO, "Input/output error")
            real_rename(src, dst)

        self.patch(os, "rename", rename)
        ids.append(self.start())
        self.pool.run_all()
        self.failureResultOf(ids[1][1], OSError)
        self.assertEqual(self.successResultOf(ids[2][1]), ids[2][0])
        self.assertEqual(sorted(listing(self.dir("incoming"))),
                         sorted(f"{q}.msg" for q in (ids[0][0], ids[2][0])))
        self.assertEqual(listing(self.dir("tmp")), [])

    def test_a_failed_syncfs_fails_its_group_then_each_file_is_fsynced(self) -> None:
        log = capture_log(self)
        self.trace()
        failed = [self.start() for _ in range(3)]
        self.pool.run_one()
        self.syncfs.fail_next = True
        self.pool.run_all()
        self.successResultOf(failed[0][1])
        for _, d in failed[1:]:
            self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.EIO)
        # Nothing of the failed group is left, and nothing of it was renamed.
        self.assertEqual(self.where(), {"incoming": [f"{failed[0][0]}.msg"]})
        self.assertEqual(listing(self.dir("tmp")), [])
        self.assertEqual([e for e in self.events if e[0] == "rename"],
                         [("rename", f"tmp/{failed[0][0]}.msg", f"incoming/{failed[0][0]}.msg")])
        errors = [e for e in log if e["log_level"] is LogLevel.critical]
        self.assertEqual(len(errors), 1)
        self.assertIn("fsynced on its own", errors[0]["log_format"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

        del self.events[:]
        queue_id, d = self.start()
        self.pool.run_all()
        self.assertEqual(self.successResultOf(d), queue_id)
        self.assertEqual(self.events, [
            ("fsync", f"tmp/{queue_id}.msg"),
            ("rename", f"tmp/{queue_id}.msg", f"incoming/{queue_id}.msg"),
            ("fsync", "incoming"),
            ("fired", queue_id),
        ])
        self.assertEqual(self.store.stats_syncfs, 1)

    def test_after_stop_each_file_is_fsynced(self) -> None:
        """A descriptor opened later would not report the errors made before it."""
        self.trace()
        d = self.store.stop()
        self.pool.run_all()
        self.successResultOf(d)
        queue_id, committed = self.start()
        self.pool.run_all()
        self.successResultOf(committed)
        self.assertEqual(self.events[0], ("fsync", f"tmp/{queue_id}.msg"))
        self.assertNotIn(("syncfs", "."), self.events)


class FilesystemSyncTests(_SpoolFiles, TestCase):
    """The real syncfs of this system, with the store's own threads."""

    def setUp(self) -> None:
        syncfs, why = load_syncfs()
        if syncfs is None:
            raise SkipTest(why)
        self.path = temp_dir(self)

    @inlineCallbacks
    def test_concurrent_commits_share_syncfs(self) -> _Test:
        store = SpoolQueueStore(self.path, reactor, min_free=0, sync=SYNC_FILESYSTEM)
        self.addCleanup(store.stop)
        yield store.recover()
        count = 20
        writers = [store.open_writer() for _ in range(count)]
        commits = []
        for n, writer in enumerate(writers):
            writer.write(MESSAGE + b"%d\r\n" % n)
            commits.append(writer.commit(two_recipients()))
        ids = yield gatherResults(commits)
        self.assertEqual(len(set(ids)), count)
        for n, queue_id in enumerate(ids):
            self.assertEqual(message_in(self.file("incoming", queue_id)), MESSAGE + b"%d\r\n" % n)
        self.assertGreaterEqual(store.stats_syncfs, 1)
        self.assertLess(store.stats_syncfs, count)
        self.assertEqual(store.stats_fsyncs, store.stats_dir_fsyncs)


# -- choosing it -----------------------------------------------------------------


def test_threads_follow_the_sync_setting(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Any) -> None:
    """
    One syncfs covers every commit waiting for it, so that setting needs
    fewer threads than one fsync per message; a number given is kept.
    """
    monkeypatch.setattr(syncfs_module, "load_syncfs", lambda: (lambda fd: None, None))

    def threads(**options: Any) -> int:
        return SpoolQueueStore(str(tmp_path), reactor, **options)._runner.size  # type: ignore[attr-defined,no-any-return]

    assert threads() == DEFAULT_THREADS == 4
    assert threads(sync="file") == DEFAULT_THREADS
    assert threads(sync=SYNC_FILESYSTEM) == SYNCFS_THREADS == 2
    assert threads(sync=SYNC_FILESYSTEM, threads=3) == 3
    assert threads(sync="file", threads=1) == 1


def test_unknown_sync_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="'file' or 'filesystem', not 'never'"):
        SpoolQueueStore(str(tmp_path), reactor, sync="never")


def test_filesystem_sync_where_it_is_unsafe(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Any) -> None:
    monkeypatch.setattr(syncfs_module, "load_syncfs",
                        lambda: (None, "Linux 5.4.0 does not report write errors"))
    with pytest.raises(ValueError, match=r"cannot be used here: Linux 5\.4\.0"):
        SpoolQueueStore(str(tmp_path), reactor, sync=SYNC_FILESYSTEM)
    with pytest.raises(SettingError) as raised:
        spool_maker.check({"sync": SYNC_FILESYSTEM})
    assert raised.value.key == "sync"
    assert "Linux 5.4.0" in raised.value.message
    assert spool_maker.check({"sync": "file"})["sync"] == "file"


def test_filesystem_sync_refused_with_the_options(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Any) -> None:
    """
    Where syncfs cannot be trusted, ``sync = "filesystem"`` is refused when
    the options are parsed, as a usage error naming the key and its line
    (which twistd prints without a traceback), not when the store is built.
    """
    monkeypatch.setattr(syncfs_module, "load_syncfs",
                        lambda: (None, "Linux 5.4.0 does not report write errors"))
    path = tmp_path / "mailframe.toml"
    path.write_text('[plugins.spool]\nsync = "filesystem"\n')
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--config", str(path)])
    assert str(caught.value) == (
        f"plugins.spool.sync in {path}, line 2: 'filesystem' cannot be used here:"
        " Linux 5.4.0 does not report write errors"
    )


@pytest.mark.parametrize(("system", "release", "reason"), [
    ("darwin", "23.1.0", "syncfs is a Linux call, and this system is darwin"),
    ("linux", "5.7.19", "Linux 5.7.19 does not report write errors"),
    ("linux", "4.19.0-26-amd64", "Linux 4.19.0-26-amd64 does not report"),
    ("linux", "unknown", "Linux unknown does not report"),
])
def test_load_syncfs_refuses(system: str, release: str, reason: str) -> None:
    syncfs, why = load_syncfs(system, release)
    assert syncfs is None
    assert why.startswith(reason)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is a Linux call")
def test_load_syncfs_on_linux(tmp_path: Any) -> None:
    syncfs, why = load_syncfs("linux", "5.8.0")
    assert syncfs is not None, why
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as raised:
        syncfs(fd)
    assert raised.value.errno == errno.EBADF


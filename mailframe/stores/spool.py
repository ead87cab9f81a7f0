"""
The spool: the default queue store, durable in a directory.

Layout under the spool's directory:

``tmp/``
    messages being received, and envelope files being rewritten;
``queue/``
    ``<id>.msg``, the message exactly as it was written, followed by a
    trailer that holds the entry as it was committed (its envelope, as
    JSON, then the JSON's length and a magic number); and, once its
    delivery state has changed, ``<id>.env``, the entry as it is now, which
    then takes precedence over the trailer. An entry exists if and only if
    its ``.msg`` file is here;
``quarantine/``
    entries set aside because they could not be read, or by an operator.

Durability: the server answers ``250`` only after the commit Deferred fires
(see :class:`~mailframe.interfaces.IQueueWriter`), and a commit fires only
after the message and its envelope were written into one file and
``fsync``\\ ed, the file was renamed into ``queue/``, and ``queue/`` itself
was ``fsync``\\ ed: before that, a crash could lose the new name. One file
makes one ``fsync`` per message, and the message and its envelope appear
together or not at all. Commits that finish while a directory ``fsync`` runs
share the next one (group commit), so a busy server pays far fewer than one
directory ``fsync`` per message. Every ``fsync``, and all file I/O larger
than a ``stat``, runs in a thread pool and never on the reactor thread.

Leases live in memory: the spool serves one process. On start,
:meth:`SpoolQueueStore.recover` throws away partial writes and makes the
entries that may have been under delivery deferred and due at once, so a
crash can deliver a message twice but never loses one.
"""

from __future__ import annotations

import enum
import io
import os
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterable
from random import SystemRandom
from typing import Any, BinaryIO, ParamSpec, Protocol, TypeVar, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailframe.address import NULL_PATH
from mailframe.envelope import (
    EntryState,
    Envelope,
    QueueEntry,
    QueueStats,
    RecipientResult,
    RecipientState,
)
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import NoSuchEntry
from mailframe.stores._ids import RandomSource, new_queue_id
from mailframe.stores._index import QueueIndex
from mailframe.stores._pressure import DEFAULT_HIGH_WATER, GatedWriter, ProducerGate
from mailframe.stores._serialize import CorruptEntryError, entry_from_json, entry_to_json

__all__ = ["DEFAULT_MIN_FREE", "WRITE_CHUNK", "SpoolQueueStore", "SpoolReactor"]

#: Free space kept on the spool's file system: below it, :meth:`has_room`
#: says no, and the server answers ``452`` (insufficient system storage,
#: RFC 5321 §4.2.3) with ``4.3.1`` (mail system full, RFC 3463 §3.4) instead
#: of failing half-way through a message.
DEFAULT_MIN_FREE = 64 * 1024 * 1024
#: Seconds for which :meth:`SpoolQueueStore.has_room` trusts the free space
#: it last read.
FREE_SPACE_INTERVAL = 1.0
#: A writer buffers this many octets in memory before a thread writes them.
WRITE_CHUNK = 64 * 1024

#: The end of every committed ``.msg``: the length of the entry's JSON
#: before it, and this magic number.
_TRAILER = struct.Struct(">Q8s")
_MAGIC = b"MFENTRY1"

_log = Logger(namespace="mailframe.stores.spool")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")
_Entries = list[QueueEntry]
# File names the spool reads back: a queue id, then .msg or .env.
_FILE_NAME = re.compile(r"([0-9A-Za-z_-]{1,64})(\.msg|\.env)\Z")


class SpoolReactor(Protocol):
    """What the spool needs of a reactor: its clock, and its threads."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None: ...

    def getThreadPool(self) -> ThreadPool: ...


@attrs.frozen
class _Layout:
    root: str
    tmp: str
    queue: str
    quarantine: str

    @classmethod
    def under(cls, root: str) -> _Layout:
        join = os.path.join
        return cls(root, join(root, "tmp"), join(root, "queue"), join(root, "quarantine"))

    def file(self, directory: str, queue_id: str, suffix: str) -> str:
        return os.path.join(directory, queue_id + suffix)


@attrs.define
class _Scan:
    """What recovery found, gathered in a thread and reported on the reactor."""

    entries: list[QueueEntry] = attrs.Factory(list)
    partial: int = 0
    orphans: int = 0
    finished: int = 0
    quarantined: list[tuple[str, str]] = attrs.Factory(list)


@implementer(IQueueStore)
class SpoolQueueStore:
    """
    The default, durable :class:`~mailframe.interfaces.IQueueStore`: one
    directory on a local file system, for one process.

    Call :meth:`recover` once, and wait for it, before the first
    :meth:`open_writer`.

    :param path: the spool directory; made by :meth:`recover` if missing.
    :param reactor: the reactor: its clock, and its thread pool unless
        *threadpool* is given.
    :param threadpool: where file I/O and every ``fsync`` run; by default
        ``reactor.getThreadPool()``.
    :param random: the random source of queue ids; by default
        :class:`random.SystemRandom`.
    :param min_free: octets of free space to keep; 0 keeps none, though
        :meth:`has_room` still wants twice a message's size.
    :param high_water: octets a writer holds (buffered or being written)
        before it pauses its producer; it resumes it below half of that.

    :ivar stats_fsyncs: ``fsync`` calls made, of files and directories.
    :ivar stats_dir_fsyncs: ``fsync`` calls made of directories.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reactor: SpoolReactor,
        threadpool: ThreadPool | None = None,
        random: RandomSource | None = None,
        min_free: int = DEFAULT_MIN_FREE,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        self.path = os.fspath(path)
        self.min_free = min_free
        self.high_water = high_water
        self.stats_fsyncs = 0
        self.stats_dir_fsyncs = 0
        self._reactor = reactor
        self._pool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._random: RandomSource = random if random is not None else SystemRandom()
        self._layout = _Layout.under(self.path)
        self._lock = threading.Lock()
        self._index = QueueIndex()
        self._writers: dict[str, _SpoolWriter] = {}
        # Per entry, the last of its file operations, so that they run in
        # the order they were asked for.
        self._tails: dict[str, Deferred[None]] = {}
        self._jobs: set[Deferred[Any]] = set()
        self._syncers = {
            self._layout.queue: _DirSyncer(self, self._layout.queue),
            self._layout.quarantine: _DirSyncer(self, self._layout.quarantine),
        }
        self._recovering = False
        self._recovered = False
        self._free: int | None = None
        self._free_at = 0.0

    # -- IQueueStore --------------------------------------------------------

    def recover(self) -> Deferred[int]:
        """
        Make the spool consistent, and load its index. In a thread:

        - make the directories if needed;
        - delete everything in ``tmp/`` (messages whose commit never fired);
        - delete each ``.msg`` in ``queue/`` that has no ``.env`` (a commit
          that stopped between its renames, or a removal between its
          unlinks);
        - load each ``.env``; move an entry that cannot be read, or whose
          message is missing, to ``quarantine/``; finish quarantines that
          a crash interrupted.

        Then every entry that was active, and so may have been under
        delivery, becomes deferred and due now.

        :return: a Deferred firing with the number of entries, quarantined
            ones included.
        """
        if self._recovering or self._recovered:
            return defer.fail(RuntimeError("recover() runs once, when the spool starts"))
        self._recovering = True

        def loaded(scan: _Scan) -> int:
            for entry in scan.entries:
                self._index.add(entry)
            self._index.recover(self._reactor.seconds())
            self._recovered = True
            self._recovering = False
            for queue_id, reason in scan.quarantined:
                _log.warn(
                    "Quarantined {queue_id} at start: {reason}", queue_id=queue_id, reason=reason
                )
            _log.info(
                "Spool {path} recovered: {count} entries; removed {partial} partial writes,"
                " {orphans} half-removed entries and {finished} finished entries",
                path=self.path,
                count=len(self._index),
                partial=scan.partial,
                orphans=scan.orphans,
                finished=scan.finished,
            )
            return len(self._index)

        def failed(failure: Failure) -> Failure:
            self._recovering = False
            return failure

        return self._in_thread(self._scan).addCallbacks(loaded, failed)

    def has_room(self, size: int) -> bool:
        """
        ``False`` when the spool's file system has less free space than
        :attr:`min_free` or twice *size*, whichever is more. The free space
        is read with one ``statvfs`` on the reactor thread at most every
        :data:`FREE_SPACE_INTERVAL` seconds.
        """
        now = self._reactor.seconds()
        if self._free is None or not 0 <= now - self._free_at < FREE_SPACE_INTERVAL:
            path = self.path
            while not os.path.exists(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)
            info = os.statvfs(path)
            self._free, self._free_at = info.f_bavail * info.f_frsize, now
        return self._free >= max(self.min_free, 2 * size)

    def open_writer(self) -> _SpoolWriter:
        """
        Start a new message in ``tmp/``; its queue id is known at once.

        :raises RuntimeError: before :meth:`recover` has finished, which
            would delete the message.
        """
        if not self._recovered:
            raise RuntimeError("recover() the spool before writing to it")
        queue_id = self._new_id()
        writer = _SpoolWriter(self, queue_id)
        self._writers[queue_id] = writer
        return writer

    def open_message(self, queue_id: str) -> Deferred[BinaryIO]:
        """A Deferred firing with the message file, opened in a thread."""
        entry = self._index.get(queue_id)
        if entry is None:
            return defer.fail(NoSuchEntry(queue_id))
        first = self._directory(entry)
        other = self._layout.queue if first == self._layout.quarantine else self._layout.quarantine
        paths = [self._layout.file(d, queue_id, ".msg") for d in (first, other)]
        return self._in_thread(_open_first, paths, entry.size)

    def claim(self, now: float, limit: int, lease: float) -> Deferred[_Entries]:
        """Leases are kept in memory only: a claim writes nothing."""
        return defer.succeed(self._index.claim(now, limit, lease))

    def renew(self, queue_id: str, lease: float) -> Deferred[None]:
        """
        Extend a lease to *lease* seconds from now, by the reactor's clock.
        Fails with :class:`~mailframe.stores.LeaseLost` if it has expired.
        """
        return defer.maybeDeferred(self._index.renew, queue_id, self._reactor.seconds(), lease)

    def record(self, queue_id: str, results: Iterable[RecipientResult]) -> Deferred[None]:
        """
        Record the results of an attempt, and fire once they are durable:
        the ``.env`` file is rewritten, or, when no recipient is left
        pending, both files are removed. When no recipient changed state
        (every result was transient), nothing is written: only the attempt
        count changed, and the :meth:`reschedule` that follows writes it.
        """
        try:
            before = self._index.require(queue_id).recipients
            entry = self._index.record(queue_id, results)
        except Exception:
            return defer.fail()
        if entry.recipients == before:
            return defer.succeed(None)
        if entry.pending:
            return self._persist(entry)
        self._index.remove(queue_id)
        return self._remove_files(entry)

    def reschedule(self, queue_id: str, when: float, reason: str) -> Deferred[None]:
        return self._change(self._index.reschedule, queue_id, when, reason)

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> Deferred[_Entries]:
        return defer.succeed(self._index.page(state, after, limit))

    def get(self, queue_id: str) -> Deferred[QueueEntry | None]:
        return defer.succeed(self._index.get(queue_id))

    def hold(self, queue_id: str, reason: str) -> Deferred[None]:
        return self._change(self._index.hold, queue_id, reason)

    def release(self, queue_id: str) -> Deferred[None]:
        return self._change(self._index.release, queue_id, self._reactor.seconds())

    def delete(self, queue_id: str) -> Deferred[None]:
        try:
            entry = self._index.remove(queue_id)
        except NoSuchEntry:
            return defer.fail()
        return self._remove_files(entry)

    def requeue(self, queue_id: str) -> Deferred[None]:
        return self._change(self._index.requeue, queue_id, self._reactor.seconds())

    def flush(self) -> Deferred[int]:
        """Make every deferred entry due now; fires with how many there were."""
        changed = self._index.flush(self._reactor.seconds())
        writes = [self._persist(entry) for entry in changed]
        done: Deferred[Any] = defer.gatherResults(writes, consumeErrors=True)
        done.addErrback(_first_error)
        return done.addCallback(lambda _: len(changed))

    def stats(self) -> Deferred[QueueStats]:
        return defer.succeed(self._index.stats(incoming=len(self._writers)))

    def quarantine(self, queue_id: str, reason: str) -> Deferred[None]:
        """
        Move an entry's files to ``quarantine/``, with its state and
        *reason* written in its ``.env``. The message moves first; the
        ``.env`` in ``queue/`` is removed only once the new one in
        ``quarantine/`` is durable, so a crash leaves a state that
        :meth:`recover` finishes.
        """
        try:
            before = self._index.require(queue_id)
            after = self._index.quarantine(queue_id, reason)
        except NoSuchEntry:
            return defer.fail()
        if before.state is EntryState.QUARANTINE:
            return self._persist(after)
        document = entry_to_json(after)
        queue, quarantine = self._layout.queue, self._layout.quarantine

        def move() -> Deferred[None]:
            d = self._in_thread(self._move_to_quarantine, queue_id, document)
            d.addCallback(lambda _: self._syncers[quarantine].sync())
            d.addCallback(
                lambda _: self._in_thread(_unlink, self._layout.file(queue, queue_id, ".env"))
            )
            return d.addCallback(lambda _: self._syncers[queue].sync())

        return self._serially(queue_id, move)

    # -- beyond the interface ------------------------------------------------

    def wait_idle(self) -> Deferred[None]:
        """
        A Deferred firing once no file operation is in flight, such as the
        removal of an aborted message; for an orderly shutdown, and for
        tests.
        """
        if not self._jobs:
            return defer.succeed(None)
        pending: Deferred[Any] = defer.DeferredList(list(self._jobs))
        return pending.addCallback(lambda _: self.wait_idle())

    # -- reactor-side helpers -------------------------------------------------

    def _new_id(self) -> str:
        while True:
            queue_id = new_queue_id(self._random, self._reactor.seconds())
            if queue_id not in self._index and queue_id not in self._writers:
                return queue_id

    def _directory(self, entry: QueueEntry) -> str:
        if entry.state is EntryState.QUARANTINE:
            return self._layout.quarantine
        return self._layout.queue

    def _in_thread(self, f: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_R]:
        """Run *f* in the thread pool; :meth:`wait_idle` waits for it."""
        reactor = cast(IReactorFromThreads, self._reactor)
        d = deferToThreadPool(reactor, self._pool, f, *args, **kwargs)
        self._jobs.add(d)

        def finished(result: object) -> object:
            self._jobs.discard(d)
            return result

        d.addBoth(finished)
        return d

    def _serially(self, queue_id: str, op: Callable[[], Deferred[None]]) -> Deferred[None]:
        """Run *op* after every file operation asked before for this entry."""
        tail, outcome = _then(self._tails.get(queue_id), op)
        self._tails[queue_id] = tail

        def forget(_: None) -> None:
            if self._tails.get(queue_id) is tail:
                del self._tails[queue_id]

        tail.addCallback(forget)
        return outcome

    def _change(self, change: Callable[..., QueueEntry], *args: object) -> Deferred[None]:
        try:
            entry = change(*args)
        except Exception:
            return defer.fail()
        return self._persist(entry)

    def _persist(self, entry: QueueEntry) -> Deferred[None]:
        """Rewrite the entry's ``.env`` as it is now, once earlier writes are done."""
        document = entry_to_json(entry)
        directory = self._directory(entry)

        def write() -> Deferred[None]:
            d = self._in_thread(self._replace_env, directory, entry.queue_id, document)
            return d.addCallback(lambda _: self._syncers[directory].sync())

        return self._serially(entry.queue_id, write)

    def _remove_files(self, entry: QueueEntry) -> Deferred[None]:
        """
        Remove a finished entry's files. The directory is not fsynced: if a
        crash undoes the removal, the entry comes back and is delivered
        again, which at-least-once delivery allows (RFC 5321 §6.1), and
        which Postfix risks the same way; nothing can be lost.
        """
        directory = self._directory(entry)

        def remove() -> Deferred[None]:
            return self._in_thread(self._unlink_entry, directory, entry.queue_id)

        return self._serially(entry.queue_id, remove)

    # -- in the thread pool ---------------------------------------------------

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        with self._lock:
            self.stats_fsyncs += 1

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.stats_fsyncs += 1
            self.stats_dir_fsyncs += 1

    def _write_durably(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            self._fsync(fd)
        finally:
            os.close(fd)

    def _replace_env(self, directory: str, queue_id: str, document: bytes) -> None:
        temporary = self._layout.file(self._layout.tmp, queue_id, ".env")
        self._write_durably(temporary, document)
        os.rename(temporary, self._layout.file(directory, queue_id, ".env"))

    def _unlink_entry(self, directory: str, queue_id: str) -> None:
        # The .msg first: once it is gone the entry is, and recovery removes
        # an .env left behind.
        _unlink(self._layout.file(directory, queue_id, ".msg"))
        _unlink(self._layout.file(directory, queue_id, ".env"))

    def _move_to_quarantine(self, queue_id: str, document: bytes) -> None:
        # The new .env first: recovery finishes a quarantine that has it.
        layout = self._layout
        temporary = layout.file(layout.tmp, queue_id, ".env")
        self._write_durably(temporary, document)
        os.rename(temporary, layout.file(layout.quarantine, queue_id, ".env"))
        try:
            os.rename(
                layout.file(layout.queue, queue_id, ".msg"),
                layout.file(layout.quarantine, queue_id, ".msg"),
            )
        except FileNotFoundError:
            pass  # a missing message may be why it is quarantined

    def _scan(self) -> _Scan:
        layout = self._layout
        made = False
        for directory in (layout.tmp, layout.queue, layout.quarantine):
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                made = True
        if made:
            self._fsync_dir(layout.root)
        scan = _Scan()
        for name in os.listdir(layout.tmp):
            _remove_tree(os.path.join(layout.tmp, name))
            scan.partial += 1
        held = _list_entries(layout.quarantine)
        moved = False
        for queue_id, suffixes in sorted(_list_entries(layout.queue).items()):
            held_suffixes = held.get(queue_id, set())
            if ".env" in held_suffixes:
                # A quarantine stopped after its new .env was in place.
                self._finish_quarantine(queue_id, suffixes, held_suffixes)
                moved = True
            elif ".msg" not in suffixes:
                if ".msg" in held_suffixes:
                    # Only a quarantine moves a message out of queue/.
                    reason = "quarantine interrupted"
                    scan.quarantined.append((queue_id, reason))
                    self._quarantine_at_start(queue_id, reason)
                    moved = True
                else:
                    # A removal stopped between its unlinks (.msg goes first).
                    _unlink(layout.file(layout.queue, queue_id, ".env"))
                    scan.orphans += 1
            else:
                moved |= self._load(queue_id, scan)
        if moved:
            self._fsync_dir(layout.queue)
        for queue_id, suffixes in sorted(_list_entries(layout.quarantine).items()):
            if ".env" in suffixes:
                scan.entries.append(self._load_quarantined(queue_id))
        return scan

    def _document(self, queue_id: str) -> bytes:
        """
        The entry's JSON as it is now: its ``.env`` if it has one, else the
        trailer of its ``.msg``.

        :raises CorruptEntryError: when neither can be read.
        """
        layout = self._layout
        try:
            with open(layout.file(layout.queue, queue_id, ".env"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return _read_trailer(layout.file(layout.queue, queue_id, ".msg"))

    def _load(self, queue_id: str, scan: _Scan) -> bool:
        """Load one entry of ``queue/``; ``True`` if it was moved to quarantine."""
        try:
            entry = entry_from_json(self._document(queue_id), queue_id)
        except CorruptEntryError as e:
            reason = f"unreadable envelope: {e}"
            scan.quarantined.append((queue_id, reason))
            self._quarantine_at_start(queue_id, reason)
            return True
        if entry.state is EntryState.QUARANTINE:
            self._quarantine_at_start(queue_id, entry.reason)
            return True
        if not entry.pending:
            self._unlink_entry(self._layout.queue, queue_id)
            scan.finished += 1
            return False
        scan.entries.append(entry)
        return False

    def _quarantine_at_start(self, queue_id: str, reason: str) -> None:
        """Move an entry of ``queue/`` to ``quarantine/``, keeping what can be read."""
        layout = self._layout
        queue_env = layout.file(layout.queue, queue_id, ".env")
        held_env = layout.file(layout.quarantine, queue_id, ".env")
        try:
            data = self._document(queue_id)
        except (CorruptEntryError, FileNotFoundError):
            data = b""
        try:
            entry = entry_from_json(data, queue_id)
        except CorruptEntryError:
            # Keep the damaged file as it is, for whoever looks into it.
            document = data
        else:
            if entry.state is not EntryState.QUARANTINE:
                entry = attrs.evolve(entry, state=EntryState.QUARANTINE, reason=reason)
            document = entry_to_json(entry)
        temporary = layout.file(layout.tmp, queue_id, ".env")
        self._write_durably(temporary, document)
        os.rename(temporary, held_env)
        try:
            os.rename(
                layout.file(layout.queue, queue_id, ".msg"),
                layout.file(layout.quarantine, queue_id, ".msg"),
            )
        except FileNotFoundError:
            pass
        self._fsync_dir(layout.quarantine)
        _unlink(queue_env)

    def _finish_quarantine(self, queue_id: str, suffixes: set[str], held: set[str]) -> None:
        """A quarantine stopped after its new ``.env`` was in place."""
        layout = self._layout
        message = layout.file(layout.queue, queue_id, ".msg")
        if ".msg" in suffixes:
            if ".msg" in held:
                _unlink(message)
            else:
                os.rename(message, layout.file(layout.quarantine, queue_id, ".msg"))
                self._fsync_dir(layout.quarantine)
        _unlink(layout.file(layout.queue, queue_id, ".env"))

    def _load_quarantined(self, queue_id: str) -> QueueEntry:
        layout = self._layout
        with open(layout.file(layout.quarantine, queue_id, ".env"), "rb") as f:
            data = f.read()
        try:
            entry = entry_from_json(data, queue_id)
        except CorruptEntryError as e:
            try:
                size = os.stat(layout.file(layout.quarantine, queue_id, ".msg")).st_size
            except FileNotFoundError:
                size = 0
            # Nothing of the envelope can be trusted: list the entry with
            # an empty one, so that an operator sees it and can delete it.
            return QueueEntry(
                queue_id=queue_id,
                envelope=Envelope(NULL_PATH, ()),
                state=EntryState.QUARANTINE,
                recipients=(),
                reason=f"unreadable envelope: {e}",
                size=size,
            )
        return attrs.evolve(entry, state=EntryState.QUARANTINE)


@attrs.define(eq=False)
class _DirSyncer:
    """
    Group commit for one directory.

    An operation that renamed or removed names in the directory calls
    :meth:`sync` and waits. If no ``fsync`` of the directory is running,
    one starts at once, and covers every change made before it started;
    changes that arrive while it runs wait for the next one, which starts
    when it ends and covers them all.
    """

    _store: SpoolQueueStore
    _path: str
    _waiting: list[Deferred[None]] = attrs.Factory(list)
    _running: bool = False

    def sync(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True

        def finished(result: Failure | None) -> None:
            self._running = False
            for d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if self._waiting and not self._running:
                self._start()

        self._store._in_thread(self._store._fsync_dir, self._path).addBoth(finished)


class _Writing(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    FAILED = "failed"
    ABORTED = "aborted"


@implementer(IQueueWriter)
class _SpoolWriter(GatedWriter):
    """
    One message being written into ``tmp/<id>.msg``.

    Writes collect in memory; past :data:`WRITE_CHUNK` octets a thread
    appends them to the file, one chunk after another. A message smaller
    than that costs one trip to a thread at commit, which writes it,
    ``fsync``\\ s it, writes and ``fsync``\\ s its envelope and renames both, and
    then a share of a directory ``fsync``.
    """

    def __init__(self, store: SpoolQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._state = _Writing.OPEN
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        # The open message file; only thread jobs touch it, one at a time.
        self._fd: int | None = None
        self._error: Failure | None = None
        self._tail: Deferred[None] = defer.succeed(None)
        self._gate = ProducerGate(cast(IReactorTime, store._reactor), store.high_water)

    def write(self, data: bytes) -> None:
        """
        Append *data*. A write error is kept and reported by :meth:`commit`;
        writes after :meth:`abort` are ignored.
        """
        if self._state in (_Writing.ABORTED, _Writing.FAILED):
            return
        if self._state is not _Writing.OPEN:
            raise RuntimeError(f"write() after commit() of {self.queue_id}")
        if not data:
            return
        data = bytes(data)
        self._buffer.append(data)
        self._buffered += len(data)
        self._size += len(data)
        self._gate.add(len(data))
        if self._buffered > WRITE_CHUNK:
            self._flush()

    def commit(self, envelope: Envelope) -> Deferred[str]:
        """
        Write what is left, make the message and its envelope durable, and
        fire with the queue id; see the module's documentation for the
        order of operations. On failure, the files are removed.
        """
        if self._state is not _Writing.OPEN:
            state = self._state.value
            return defer.fail(RuntimeError(f"commit() of {self.queue_id}, which is {state}"))
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._state = _Writing.COMMITTING
        store = self._store
        data = self._take()
        entry = QueueEntry(
            queue_id=self.queue_id,
            envelope=envelope,
            state=EntryState.ACTIVE,
            recipients=tuple((r, RecipientState.PENDING) for r in envelope.recipients),
            next_attempt=store._reactor.seconds(),
            size=self._size,
        )
        document = entry_to_json(entry)

        def finish() -> Deferred[str]:
            if self._error is not None:
                self._gate.done(len(data))
                return defer.fail(self._error)
            d = store._in_thread(self._finish, data, document)

            def written(result: object) -> object:
                self._gate.done(len(data))
                return result

            d.addBoth(written)
            synced = d.addCallback(lambda _: store._syncers[store._layout.queue].sync())
            return synced.addCallback(lambda _: self._committed(entry))

        outcome = self._chain(finish)
        return outcome.addErrback(self._commit_failed)

    def open_message(self) -> Deferred[BinaryIO]:
        """
        A file reading what was written so far, once it is in the file; for
        end-of-data policies that scan the message.
        """
        if self._state is not _Writing.OPEN:
            return defer.fail(RuntimeError(f"open_message() of {self.queue_id} after commit"))
        self._flush()
        return self._chain(lambda: self._store._in_thread(self._open_for_reading))

    def abort(self) -> None:
        """
        Throw the message away, removing its file in a thread. Once
        :meth:`commit` is called this does nothing: the message may already
        be durable, and a duplicate is better than a loss.
        """
        if self._state is not _Writing.OPEN:
            return
        self._state = _Writing.ABORTED
        self._gate.done(len(self._take()))
        self._store._writers.pop(self.queue_id, None)
        self._discard(committed=False)

    # -- on the reactor --------------------------------------------------------

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        return data

    def _chain(self, op: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        self._tail, outcome = _then(self._tail, op)
        return outcome

    def _flush(self) -> None:
        data = self._take()

        def append() -> Deferred[None]:
            if self._error is not None or self._state is _Writing.ABORTED:
                return defer.succeed(None)
            return self._store._in_thread(self._append, data)

        def failed(failure: Failure) -> None:
            if self._error is None:
                self._error = failure

        d = self._chain(append)
        d.addErrback(failed)
        d.addCallback(lambda _: self._gate.done(len(data)))

    def _committed(self, entry: QueueEntry) -> str:
        self._state = _Writing.COMMITTED
        self._store._writers.pop(self.queue_id, None)
        self._store._index.add(entry)
        return self.queue_id

    def _commit_failed(self, failure: Failure) -> Failure:
        self._state = _Writing.FAILED
        self._store._writers.pop(self.queue_id, None)
        self._discard(committed=True)
        return failure

    def _discard(self, committed: bool) -> None:
        def cleanup() -> Deferred[None]:
            return self._store._in_thread(self._remove_files, committed)

        def failed(failure: Failure) -> None:
            _log.failure("Cannot remove {queue_id}", failure, queue_id=self.queue_id)

        self._chain(cleanup).addErrback(failed)

    # -- in the thread pool ------------------------------------------------------

    def _file(self, directory: str, suffix: str) -> str:
        return self._store._layout.file(directory, self.queue_id, suffix)

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = _create(self._file(self._store._layout.tmp, ".msg"))
        _write_all(self._fd, data)

    def _open_for_reading(self) -> BinaryIO:
        if self._error is not None:
            self._error.raiseException()
        if self._fd is None:
            self._fd = _create(self._file(self._store._layout.tmp, ".msg"))
        return open(self._file(self._store._layout.tmp, ".msg"), "rb")

    def _finish(self, data: bytes, document: bytes) -> None:
        store = self._store
        layout = store._layout
        if self._fd is None:
            self._fd = _create(self._file(layout.tmp, ".msg"))
        _write_all(self._fd, data + document + _TRAILER.pack(len(document), _MAGIC))
        store._fsync(self._fd)
        fd, self._fd = self._fd, None
        os.close(fd)
        os.rename(self._file(layout.tmp, ".msg"), self._file(layout.queue, ".msg"))

    def _remove_files(self, committed: bool) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        layout = self._store._layout
        _unlink(self._file(layout.tmp, ".msg"))
        _unlink(self._file(layout.tmp, ".env"))
        if committed:
            # A failed commit may have renamed its files already; its
            # client was not told 250, so the entry must not stay.
            _unlink(self._file(layout.queue, ".env"))
            _unlink(self._file(layout.queue, ".msg"))


def _then(
    tail: Deferred[None] | None, op: Callable[[], Deferred[_T]]
) -> tuple[Deferred[None], Deferred[_T]]:
    """
    Run *op* once *tail* fires. Return the new tail, which fires (always
    with ``None``) when *op* is done, and a Deferred of *op*'s own outcome.
    """
    outcome: Deferred[_T] = Deferred()

    def relay(result: _T | Failure) -> None:
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(result)

    def run(_: object) -> Deferred[None]:
        d: Deferred[_T] = defer.maybeDeferred(op)
        return d.addBoth(relay)

    if tail is None:
        return run(None), outcome
    return tail.addCallback(run), outcome


def _first_error(failure: Failure) -> Failure:
    """The failure inside a :class:`~twisted.internet.defer.FirstError`."""
    if isinstance(failure.value, defer.FirstError):
        return failure.value.subFailure
    return failure


def _create(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        _unlink(path)


class _MessageFile(io.RawIOBase):
    """The first *size* octets of a ``.msg`` file: the message, not its trailer."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._size = size
        self._left = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size - self._left

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.tell(), os.SEEK_END: self._size}[whence]
        position = min(max(base + offset, 0), self._size)
        self._raw.seek(position)
        self._left = self._size - position
        return position

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self._left]
        count = self._raw.readinto(view) or 0
        self._left -= count
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_first(paths: list[str], size: int) -> BinaryIO:
    """The message of the first of *paths* that exists, *size* octets long."""
    for path in paths[:-1]:
        try:
            raw = io.FileIO(path, "rb")
            break
        except FileNotFoundError:
            pass
    else:
        raw = io.FileIO(paths[-1], "rb")
    return cast(BinaryIO, io.BufferedReader(_MessageFile(raw, size)))


def _read_trailer(path: str) -> bytes:
    """
    The entry JSON at the end of a committed ``.msg``.

    :raises CorruptEntryError: when the file has no valid trailer.
    """
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end < _TRAILER.size:
            raise CorruptEntryError("the message file has no envelope trailer")
        f.seek(end - _TRAILER.size)
        length, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != _MAGIC or length > end - _TRAILER.size:
            raise CorruptEntryError("the message file has no envelope trailer")
        f.seek(end - _TRAILER.size - length)
        return f.read(length)


def _list_entries(directory: str) -> dict[str, set[str]]:
    """The queue ids that have files in *directory*, with their suffixes."""
    found: dict[str, set[str]] = {}
    for name in os.listdir(directory):
        match = _FILE_NAME.match(name)
        if match is not None:
            found.setdefault(match.group(1), set()).add(match.group(2))
    return found

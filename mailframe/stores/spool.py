"""
The spool: the default queue store, durable in a directory.

Layout under the spool's directory, after Postfix's queue directories:

``tmp/``
    messages being received, and ``.env`` files being rewritten;
``incoming/``, ``active/``, ``deferred/``, ``hold/``, ``corrupt/``
    ``<id>.msg``, one file per entry: the message exactly as it was
    written, followed by a trailer that holds the entry as it was committed
    (its envelope as JSON, then the JSON's length and a magic number). The
    directory that holds it *is* the entry's state
    (:class:`~mailframe.envelope.EntryState`), and in ``deferred/`` its
    modification time is its next attempt. A change of state is one
    ``rename``, atomic for every process that looks;
``env/``
    ``<id>.env``, the entry's delivery state (each recipient's state,
    attempts and last reply), once it has changed since the commit; it then
    takes precedence over the trailer. Only the server writes it;
``env/<id>.why``
    why an entry is on hold or corrupt, when it was said;
``trigger``
    touched by the ``mailframe queue`` command after it changes something,
    so that a running server looks again at once;
``lock``
    the pid of the server that owns the spool, which holds a lock on this
    file while it runs (see :meth:`SpoolQueueStore.recover`).

So a directory scan tells every entry's state and next attempt: startup
recovery reads no envelope, and an envelope is read when its entry is
claimed, listed or shown.

Durability: the server answers ``250`` only after the commit Deferred fires
(see :class:`~mailframe.interfaces.IQueueWriter`), and a commit fires only
after the message and its envelope were written into one file and
``fsync``\\ ed, the file was renamed into ``incoming/`` (or ``hold/``), and
that directory itself was ``fsync``\\ ed: before that, a crash could lose the
new name. One file makes one ``fsync`` per message, and the message and its
envelope appear together or not at all. Commits that finish while a
directory ``fsync`` runs share the next one (group commit), so a busy server
pays far fewer than one directory ``fsync`` per message.

With ``sync = "filesystem"`` (for a spool on a file system of its own),
messages share the first ``fsync`` too: the commits that arrive while one
group is being made durable wait, and then, in one trip to a thread, their
files are written, one ``syncfs(2)`` makes them all durable, each is renamed
into place, and the directories that gained names are ``fsync``\\ ed. The
order of operations, and so what a crash can leave, is the same as above.
``syncfs`` also writes out every other file of the file system, which is
why it is not the default: on a file system shared with a busy database
every commit would wait for its writes. The spool keeps one descriptor of
its directory open from :meth:`~SpoolQueueStore.recover` on, so that a
write error of any file since then is reported by the next ``syncfs``; the
group that it reaches fails (``451``), and from then on each message is
``fsync``\\ ed on its own, through the descriptor it was written with,
which reports the errors of that file alone. A new ``.env`` is
durable before :meth:`~SpoolQueueStore.record` fires. Moves between
``incoming/``, ``active/`` and ``deferred/`` are not ``fsync``\\ ed: a crash
that undoes one leaves the entry in a state that recovery makes due again.
Every ``fsync``, and all file I/O larger than a ``stat``, runs in one of
the store's few threads and never on the reactor thread.

Leases live in the memory of the server process that claimed the entry.
On start, :meth:`SpoolQueueStore.recover` throws away partial writes and
moves the entries of ``active/``, which may have been under delivery, to
``deferred/``, due at once; so a crash can deliver a message twice but never
loses one.

Worker processes (``mailframe --workers N``) share one spool. Each has a
*slot*: it claims into ``active/<slot>/`` and writes into ``tmp/<slot>/``.
A claim is a rename out of ``incoming/`` or ``deferred/``; when two workers
race for an entry, one rename fails with ``ENOENT`` and that worker leaves
the entry to the other. A worker that starts again recovers only its own
slot, so the entries that the others are delivering stay theirs; the
supervisor recovers the whole spool once, before any worker starts.

The ``mailframe queue`` command uses the same class in another process
without recovery: its operations read and rename files, and the
server, which takes every entry it claims with a rename, never delivers an
entry that the command moved away.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import io
import os
import re
import shutil
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from random import Random
from typing import Any, BinaryIO, Protocol, TypeVar, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.address import NULL_PATH
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import (
    EntryState,
    Envelope,
    QueueEntry,
    QueueStats,
    RecipientState,
)
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import (
    EntryStateError,
    NoSuchEntry,
    StoreUnavailable,
    check_recipients,
)
from mailframe.stores._files import unlink_if_there, write_all
from mailframe.stores._group import Group
from mailframe.stores._ids import RandomSource, id_source, new_queue_id, queue_id_time
from mailframe.stores._index import QueueIndex
from mailframe.stores._pressure import (
    DEFAULT_HIGH_WATER,
    GatedWriter,
    ProducerGate,
    WriterState,
    then,
)
from mailframe.stores._serialize import CorruptEntryError, entry_from_json, entry_to_json
from mailframe.stores._syncfs import SYNC_FILE, SYNC_FILESYSTEM, check_sync, choose_syncfs
from mailframe.stores._threads import (
    DEFAULT_THREADS,
    PoolRunner,
    Runner,
    ThreadPoolLike,
    ThreadRunner,
)

__all__ = [
    "DEFAULT_MIN_FREE",
    "SYNCFS_THREADS",
    "SYNC_FILE",
    "SYNC_FILESYSTEM",
    "WRITE_CHUNK",
    "SpoolQueueStore",
    "SpoolReactor",
]

#: The store's own threads with :data:`SYNC_FILESYSTEM`, unless told
#: otherwise. One ``syncfs`` makes a whole group of commits durable however
#: many threads wait, so two threads are enough: one for the group being
#: made durable, one for the claims, removals and writes meanwhile. More
#: only hand the interpreter's lock round more often: with four, a relayed
#: small message cost about a tenth more CPU.
SYNCFS_THREADS = 2

#: Free space kept on the spool's file system: below it, :meth:`has_room`
#: says no, and the server answers ``452`` (insufficient system storage,
#: RFC 5321 §4.2.3) with ``4.3.1`` (mail system full, RFC 3463 §3.4) instead
#: of failing half-way through a message.
DEFAULT_MIN_FREE = 64 * 1024 * 1024
#: Seconds for which :meth:`SpoolQueueStore.has_room` trusts the free space
#: it last read.
FREE_SPACE_INTERVAL = 1.0
#: A writer buffers this many octets in memory before a thread writes them.
#: Each trip to a thread while the reactor is busy reading the rest of the
#: message hands the interpreter's lock back and forth: with 64 KiB, a
#: 100 KB message made about 57 futex calls, against 33 with 256 KiB, and
#: cost an eighth more CPU. It stays well below the writer's high water
#: mark (:data:`~mailframe.stores._pressure.DEFAULT_HIGH_WATER`), which
#: pauses the client.
WRITE_CHUNK = 256 * 1024
#: Seconds between looks at the ``trigger`` file, while a server watches it.
TRIGGER_INTERVAL = 1.0
#: Pages of names that one scan of the state directories finds for
#: :meth:`SpoolQueueStore.list`, so that paging through a large queue scans
#: the directories once for this many pages, in bounded memory.
LIST_WINDOW = 20
#: Entries committed by this process whose envelopes stay in memory until
#: they are claimed, so that a claim of new mail reads no file.
CACHED_ENTRIES = 10_000

#: The end of every committed ``.msg``: the length of the entry's JSON
#: before it, and this magic number.
_TRAILER = struct.Struct(">Q8s")
_MAGIC = b"MFENTRY1"

_log = Logger(namespace="mailframe.stores.spool")
_R = TypeVar("_R")
_T = TypeVar("_T")
_Entries = list[QueueEntry]
_Taken = list[tuple[str, EntryState]]
_Names = list[str]
_Found_ = list["_Found"]
_Reasons = list[tuple[str, str]]
_Opened = dict[str, BinaryIO]
# A message to commit with others: its writer, the rest of its data, and
# its entry's JSON; and what became of each of several.
_Commit = tuple["_SpoolWriter", bytes, bytes]
_Commits = list[_Commit]
_Errors = list[Exception | None]
# File names the spool reads back: a queue id, then its suffix.
_QUEUE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}\Z")
#: The name of a worker's slot: its own ``active/`` and ``tmp/`` directory.
_SLOT = re.compile(r"[0-9A-Za-z_-]{1,32}\Z")
_STATES = (
    EntryState.INCOMING,
    EntryState.ACTIVE,
    EntryState.DEFERRED,
    EntryState.HOLD,
    EntryState.CORRUPT,
)


class SpoolReactor(Protocol):
    """What the spool needs of a reactor: its clock, and a way back from threads."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None: ...


@attrs.frozen
class _Layout:
    root: str
    slot: str | None = None

    @property
    def tmp(self) -> str:
        base = os.path.join(self.root, "tmp")
        return base if self.slot is None else os.path.join(base, self.slot)

    @property
    def env(self) -> str:
        return os.path.join(self.root, "env")

    @property
    def trigger(self) -> str:
        return os.path.join(self.root, "trigger")

    @property
    def lock(self) -> str:
        return os.path.join(self.root, "lock")

    def directory(self, state: EntryState) -> str:
        """The directory of *state*; for ``active``, this store's own."""
        base = os.path.join(self.root, state.value)
        if state is EntryState.ACTIVE and self.slot is not None:
            return os.path.join(base, self.slot)
        return base

    def directories(self, state: EntryState) -> list[str]:
        """
        Every directory that holds entries in *state*: for ``active``, this
        store's own first, then the plain ``active/`` and every worker's
        ``active/<slot>/`` (read from the disk, so in a thread).
        """
        own = self.directory(state)
        if state is not EntryState.ACTIVE:
            return [own]
        base = os.path.join(self.root, state.value)
        found = [own] if own == base else [own, base]
        try:
            names = sorted(os.listdir(base))
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(base, name)
            if path != own and _SLOT.match(name) and os.path.isdir(path):
                found.append(path)
        return found

    def message(self, state: EntryState, queue_id: str) -> str:
        return os.path.join(self.directory(state), queue_id + ".msg")

    def envelope(self, queue_id: str) -> str:
        return os.path.join(self.root, "env", queue_id + ".env")

    def why(self, queue_id: str) -> str:
        return os.path.join(self.root, "env", queue_id + ".why")

    def temporary(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self.tmp, queue_id + suffix)


@attrs.frozen
class _Found:
    """One entry as a directory scan sees it."""

    queue_id: str
    state: EntryState
    next_attempt: float
    size: int = 0


@attrs.frozen
class _Ahead:
    """The names that the last scan for a page of :meth:`SpoolQueueStore.list` found beyond it."""

    states: tuple[EntryState, ...]
    after: str
    names: list[str]
    complete: bool


@attrs.define
class _Scan:
    """What recovery found, gathered in a thread and reported on the reactor."""

    found: _Found_ = attrs.Factory(list)
    partial: int = 0
    orphans: int = 0
    reactivated: int = 0


@implementer(IQueueStore)
class SpoolQueueStore:
    """
    The default, durable :class:`~mailframe.interfaces.IQueueStore`: one
    directory on a local file system.

    A server calls :meth:`recover` once, and waits for it, before the first
    :meth:`open_writer` or :meth:`claim`. The ``mailframe queue`` command
    makes one without recovery, in its own process, and uses the other
    operations, which read the directories rather than the server's memory.

    :param path: the spool directory; made by :meth:`recover` if missing.
    :param reactor: the reactor: its clock, and ``callFromThread`` to bring
        the threads' results back.
    :param threadpool: where file I/O and every ``fsync`` run, if given
        (anything with ``callInThreadWithCallback``, such as a Twisted
        :class:`~twisted.python.threadpool.ThreadPool`); by default the
        store's own *threads* threads, started as they are needed and
        ended by :meth:`stop` (or when the reactor shuts down).
    :param random: the random source of queue ids; by default a
        :class:`random.Random` seeded from the system's source. The ids need
        to be unique, not secret, and the store checks them for collisions.
    :param min_free: octets of free space to keep; 0 keeps none, though
        :meth:`has_room` still wants twice a message's size.
    :param high_water: octets a writer holds (buffered or being written)
        before it pauses its producer; it resumes it below half of that.
    :param slot: the worker slot of a server that shares the spool with
        other worker processes (``mailframe --workers``): its claims go to
        ``active/<slot>/``, its partial writes to ``tmp/<slot>/``, and its
        :meth:`recover` touches only those. ``None`` for a server that owns
        the spool alone, and for the ``mailframe queue`` command.
    :param threads: how many threads of its own the store runs, when no
        *threadpool* is given: by default :data:`DEFAULT_THREADS`, or
        :data:`SYNCFS_THREADS` with :data:`SYNC_FILESYSTEM`.
    :param sync: how a commit makes its message durable: :data:`SYNC_FILE`
        (one ``fsync`` per message) or :data:`SYNC_FILESYSTEM` (one
        ``syncfs`` for the messages committed together; see the module's
        documentation).
    :raises ValueError: for a *sync* that is unknown or, for
        :data:`SYNC_FILESYSTEM`, that this system cannot do safely.

    :ivar stats_fsyncs: ``fsync`` calls made, of files and directories.
    :ivar stats_dir_fsyncs: ``fsync`` calls made of directories.
    :ivar stats_syncfs: ``syncfs`` calls made.
    :ivar stats_corrupt: entries set aside as corrupt since the start.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reactor: SpoolReactor,
        threadpool: ThreadPoolLike | None = None,
        random: RandomSource | None = None,
        min_free: int = DEFAULT_MIN_FREE,
        high_water: int = DEFAULT_HIGH_WATER,
        slot: str | None = None,
        threads: int | None = None,
        sync: str = SYNC_FILE,
    ) -> None:
        if slot is not None and not _SLOT.match(slot):
            raise ValueError(f"a worker slot is 1 to 32 letters, digits, - or _, not {slot!r}")
        self._syncfs = choose_syncfs(sync)
        self.sync = sync
        self.path = os.fspath(path)
        self.slot = slot
        self.min_free = min_free
        self.high_water = high_water
        # A writer keeps at most a quarter of the high water mark unwritten:
        # one that kept half of it could pause its client for good, since
        # the client resumes only once less than half is outstanding.
        self._write_chunk = min(WRITE_CHUNK, high_water // 4)
        self.stats_fsyncs = 0
        self.stats_dir_fsyncs = 0
        self.stats_syncfs = 0
        self.stats_corrupt = 0
        self._reactor = reactor
        if threads is None:
            threads = SYNCFS_THREADS if sync == SYNC_FILESYSTEM else DEFAULT_THREADS
        self._runner: Runner = (
            PoolRunner(reactor, threadpool) if threadpool is not None
            else ThreadRunner(reactor, threads, "mailframe-spool")
        )
        self._random: RandomSource = random if random is not None else Random()
        self._layout = _Layout(self.path, slot)
        self._lock = threading.Lock()
        self._index = QueueIndex()
        # Entries committed here and not yet claimed, and entries claimed
        # here and not yet rescheduled or removed: their envelopes, so that
        # neither a claim nor a record reads a file.
        self._cache: dict[str, QueueEntry] = {}
        self._claimed: dict[str, QueueEntry] = {}
        # Claimed entries known to have no .env or .why: committed here,
        # and claimed from the cache, with nothing recorded since. Their
        # removal unlinks the .msg alone.
        self._bare: set[str] = set()
        # The message files of claimed entries, opened by the claim's own
        # trip to a thread, for the first open_message() of each.
        self._opened: _Opened = {}
        self._writers: dict[str, _SpoolWriter] = {}
        # Per entry, the last of its file operations, so that they run in
        # the order they were asked for.
        self._tails: dict[str, Deferred[None]] = {}
        self._syncers: dict[str, Group[None]] = {}
        self._commits: Group[_Commit] = Group(self._commit_together)
        self._removals: Group[tuple[str, bool]] = Group(self._remove_together)
        # With SYNC_FILESYSTEM, the spool's directory, open since recovery
        # (the descriptor that syncfs reports write errors through); and
        # whether syncfs has failed, after which every file is fsynced.
        self._sync_fd: int | None = None
        self._sync_failed = False
        self._lock_fd: int | None = None
        self._recovering = False
        self._recovered = False
        self._free: int | None = None
        self._free_at = 0.0
        self._watchers: list[Callable[[], object]] = []
        self._watch: IDelayedCall | None = None
        self._trigger_seen = 0
        self._rescanning = False
        self._ahead: _Ahead | None = None
        self._rescan_again = False
        # While a rescan runs: the entries whose index this process changed
        # since it started, which the scan may have seen as they were before.
        self._touched: set[str] | None = None

    # -- IQueueStore --------------------------------------------------------

    def recover(self) -> Deferred[int]:
        """
        Make the spool consistent, and load its index, without reading any
        envelope. In a thread:

        - make the directories if needed;
        - delete everything in ``tmp/`` (messages whose commit never fired);
        - move every entry of ``active/``, which may have been under
          delivery, to ``deferred/``, due now;
        - note each entry's state and, in ``deferred/``, its next attempt
          from its modification time;
        - delete each ``.env`` and ``.why`` whose entry is gone (a removal
          stopped between its unlinks).

        First, a store that owns the spool (one without a worker *slot*)
        takes a lock on its ``lock`` file, and holds it for as long as the
        store exists: the recovery of a second server on the same spool
        would take back the entries the first is delivering, and throw
        away the messages it is receiving. That second server's recovery
        fails with :class:`~mailframe.stores.StoreUnavailable`, naming the
        pid of the first. Workers share their supervisor's lock; the
        ``mailframe queue`` command, which does not recover, takes none.

        An entry whose envelope cannot be read is found when it is claimed,
        and set aside in ``corrupt/`` then.

        :return: a Deferred firing with the number of entries.
        """
        if self._recovering or self._recovered:
            return defer.fail(RuntimeError("recover() runs once, when the spool starts"))
        self._recovering = True

        def loaded(scan: _Scan) -> int:
            self._index.load((f.queue_id, f.state, f.next_attempt) for f in scan.found)
            self._recovered = True
            self._recovering = False
            if self._watchers and self._watch is None:
                self._watch = self._reactor.callLater(TRIGGER_INTERVAL, self._check_trigger)
            _log.info(
                "Spool {path} recovered: {count} entries; {reactivated} were active and are"
                " deferred now; removed {partial} partial writes and {orphans} leftover files",
                path=self.path,
                count=len(self._index),
                reactivated=scan.reactivated,
                partial=scan.partial,
                orphans=scan.orphans,
            )
            return len(self._index)

        def failed(failure: Failure) -> Failure:
            self._recovering = False
            return failure

        now = self._reactor.seconds()
        return self._in_thread(self._recover, now).addCallbacks(loaded, failed)

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
        """
        A Deferred firing with the message file, opened in a thread: the
        message alone, without the trailer after it. Where the trailer is
        damaged, the end of the message is unknown: an entry in
        ``corrupt/`` gives its whole file, for an operator to look at, and
        any other fails with :class:`OSError` (``EBADMSG``), so that no
        envelope is ever delivered as part of a message.

        The first call for an entry that :meth:`claim` took needs no thread:
        the claim opened its file, in the trip that renamed it.
        """
        opened = self._opened.pop(queue_id, None)
        if opened is not None:
            return defer.succeed(opened)
        return self._in_thread(self._open_message, queue_id)

    def claim(self, now: float, limit: int, lease: float) -> Deferred[_Entries]:
        """
        Take due entries with a rename each into ``active/``, in one trip
        to a thread, which also opens the message of each for its delivery
        (see :meth:`open_message`). An entry that another process moved or
        deleted meanwhile is not taken; one whose envelope cannot be read
        is moved to ``corrupt/``, logged and counted.
        """
        if not self._recovered:
            return defer.fail(RuntimeError("recover() the spool before claiming from it"))
        taken = self._index.claim(now, limit, lease)
        if not taken:
            return defer.succeed([])
        cached = {queue_id: self._cache.pop(queue_id, None) for queue_id, _ in taken}

        def claimed(result: tuple[_Entries, _Names, _Reasons, _Opened]) -> _Entries:
            entries, lost, corrupt, opened = result
            for queue_id, message in opened.items():
                self._close_opened(queue_id)
                self._opened[queue_id] = message
            for queue_id, _ in taken:
                self._note(queue_id)
            for queue_id in lost:
                self._forget(queue_id)
                self._index_remove(queue_id)
            for queue_id, reason in corrupt:
                self.stats_corrupt += 1
                self._index.set(queue_id, EntryState.CORRUPT)
                _log.warn("Set {queue_id} aside as corrupt: {reason}",
                          queue_id=queue_id, reason=reason)
            for entry in entries:
                self._claimed[entry.queue_id] = entry
                if cached[entry.queue_id] is not None:
                    self._bare.add(entry.queue_id)
            if lost:
                self._rescan()
            return entries

        return self._in_thread(self._take, taken, cached).addCallback(claimed)

    def renew(self, queue_id: str, lease: float) -> Deferred[None]:
        """
        Extend a lease to *lease* seconds from now, by the reactor's clock.
        Fails with :class:`~mailframe.stores.LeaseLost` if it has expired.
        """
        return defer.maybeDeferred(self._index.renew, queue_id, self._reactor.seconds(), lease)

    def record(self, entry: QueueEntry) -> Deferred[None]:
        """
        Store the delivery state of *entry* and fire once it is durable:
        its ``.env`` is written, ``fsync``\\ ed and renamed into ``env/``,
        and ``env/`` is ``fsync``\\ ed (shared between entries, as commits
        share theirs); or, when the entry is done, its files are removed.
        The ``.env`` holds the stored entry with the recipients, attempts
        and warned flag of *entry*, and nothing else of it.
        """
        queue_id = entry.queue_id
        known = self._claimed.get(queue_id) or self._cache.get(queue_id)
        if known is not None:
            try:
                check_recipients(known, entry)
            except ValueError:
                return defer.fail()

        def gone(failure: Failure) -> Failure:
            # Deleted by an operator: it is not brought back.
            if failure.check(NoSuchEntry):
                self._forget(queue_id)
                self._note(queue_id)
                self._index_remove(queue_id)
            return failure

        # The delivery attempt is over: a file the claim opened and the
        # attempt never took is not wanted.
        self._close_opened(queue_id)
        if entry.done:
            bare = queue_id in self._bare
            self._forget(queue_id)

            def removed(_: None) -> None:
                self._note(queue_id)
                self._index_remove(queue_id)

            d = self._serially(queue_id, lambda: self._removals.join((queue_id, bare)))
            return d.addCallbacks(removed, gone)
        self._bare.discard(queue_id)
        env = self._layout.env

        def write() -> Deferred[None]:
            d = self._in_thread(self._write_env, entry, known)
            return d.addCallback(lambda _: self._syncer(env).join(None))

        def written(_: None) -> None:
            if queue_id in self._claimed:
                self._claimed[queue_id] = attrs.evolve(
                    self._claimed[queue_id],
                    recipients=entry.recipients,
                    attempts=entry.attempts,
                    warned=entry.warned,
                )

        return self._serially(queue_id, write).addCallbacks(written, gone)

    def reschedule(self, queue_id: str, when: float, reason: str) -> Deferred[None]:
        """
        Move a claimed entry to ``deferred/``, with *when* as its
        modification time, and *reason* in its ``.why``.
        """
        try:
            state = self._index.state(queue_id)
        except NoSuchEntry:
            return defer.fail()
        self._claimed.pop(queue_id, None)
        self._bare.discard(queue_id)
        self._close_opened(queue_id)
        if state is not EntryState.ACTIVE:
            return defer.succeed(None)

        def moved(now_in: EntryState | None) -> None:
            self._note(queue_id)
            if now_in is None:
                self._index_remove(queue_id)
            elif queue_id in self._index:
                self._index.set(queue_id, now_in, when)

        def move() -> Deferred[None]:
            d = self._in_thread(self._defer, queue_id, when, reason)
            return d.addCallback(moved)

        return self._serially(queue_id, move)

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> Deferred[_Entries]:
        """
        A page of entries read from the directories: each page scans the
        names, and reads only the *limit* entries it returns.
        """
        states = _STATES if state is None else (state,)
        return self._in_thread(self._page, states, after, limit, self._reactor.seconds())

    def get(self, queue_id: str) -> Deferred[QueueEntry | None]:
        return self._in_thread(self._load, queue_id, self._reactor.seconds())

    def hold(self, queue_id: str, reason: str) -> Deferred[None]:
        """Move an entry to ``hold/``, durably; an entry on hold stays there."""
        return self._operate(queue_id, self._hold, reason)

    def release(self, queue_id: str) -> Deferred[None]:
        """Move a held entry to ``deferred/``, due now."""
        return self._operate(queue_id, self._release, self._reactor.seconds())

    def delete(self, queue_id: str) -> Deferred[None]:
        """Remove an entry's files, whatever its state."""
        self._forget(queue_id)
        return self._operate(queue_id, self._delete)

    def requeue(self, queue_id: str) -> Deferred[None]:
        """
        Make an entry deferred and due now, keeping its history. Refused
        for an entry under delivery, which is retried anyway if it fails,
        and for a corrupt one.
        """
        if self._index.leased(queue_id, self._reactor.seconds()):
            return defer.fail(EntryStateError(f"{queue_id} is being delivered"))
        return self._operate(queue_id, self._requeue, self._reactor.seconds())

    def flush(self) -> Deferred[int]:
        """Make every deferred entry due now; fires with how many there were."""
        now = self._reactor.seconds()

        def flushed(count: int) -> int:
            for queue_id in self._index.deferred():
                self._note(queue_id)
                when = min(now, self._index.next_attempt(queue_id))
                self._index.set(queue_id, EntryState.DEFERRED, when)
            self._changed()
            return count

        return self._in_thread(self._flush, now).addCallback(flushed)

    def stats(self) -> Deferred[QueueStats]:
        """Counts, octets and the oldest arrival, from one scan of the directories."""
        return self._in_thread(self._stats)

    def quarantine(self, queue_id: str, reason: str) -> Deferred[None]:
        """Move an entry to ``corrupt/``, durably, with *reason* beside it."""
        self._forget(queue_id)
        return self._operate(queue_id, self._quarantine, reason)

    def notify_on_change(self, callback: Callable[[], object]) -> None:
        """
        Call *callback* after :meth:`flush`, :meth:`release` or
        :meth:`requeue`, and, in a recovered spool, whenever the ``trigger``
        file shows that another process changed the spool; it is looked at
        every :data:`TRIGGER_INTERVAL` seconds, from the end of
        :meth:`recover` (or from this call, if later) until :meth:`stop`.
        """
        self._watchers.append(callback)
        if self._recovered and self._watch is None:
            self._watch = self._reactor.callLater(TRIGGER_INTERVAL, self._check_trigger)

    # -- beyond the interface ------------------------------------------------

    def stop(self) -> Deferred[None]:
        """
        Stop watching the ``trigger`` file, wait for file operations, and
        end the store's threads (a later operation starts them again). Then
        log how many ``fsync`` calls the spool made since it started, and
        how many of them were of directories: group commit shows as far
        fewer directory ``fsync`` calls than messages.
        """
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        for queue_id in list(self._opened):
            self._close_opened(queue_id)

        def stopped(_: None) -> None:
            _log.info(
                "Spool {path} stopped: {fsyncs} fsyncs, {dir_fsyncs} of directories",
                path=self.path, fsyncs=self.stats_fsyncs, dir_fsyncs=self.stats_dir_fsyncs,
            )

        def idle(_: None) -> None:
            self._runner.stop()
            if self._sync_fd is not None:
                # Commits after this fsync each file: a new descriptor
                # would not report the write errors made before it.
                fd, self._sync_fd = self._sync_fd, None
                os.close(fd)
            stopped(None)

        return self.wait_idle().addCallback(idle)

    def wait_idle(self) -> Deferred[None]:
        """
        A Deferred firing once no file operation is in flight, such as the
        removal of an aborted message; for an orderly shutdown, and for
        tests.
        """
        return self._runner.when_idle()

    # -- reactor-side helpers -------------------------------------------------

    def _new_id(self) -> str:
        while True:
            queue_id = new_queue_id(self._random, self._reactor.seconds())
            if queue_id not in self._index and queue_id not in self._writers:
                return queue_id

    def _syncer(self, directory: str) -> Group[None]:
        """The group commit of ``fsync`` for *directory*."""
        syncer = self._syncers.get(directory)
        if syncer is None:

            def sync(_: list[None]) -> Deferred[None]:
                return self._in_thread(self._fsync_dir, directory)

            syncer = self._syncers[directory] = Group(sync)
        return syncer

    def _commit_together(self, commits: _Commits) -> Deferred[_Errors]:
        def failed(failure: Failure) -> Failure:
            if not self._sync_failed and failure.check(_SyncFailed):
                self._sync_failed = True
                _log.failure(
                    "syncfs of the spool {path} failed: the messages committed with it"
                    " got 451, and from now on each message is fsynced on its own",
                    failure, path=self.path,
                )
            return failure

        return self._in_thread(self._write_together, commits).addErrback(failed)

    def _remove_together(self, removals: Sequence[tuple[str, bool]]) -> Deferred[_Errors]:
        """
        Remove finished entries in one trip to a thread: a queue runner
        finishes many at once, and each trip costs more than the ``unlink``
        calls it makes.
        """
        return self._in_thread(self._remove_all, removals)

    def _in_thread(self, f: Callable[..., _R], *args: Any) -> Deferred[_R]:
        """Run *f* in a thread; :meth:`wait_idle` waits for it."""
        return self._runner.run(f, *args)

    def _serially(self, queue_id: str, op: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """Run *op* after every file operation asked before for this entry."""
        tail, outcome = then(self._tails.get(queue_id), op)
        self._tails[queue_id] = tail

        def forget(_: None) -> None:
            if self._tails.get(queue_id) is tail:
                del self._tails[queue_id]

        tail.addCallback(forget)
        return outcome

    def _operate(
        self, queue_id: str, op: Callable[..., EntryState | None], *args: object
    ) -> Deferred[None]:
        """
        Run an operator's change in a thread, after the entry's other file
        operations; then bring the index up to date with where the entry is
        now, and tell another process's server if this is not one.
        """
        self._close_opened(queue_id)
        self._bare.discard(queue_id)

        def run() -> Deferred[EntryState | None]:
            return self._in_thread(op, queue_id, *args)

        def done(state: EntryState | None) -> None:
            if not self._recovered:
                return
            self._note(queue_id)
            self._cache.pop(queue_id, None)
            if state is None:
                self._index_remove(queue_id)
                return
            due = state is EntryState.DEFERRED
            when = self._reactor.seconds() if due else None
            if queue_id in self._index:
                self._index.set(queue_id, state, when)
            else:
                self._index.add(queue_id, state, when or 0.0)
            if due:
                self._changed()

        return self._serially(queue_id, run).addCallback(done)

    def _index_remove(self, queue_id: str) -> None:
        if queue_id in self._index:
            self._index.remove(queue_id)

    def _forget(self, queue_id: str) -> None:
        self._cache.pop(queue_id, None)
        self._claimed.pop(queue_id, None)
        self._bare.discard(queue_id)
        self._close_opened(queue_id)

    def _close_opened(self, queue_id: str) -> None:
        """Close the file that a claim opened for *queue_id*, if nobody took it."""
        opened = self._opened.pop(queue_id, None)
        if opened is not None:
            opened.close()

    def _note(self, queue_id: str) -> None:
        """The index of *queue_id* changed here: a rescan under way must not undo it."""
        if self._touched is not None:
            self._touched.add(queue_id)

    def _changed(self) -> None:
        for callback in list(self._watchers):
            callback()

    def _check_trigger(self) -> None:
        self._watch = None
        try:
            seen = os.stat(self._layout.trigger).st_mtime_ns
        except FileNotFoundError:
            seen = 0
        if seen != self._trigger_seen:
            self._trigger_seen = seen
            self._rescan()
        if self._watchers:
            self._watch = self._reactor.callLater(TRIGGER_INTERVAL, self._check_trigger)

    def _rescan(self) -> None:
        """
        Look at the directories again, and wake the watchers. The index of
        an entry that this process is changing, or changed while the scan
        ran, is left as it is: the scan may have seen the entry before.
        Asked while a rescan runs, which may have looked already, another
        follows it.
        """
        if not self._recovered:
            return
        if self._rescanning:
            self._rescan_again = True
            return
        self._rescanning = True
        self._rescan_again = False
        self._touched = set()

        def scanned(found: _Found_) -> None:
            keep = set(self._touched or ()) | self._writers.keys() | self._tails.keys()
            self._index.resync(
                ((f.queue_id, f.state, f.next_attempt) for f in found),
                self._reactor.seconds(),
                keep,
            )
            for queue_id in [q for q in self._cache if q not in self._index]:
                del self._cache[queue_id]
            self._changed()

        def finished(result: object) -> None:
            self._rescanning = False
            self._touched = None
            if isinstance(result, Failure):
                _log.failure("Cannot scan the spool {path}", result, path=self.path)
            if self._rescan_again:
                self._rescan()

        d = self._in_thread(self._scan_states, self._reactor.seconds())
        d.addCallback(scanned).addBoth(finished)

    # -- in the store's threads ------------------------------------------------

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

    def _write_together(self, commits: _Commits) -> _Errors:
        """
        Commit several messages (``sync = "filesystem"``): write the rest
        of each, make them all durable with one ``syncfs``, then rename
        each into place. Their directories are ``fsync``\\ ed next, by
        :meth:`_syncer`, while the next group's ``syncfs`` runs.

        :return: the error of each commit that failed on its own, in order.
        :raises _SyncFailed: if ``syncfs`` failed, which fails them all.
        """
        errors: _Errors = []
        for writer, data, document in commits:
            try:
                writer._write_tail(data, document)
            except OSError as error:
                errors.append(error)
            else:
                errors.append(None)
        if self._sync_fd is not None and not self._sync_failed:
            if any(error is None for error in errors):
                try:
                    cast(Callable[[int], None], self._syncfs)(self._sync_fd)
                except OSError as error:
                    raise _SyncFailed(error.errno, error.strerror) from error
                with self._lock:
                    self.stats_syncfs += 1
        else:
            for index, (writer, _, _) in enumerate(commits):
                if errors[index] is None:
                    try:
                        self._fsync(cast(int, writer._fd))
                    except OSError as error:
                        errors[index] = error
        for index, (writer, _, _) in enumerate(commits):
            if errors[index] is None:
                try:
                    writer._place()
                except OSError as error:
                    errors[index] = error
        return errors

    def _write_durably(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
            self._fsync(fd)
        finally:
            os.close(fd)

    def _touch(self) -> None:
        """
        Tell a server in another process that the spool changed. The new
        modification time is always later than the last, even within one
        tick of the file system's clock, so that no change goes unseen.
        """
        if self._recovered:
            return
        trigger = self._layout.trigger
        with open(trigger, "ab"):
            pass
        stamp = max(time.time_ns(), os.stat(trigger).st_mtime_ns + 1)
        os.utime(trigger, ns=(stamp, stamp))

    def _locate(self, queue_id: str) -> tuple[EntryState, str, os.stat_result]:
        """
        The entry's state, its message's path and its ``stat``; an active
        entry is looked for in every worker's ``active/`` directory.

        :raises NoSuchEntry: if no directory holds it, twice in a row (an
            entry that moves while the directories are looked at is seen
            the second time).
        """
        if not _QUEUE_ID.match(queue_id):
            raise NoSuchEntry(queue_id)
        for _ in range(2):
            for state in _STATES:
                for directory in self._layout.directories(state):
                    path = os.path.join(directory, queue_id + ".msg")
                    try:
                        return state, path, os.stat(path)
                    except FileNotFoundError:
                        pass
        raise NoSuchEntry(queue_id)

    def _move(self, queue_id: str, source: EntryState, target: EntryState) -> None:
        os.rename(
            self._layout.message(source, queue_id), self._layout.message(target, queue_id)
        )

    def _relocate(
        self, queue_id: str, target: EntryState, when: float | None = None, sync: bool = False
    ) -> EntryState:
        """Move an entry to *target* from wherever it is; return *target*."""
        for _ in range(3):
            state, path, _stat = self._locate(queue_id)
            try:
                if state is not target:
                    os.rename(path, self._layout.message(target, queue_id))
                break
            except FileNotFoundError:
                continue
        else:
            raise NoSuchEntry(queue_id)
        if when is not None:
            os.utime(self._layout.message(target, queue_id), (when, when))
        if sync:
            self._fsync_dir(self._layout.directory(target))
        self._touch()
        return target

    def _open_message(self, queue_id: str) -> BinaryIO:
        for _ in range(3):
            state, path, _stat = self._locate(queue_id)
            try:
                raw = io.FileIO(path, "rb")
            except FileNotFoundError:
                continue
            try:
                size = _message_size(raw)
            except CorruptEntryError as e:
                if state is not EntryState.CORRUPT:
                    raw.close()
                    raise OSError(errno.EBADMSG, f"the message of {queue_id}: {e}") from e
                size = raw.seek(0, os.SEEK_END)
                raw.seek(0)
            return _reader(raw, size)
        raise NoSuchEntry(queue_id)

    def _document(self, queue_id: str, path: str) -> bytes:
        """
        The entry's JSON as it is now: its ``.env`` if it has one, else the
        trailer of its ``.msg``.

        :raises CorruptEntryError: when neither can be read.
        """
        try:
            with open(self._layout.envelope(queue_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return _read_trailer(path)

    def _why(self, queue_id: str) -> str | None:
        try:
            with open(self._layout.why(queue_id), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def _take(
        self, taken: _Taken, cached: dict[str, QueueEntry | None]
    ) -> tuple[_Entries, _Names, _Reasons, _Opened]:
        entries: _Entries = []
        lost: _Names = []
        corrupt: _Reasons = []
        opened: _Opened = {}
        for queue_id, previous in taken:
            if previous is EntryState.ACTIVE:
                # Its lease ran out: it is taken again where it is, if it
                # is still there.
                if not os.path.exists(self._layout.message(EntryState.ACTIVE, queue_id)):
                    lost.append(queue_id)
                    continue
            else:
                try:
                    self._move(queue_id, previous, EntryState.ACTIVE)
                except FileNotFoundError:
                    lost.append(queue_id)
                    continue
            entry = cached[queue_id]
            if entry is None:
                try:
                    entry = entry_from_json(
                        self._document(queue_id, self._layout.message(EntryState.ACTIVE, queue_id)),
                        queue_id,
                    )
                except FileNotFoundError:
                    # Moved away by another process since the rename: where
                    # it is now, it is not this claim's, and not corrupt.
                    lost.append(queue_id)
                    continue
                except (CorruptEntryError, OSError) as e:
                    reason = f"unreadable envelope: {e}"
                    try:
                        self._quarantine(queue_id, reason)
                    except NoSuchEntry:
                        lost.append(queue_id)
                    else:
                        corrupt.append((queue_id, reason))
                    continue
            entries.append(attrs.evolve(entry, state=EntryState.ACTIVE))
            message = self._open_active(queue_id)
            if message is not None:
                opened[queue_id] = message
        return entries, lost, corrupt, opened

    def _open_active(self, queue_id: str) -> BinaryIO | None:
        """
        The message of a claimed entry, or ``None`` if it cannot be opened
        here: :meth:`open_message` then tries again, and reports why.
        """
        try:
            raw = io.FileIO(self._layout.message(EntryState.ACTIVE, queue_id), "rb")
        except OSError:
            return None
        try:
            size = _message_size(raw)
        except (CorruptEntryError, OSError):
            raw.close()
            return None
        return _reader(raw, size)

    def _write_env(self, entry: QueueEntry, known: QueueEntry | None) -> None:
        queue_id = entry.queue_id
        _state, path, _stat = self._locate(queue_id)
        if known is None:
            known = entry_from_json(self._document(queue_id, path), queue_id)
            check_recipients(known, entry)
        document = entry_to_json(
            attrs.evolve(
                known, recipients=entry.recipients, attempts=entry.attempts, warned=entry.warned
            )
        )
        temporary = self._layout.temporary(queue_id, ".env")
        self._write_durably(temporary, document)
        os.rename(temporary, self._layout.envelope(queue_id))

    def _remove(self, queue_id: str, bare: bool = False) -> None:
        """
        Remove a finished entry's files: the ``.msg`` first, since once it
        is gone the entry is, and recovery removes a ``.env`` left behind;
        then its ``.env`` and ``.why``, unless it is *bare* (known to have
        neither; one that an operator's command left after all is removed
        by the next recovery).
        The directory is not ``fsync``\\ ed: if a crash undoes the removal,
        the entry comes back and is delivered again, which at-least-once
        delivery allows (RFC 5321 §6.1), and which Postfix risks the same
        way; nothing can be lost.
        """
        try:
            os.unlink(self._layout.message(EntryState.ACTIVE, queue_id))
        except FileNotFoundError:
            self._delete(queue_id)
            return
        if not bare:
            unlink_if_there(self._layout.envelope(queue_id))
            unlink_if_there(self._layout.why(queue_id))

    def _remove_all(self, removals: Sequence[tuple[str, bool]]) -> _Errors:
        """:meth:`_remove` each entry; the error of each, or ``None``, in order."""
        errors: _Errors = []
        for queue_id, bare in removals:
            try:
                self._remove(queue_id, bare)
            except Exception as error:  # one entry's error is that entry's alone
                errors.append(error)
            else:
                errors.append(None)
        return errors

    def _defer(self, queue_id: str, when: float, reason: str) -> EntryState | None:
        """
        Move a claimed entry to ``deferred/``; where it is, if an operator
        moved it. Its modification time and its reason are written before
        the rename, so that no reader sees it deferred with the old time
        (due at once) or without its reason.
        """
        active = self._layout.message(EntryState.ACTIVE, queue_id)
        try:
            os.utime(active, (when, when))
            if reason:
                # Not fsynced: after a crash the recipients' replies tell as much.
                with open(self._layout.why(queue_id), "wb") as f:
                    f.write(reason.encode("utf-8", "replace"))
            else:
                unlink_if_there(self._layout.why(queue_id))
            os.rename(active, self._layout.message(EntryState.DEFERRED, queue_id))
        except FileNotFoundError:
            try:
                return self._locate(queue_id)[0]
            except NoSuchEntry:
                return None
        return EntryState.DEFERRED

    def _hold(self, queue_id: str, reason: str) -> EntryState:
        state, _path, _stat = self._locate(queue_id)
        if state is EntryState.CORRUPT:
            raise EntryStateError(f"{queue_id} is corrupt and cannot be held")
        if state is EntryState.HOLD:
            return state
        if reason:
            self._write_durably(self._layout.why(queue_id), reason.encode("utf-8"))
        return self._relocate(queue_id, EntryState.HOLD, sync=True)

    def _release(self, queue_id: str, now: float) -> EntryState:
        state, _path, _stat = self._locate(queue_id)
        if state is not EntryState.HOLD:
            raise EntryStateError(f"{queue_id} is {state.value}, not on hold")
        target = self._relocate(queue_id, EntryState.DEFERRED, when=now, sync=True)
        unlink_if_there(self._layout.why(queue_id))
        return target

    def _requeue(self, queue_id: str, now: float) -> EntryState:
        state, _path, _stat = self._locate(queue_id)
        if state is EntryState.ACTIVE:
            raise EntryStateError(f"{queue_id} is being delivered")
        if state is EntryState.CORRUPT:
            raise EntryStateError(f"{queue_id} is corrupt and cannot be requeued")
        target = self._relocate(queue_id, EntryState.DEFERRED, when=now, sync=True)
        unlink_if_there(self._layout.why(queue_id))
        return target

    def _delete(self, queue_id: str) -> None:
        for _ in range(3):
            _state, path, _stat = self._locate(queue_id)
            try:
                os.unlink(path)
                break
            except FileNotFoundError:
                continue
        else:
            raise NoSuchEntry(queue_id)
        unlink_if_there(self._layout.envelope(queue_id))
        unlink_if_there(self._layout.why(queue_id))
        self._touch()

    def _quarantine(self, queue_id: str, reason: str) -> EntryState:
        self._write_durably(self._layout.why(queue_id), reason.encode("utf-8"))
        self._fsync_dir(self._layout.env)
        return self._relocate(queue_id, EntryState.CORRUPT, sync=True)

    def _flush(self, now: float) -> int:
        count = 0
        directory = self._layout.directory(EntryState.DEFERRED)
        for item in _scandir(directory):
            try:
                if item.stat().st_mtime > now:
                    os.utime(item.path, (now, now))
            except FileNotFoundError:
                continue
            count += 1
        self._touch()
        return count

    def _stats(self) -> QueueStats:
        counts = dict.fromkeys(EntryState, 0)
        size = 0
        oldest: float | None = None
        for state in _STATES:
            for item in _scandir_all(self._layout.directories(state)):
                try:
                    size += item.stat().st_size
                except FileNotFoundError:
                    continue
                counts[state] += 1
                made = queue_id_time(item.name[:-4])
                if made is not None and (oldest is None or made < oldest):
                    oldest = made
        return QueueStats(tuple(counts.items()), size=size, oldest=oldest)

    def _load(self, queue_id: str, now: float) -> QueueEntry | None:
        """The entry as the files say now, or ``None``."""
        try:
            state, path, stat = self._locate(queue_id)
        except NoSuchEntry:
            return None
        try:
            entry = entry_from_json(self._document(queue_id, path), queue_id)
        except (CorruptEntryError, OSError) as e:
            # Nothing of the envelope can be trusted: list the entry with
            # an empty one, so that an operator sees it and can delete it.
            return QueueEntry(
                queue_id=queue_id,
                envelope=Envelope(NULL_PATH, ()),
                state=state,
                recipients=(),
                reason=self._why(queue_id) or f"unreadable envelope: {e}",
                size=max(stat.st_size - _TRAILER.size, 0),
            )
        if state is EntryState.DEFERRED:
            next_attempt = stat.st_mtime
        elif state is EntryState.INCOMING:
            next_attempt = min(entry.next_attempt, now)
        else:
            next_attempt = entry.next_attempt
        reason = self._why(queue_id)
        if reason is None and state is EntryState.DEFERRED:
            replies = [r.reply for r in entry.recipients if r.state is RecipientState.PENDING]
            reason = next((str(r) for r in replies if r is not None), "")
        elif reason is None:
            reason = entry.reason
        return attrs.evolve(entry, state=state, next_attempt=next_attempt, reason=reason)

    def _page(
        self, states: tuple[EntryState, ...], after: str | None, limit: int, now: float
    ) -> _Entries:
        def names(start: str | None) -> Iterator[str]:
            for state in states:
                for item in _scandir_all(self._layout.directories(state)):
                    queue_id = item.name[:-4]
                    if start is None or queue_id > start:
                        yield queue_id

        def names_after(start: str | None, count: int) -> list[str]:
            with self._lock:
                ahead, self._ahead = self._ahead, None
            if (
                ahead is not None
                and ahead.states == states
                and ahead.after == start
                and (len(ahead.names) >= count or ahead.complete)
            ):
                scanned, complete = ahead.names, ahead.complete
            else:
                window = count * LIST_WINDOW
                nearest = heapq.nsmallest(window, names(start))
                scanned, complete = sorted(set(nearest)), len(nearest) < window
            taken = scanned[:count]
            last = taken[-1] if taken else start
            if last is not None:
                with self._lock:
                    self._ahead = _Ahead(states, last, scanned[count:], complete)
            return taken

        # The names of at most LIST_WINDOW pages are kept, whatever the
        # queue's size: one scan of the directories serves that many pages.
        # Entries that leave (delivered, deleted) between the scan and the
        # reading are made up for by the next names, so that only the end
        # of the queue gives an empty page.
        found: _Entries = []
        start = after
        while len(found) < limit:
            batch = names_after(start, limit - len(found))
            if not batch:
                break
            for queue_id in batch:
                entry = self._load(queue_id, now)
                if entry is not None and entry.state in states:
                    found.append(entry)
            start = batch[-1]
        return found

    def _scan_states(self, now: float) -> _Found_:
        """
        Every entry's state, and in ``deferred/`` its next attempt; those of
        ``incoming/`` in the order of their ids, which is the order in which
        they came. Of the active entries, only this store's own: those of
        other workers are theirs to finish, or to recover.
        """
        found = []
        for state in _STATES:
            items = _scandir(self._layout.directory(state))
            if state is EntryState.INCOMING:
                items = iter(sorted(items, key=lambda item: item.name))
            for item in items:
                queue_id = item.name[:-4]
                if state is EntryState.DEFERRED:
                    try:
                        when = item.stat().st_mtime
                    except FileNotFoundError:
                        continue
                else:
                    when = now
                found.append(_Found(queue_id, state, when))
        return found

    def _take_lock(self) -> None:
        """
        Lock the spool for this process, or raise
        :class:`~mailframe.stores.StoreUnavailable`. A POSIX record lock
        belongs to the process: another store of this process on the same
        spool (as a test makes) takes it again, and a server that dies,
        however it dies, lets it go.
        """
        if self._lock_fd is not None:
            return
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self._layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise StoreUnavailable(
                f"the spool {self.path} is in use by another mailframe server"
                f" (pid {holder or 'unknown'}); stop it, or give this one a"
                f" queue_dir of its own"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._lock_fd = fd
        weakref.finalize(self, os.close, fd)

    def _recover(self, now: float) -> _Scan:
        layout = self._layout
        if self.slot is None:
            self._take_lock()
        made = set()
        for directory in [layout.tmp, layout.env, *(layout.directory(s) for s in _STATES)]:
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                made.add(os.path.dirname(directory))
        for parent in sorted(made, key=len, reverse=True):
            self._fsync_dir(parent)
        if made and layout.root not in made:
            self._fsync_dir(layout.root)
        if self._syncfs is not None and self._sync_fd is None:
            self._sync_fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        scan = _Scan()
        for name in os.listdir(layout.tmp):
            path = os.path.join(layout.tmp, name)
            if self.slot is None or not os.path.isdir(path):
                _remove_tree(path)
                scan.partial += 1
        # A server that owns the spool takes back what every worker left
        # active; a worker only what its own slot did, since the others'
        # entries may be under delivery now.
        actives = layout.directories(EntryState.ACTIVE) if self.slot is None else [
            layout.directory(EntryState.ACTIVE)]
        deferred = layout.directory(EntryState.DEFERRED)
        for item in _scandir_all(actives):
            try:
                os.utime(item.path, (now, now))
                os.rename(item.path, os.path.join(deferred, item.name))
            except FileNotFoundError:
                continue  # held or deleted by a ``mailframe queue`` meanwhile
            scan.reactivated += 1
        scan.found = self._scan_states(now)
        if self.slot is None:
            # With workers about, an entry that moves between the
            # directories while they are scanned could look gone: only a
            # server that owns the spool removes leftovers.
            present = {f.queue_id for f in scan.found}
            for name in os.listdir(layout.env):
                if name.endswith((".env", ".why")) and name[:-4] not in present:
                    unlink_if_there(os.path.join(layout.env, name))
                    scan.orphans += 1
        try:
            self._trigger_seen = os.stat(layout.trigger).st_mtime_ns
        except FileNotFoundError:
            self._trigger_seen = 0
        return scan


class _SyncFailed(OSError):
    """``syncfs`` failed: no message of its group is known to be durable."""


@implementer(IQueueWriter)
class _SpoolWriter(GatedWriter):
    """
    One message being written into ``tmp/<id>.msg``.

    Writes collect in memory; past :data:`WRITE_CHUNK` octets (or a quarter
    of the store's high water mark, if less) a thread appends them to the
    file, one chunk after another. A message smaller than that costs one
    trip to a thread at commit, which writes it, ``fsync``\\ s it, writes
    and ``fsync``\\ s its envelope and renames both, and then a share of a
    directory ``fsync``.
    """

    def __init__(self, store: SpoolQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._state = WriterState.OPEN
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        # The open message file; only thread jobs touch it, one at a time.
        self._fd: int | None = None
        self._error: Failure | None = None
        self._tail: Deferred[None] = defer.succeed(None)
        self._gate = ProducerGate(cast(IReactorTime, store._reactor), store.high_water)
        self._target = EntryState.INCOMING

    def write(self, data: bytes) -> None:
        """
        Append *data*. A write error is kept and reported by :meth:`commit`;
        writes after :meth:`abort` are ignored.
        """
        if not self._take_in(data):
            return
        if self._buffered > self._store._write_chunk:
            self._flush()

    def commit(self, envelope: Envelope, hold: str | None = None) -> Deferred[str]:
        """
        Write what is left, make the message and its envelope durable in
        ``incoming/`` (or ``hold/``), and fire with the queue id; see the
        module's documentation for the order of operations. On failure, the
        files are removed.
        """
        if self._state is not WriterState.OPEN:
            state = self._state.value
            return defer.fail(RuntimeError(f"commit() of {self.queue_id}, which is {state}"))
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._state = WriterState.COMMITTING
        store = self._store
        data = self._take()
        state = EntryState.INCOMING if hold is None else EntryState.HOLD
        entry = QueueEntry.new(
            self.queue_id, envelope, store._reactor.seconds(), self._size, state
        )
        if hold is not None:
            entry = attrs.evolve(entry, reason=hold)
        self._target = state
        document = entry_to_json(entry)

        def finish() -> Deferred[str]:
            if self._error is not None:
                self._gate.done(len(data))
                return defer.fail(self._error)

            def written(result: object) -> object:
                self._gate.done(len(data))
                return result

            if store._syncfs is not None:
                d = store._commits.join((self, data, document)).addBoth(written)
            else:
                d = store._in_thread(self._finish, data, document).addBoth(written)
            directory = store._layout.directory(state)
            d.addCallback(lambda _: store._syncer(directory).join(None))
            return d.addCallback(lambda _: self._committed(entry))

        outcome = self._chain(finish)
        return outcome.addErrback(self._commit_failed)

    def open_message(self) -> Deferred[BinaryIO]:
        """
        A file reading what was written so far, once it is in the file; for
        end-of-data policies that scan the message.
        """
        if self._state is not WriterState.OPEN:
            return defer.fail(RuntimeError(f"open_message() of {self.queue_id} after commit"))
        self._flush()
        return self._chain(lambda: self._store._in_thread(self._open_for_reading))

    def abort(self) -> None:
        """
        Throw the message away, removing its file in a thread. Once
        :meth:`commit` is called this does nothing: the message may already
        be durable, and a duplicate is better than a loss.
        """
        if self._state is not WriterState.OPEN:
            return
        self._state = WriterState.ABORTED
        self._gate.done(len(self._take()))
        self._store._writers.pop(self.queue_id, None)
        self._discard(committed=False)

    # -- on the reactor --------------------------------------------------------

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        return data

    def _flush(self) -> None:
        data = self._take()

        def append() -> Deferred[None]:
            if self._error is not None or self._state is WriterState.ABORTED:
                return defer.succeed(None)
            return self._store._in_thread(self._append, data)

        def failed(failure: Failure) -> None:
            if self._error is None:
                self._error = failure

        d = self._chain(append)
        d.addErrback(failed)
        d.addCallback(lambda _: self._gate.done(len(data)))

    def _committed(self, entry: QueueEntry) -> str:
        self._state = WriterState.COMMITTED
        store = self._store
        store._writers.pop(self.queue_id, None)
        store._note(self.queue_id)
        if self.queue_id in store._index:
            store._index.set(self.queue_id, entry.state, entry.next_attempt)
        else:
            store._index.add(self.queue_id, entry.state, entry.next_attempt)
        if entry.state is EntryState.INCOMING and len(store._cache) < CACHED_ENTRIES:
            store._cache[self.queue_id] = entry
        return self.queue_id

    def _commit_failed(self, failure: Failure) -> Failure:
        self._state = WriterState.FAILED
        self._store._writers.pop(self.queue_id, None)
        self._discard(committed=True)
        return failure

    def _discard(self, committed: bool) -> None:
        def cleanup() -> Deferred[None]:
            return self._store._in_thread(self._remove_files, committed)

        def failed(failure: Failure) -> None:
            _log.failure("Cannot remove {queue_id}", failure, queue_id=self.queue_id)

        self._chain(cleanup).addErrback(failed)

    # -- in the store's threads ---------------------------------------------------

    def _temporary(self) -> str:
        return self._store._layout.temporary(self.queue_id, ".msg")

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = _create(self._temporary())
        write_all(self._fd, data)

    def _open_for_reading(self) -> BinaryIO:
        if self._error is not None:
            self._error.raiseException()
        if self._fd is None:
            self._fd = _create(self._temporary())
        return open(self._temporary(), "rb")

    def _finish(self, data: bytes, document: bytes) -> None:
        self._write_tail(data, document)
        self._store._fsync(cast(int, self._fd))
        self._place()

    def _write_tail(self, data: bytes, document: bytes) -> None:
        """Write the rest of the message and its trailer; not yet durable."""
        if self._fd is None:
            self._fd = _create(self._temporary())
        write_all(self._fd, data + document + _TRAILER.pack(len(document), _MAGIC))

    def _place(self) -> None:
        """Close the durable file and rename it into place."""
        fd, self._fd = cast(int, self._fd), None
        os.close(fd)
        os.rename(self._temporary(), self._store._layout.message(self._target, self.queue_id))

    def _remove_files(self, committed: bool) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        unlink_if_there(self._temporary())
        if committed:
            # A failed commit may have renamed its file already; its client
            # was not told 250, so the entry must not stay.
            unlink_if_there(self._store._layout.message(self._target, self.queue_id))


def _first_error(failure: Failure) -> Failure:
    """The failure inside a :class:`~twisted.internet.defer.FirstError`."""
    if isinstance(failure.value, defer.FirstError):
        return failure.value.subFailure
    return failure


def _create(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        unlink_if_there(path)


def _reader(raw: io.FileIO, size: int) -> BinaryIO:
    """A buffered reader of the first *size* octets of *raw*: the message alone."""
    return cast(BinaryIO, io.BufferedReader(_MessageFile(raw, size)))


class _MessageFile(io.RawIOBase):
    """
    The first *size* octets of a ``.msg`` file: the message, not its
    trailer. A seek only notes the position, and the read that follows
    goes there: finding the size, or going back to the start of a file
    not yet read, costs no system call.
    """

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._size = size
        self._position = 0
        # Where the file's own offset is; *raw* comes opened at its start.
        self._offset = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = min(max(base + offset, 0), self._size)
        return self._position

    def readinto(self, buffer: Any) -> int:
        left = self._size - self._position
        if left <= 0:
            return 0
        if self._offset != self._position:
            self._offset = self._raw.seek(self._position)
        view = memoryview(buffer).cast("B")[:left]
        count = self._raw.readinto(view) or 0
        self._position += count
        self._offset += count
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def _message_size(raw: io.FileIO) -> int:
    """
    The length of the message in a committed ``.msg``, just opened: what
    comes before its trailer. The file's offset stays at its start.

    :raises CorruptEntryError: when the file has no valid trailer.
    """
    end = os.fstat(raw.fileno()).st_size
    if end < _TRAILER.size:
        raise CorruptEntryError("the message file has no envelope trailer")
    trailer = os.pread(raw.fileno(), _TRAILER.size, end - _TRAILER.size)
    if len(trailer) != _TRAILER.size:
        raise CorruptEntryError("the message file is shorter than it was")
    length, magic = _TRAILER.unpack(trailer)
    if magic != _MAGIC or length > end - _TRAILER.size:
        raise CorruptEntryError("the message file has no envelope trailer")
    return int(end - _TRAILER.size - length)


def _scandir(directory: str) -> Iterator[os.DirEntry[str]]:
    """The ``.msg`` files of a state directory (none if it is missing)."""
    try:
        items = os.scandir(directory)
    except FileNotFoundError:
        return
    with items:
        for item in items:
            name = item.name
            if name.endswith(".msg") and _QUEUE_ID.match(name[:-4]):
                yield item


def _scandir_all(directories: list[str]) -> Iterator[os.DirEntry[str]]:
    """The ``.msg`` files of several directories of one state."""
    for directory in directories:
        yield from _scandir(directory)


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


def _build_spool(settings: Any, context: Any) -> SpoolQueueStore:
    return SpoolQueueStore(
        context.config.queue_dir, context.reactor, random=id_source(context.random),
        min_free=settings["min_free"], slot=getattr(context, "worker", None),
        sync=settings["sync"],
    )


#: The ``spool`` store plugin: this store, in the config's ``queue_dir``.
spool_maker = ComponentMaker(
    kind="store",
    name="spool",
    description="Durable queue in a local directory (queue_dir), one file per message",
    factory=_build_spool,
    validate=check_sync,
    shared=True,
    schema={
        "min_free": Setting(
            "integer", DEFAULT_MIN_FREE,
            "Octets of free space to keep on the spool's file system: below it,"
            " MAIL gets 452 4.3.1.", minimum=0,
        ),
        "sync": Setting(
            "string", SYNC_FILE,
            "How a commit makes its message durable: \"file\", one fsync per message;"
            " or \"filesystem\", one syncfs of the spool's file system for the messages"
            " committed together, for a spool on a file system of its own (Linux 5.8"
            " or later).", choices=(SYNC_FILE, SYNC_FILESYSTEM),
        ),
    },
)

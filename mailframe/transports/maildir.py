"""
Delivery into Maildir: a file is written and fsynced in ``tmp/``, then
renamed into ``new/``, whose directory is fsynced before the delivery counts.

With ``sync = "filesystem"``, the deliveries that wait while one group is
written form the next group, in one trip to a thread: every file is
written, one ``syncfs`` per file system makes them durable, each is
renamed into ``new/``, and a second ``syncfs`` makes the renames (and any
Maildir made for them) durable before any of them counts.

Delivered messages get ``Return-Path:`` and ``Delivered-To:`` fields on top
(RFC 5321 §4.4), and their line ends become LF, as Maildir readers expect.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult, Route
from mailframe.interfaces import IDeliveryTransport, IQueueStore
from mailframe.policies.users import local_mailbox_name
from mailframe.reply import Reply
from mailframe.stores._files import unlink_if_there, write_all
from mailframe.stores._group import Group
from mailframe.stores._syncfs import SYNC_FILE, SYNC_FILESYSTEM, check_sync, choose_syncfs
from mailframe.stores._threads import PoolRunner, Runner, ThreadPoolLike, ThreadRunner

__all__ = ["DEFAULT_THREADS", "MaildirTransport", "deliver_to_maildir"]

_CHUNK = 256 * 1024
_counter = itertools.count()
_log = Logger(namespace="mailframe.transports.maildir")

#: Threads of a transport unless told otherwise: the deliveries written at
#: once. Each waits on its own ``fsync`` calls, and more threads let the
#: disk take more of them together; but each thread also takes and gives
#: back the interpreter's lock around each of its dozen system calls, which
#: costs the reactor thread CPU while mail comes in. Four deliver half as
#: many again per second as one (see docs/performance.rst).
DEFAULT_THREADS = 4


def _host() -> str:
    """
    The host name as a Maildir file name holds it: ``/`` would split the
    path, and ``:`` starts the flags of a file in ``cur/``.
    """
    return socket.gethostname().replace("/", "_").replace(":", "_")


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Maildirs known to exist, so that each delivery does not make them again.
_known: set[str] = set()


def _ensure_maildir(directory: str) -> None:
    """
    Make the Maildir at *directory* if it is missing, durably: the parent
    of each directory made is ``fsync``\\ ed, or a crash could take away a
    new Maildir, and the mail delivered into it, after the delivery was
    counted and the queue had let the message go. A Maildir seen for the
    first time is made durable even if it was there.
    """
    if directory in _known and os.path.isdir(os.path.join(directory, "new")):
        return
    made = _make_maildir(directory, _missing(directory))
    # The Maildir and its parent too, though they were there already: the
    # process that made them may have stopped before they were durable.
    path = os.path.abspath(directory)
    parents = {os.path.dirname(p) for p in made} | {path, os.path.dirname(path)}
    # Children before parents: a parent's fsync then holds entries whose
    # own directories are already durable.
    for parent in sorted(parents, key=len, reverse=True):
        _fsync_directory(parent)
    _known.add(directory)


def _missing(directory: str) -> list[str]:
    """The directories of the path to *directory* that do not exist, deepest first."""
    missing: list[str] = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _make_maildir(directory: str, missing: list[str]) -> list[str]:
    """
    Make the *missing* directories, then the Maildir's ``tmp``, ``new``
    and ``cur``; not yet durably.

    :return: the directories made.
    """
    made: list[str] = []
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        made.append(path)
    for sub in ("tmp", "new", "cur"):
        try:
            os.mkdir(os.path.join(directory, sub), 0o700)
        except FileExistsError:
            continue
        made.append(os.path.join(directory, sub))
    return made


def deliver_to_maildir(directory: str, prefix: bytes, message: IO[bytes], now: float) -> str:
    """
    Write *prefix* and *message* (CRLF turned into LF) into the Maildir at
    *directory*, durably. Blocking: call it from a thread.

    :return: the path of the delivered file in ``new/``.
    """
    _ensure_maildir(directory)
    tmp_path, new_path = _paths(directory, now)
    _write(tmp_path, prefix, message, os.fsync)
    os.rename(tmp_path, new_path)
    _fsync_directory(os.path.join(directory, "new"))
    return new_path


def _paths(directory: str, now: float) -> tuple[str, str]:
    """A new file's unique path in ``tmp/``, and the one it gets in ``new/``."""
    seconds = int(now)
    unique = (f"{seconds}.M{int((now - seconds) * 1e6)}P{os.getpid()}"
              f"Q{next(_counter)}.{_host()}")
    return os.path.join(directory, "tmp", unique), os.path.join(directory, "new", unique)


def _write(path: str, prefix: bytes, message: IO[bytes], sync: Callable[[int], None]) -> None:
    """
    Write *prefix* and *message*, its CRLF turned into LF, into a new file
    at *path*, and call *sync* with its descriptor before closing it. On
    failure the file is removed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, prefix)
        carry = b""
        while True:
            chunk = message.read(_CHUNK)
            if not chunk:
                break
            chunk = carry + chunk
            carry = b"\r" if chunk.endswith(b"\r") else b""
            if carry:
                chunk = chunk[:-1]
            write_all(fd, chunk.replace(b"\r\n", b"\n"))
        if carry:
            write_all(fd, carry)
        sync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _no_sync(fd: int) -> None:
    """A file of a group is made durable by the group's ``syncfs``."""


@attrs.define(eq=False)
class _Delivery:
    """One delivery waiting for a group; then where its file went."""

    directory: str
    prefix: bytes
    message: IO[bytes]
    now: float
    tmp_path: str = ""
    new_path: str = ""
    device: int = 0
    made: bool = False


class _SyncFailed(OSError):
    """``syncfs`` failed: no delivery of its group is known to be durable."""


@implementer(IDeliveryTransport)
class MaildirTransport:
    """
    Delivers to the Maildir named by the route's ``directory`` argument.

    :param store: where messages are read from.
    :param reactor: the reactor, for the time and to bring the threads'
        results back.
    :param threadpool: where blocking file work runs, if given (anything
        with ``callInThreadWithCallback``, such as Twisted's
        :class:`~twisted.python.threadpool.ThreadPool`); by default
        *threads* threads of the transport's own, as the spool has, which
        cost a delivery far less CPU than a trip through a thread pool.
        They end when the reactor shuts down.
    :param threads: how many threads of its own, when no *threadpool* is
        given: how many deliveries are written at once (see
        :data:`DEFAULT_THREADS`).
    :param sync: how a delivery is made durable: ``"file"``, an ``fsync``
        of its file and of its ``new/`` directory; or ``"filesystem"``, two
        ``syncfs`` calls for each group of deliveries, written together in
        one thread (see the module's documentation).
    :raises ValueError: for a *sync* that is unknown or, for
        ``"filesystem"``, that this system cannot do safely.

    :ivar stats_syncfs: ``syncfs`` calls made.
    """

    def __init__(self, store: IQueueStore, reactor: Any,
                 threadpool: ThreadPoolLike | None = None,
                 threads: int = DEFAULT_THREADS, sync: str = SYNC_FILE) -> None:
        self._syncfs = choose_syncfs(sync)
        self.store = store
        self.reactor = reactor
        self.sync = sync
        self.stats_syncfs = 0
        self._runner: Runner = (
            PoolRunner(reactor, threadpool) if threadpool is not None
            else ThreadRunner(reactor, threads, "mailframe-maildir")
        )
        self._group: Group[_Delivery] = Group(self._deliver_group)
        # Per file system, a directory on it, opened before the first file
        # written there: the descriptor that syncfs reports write errors
        # through. Only the group's thread uses them, one group at a time.
        self._sync_fds: dict[int, int] = {}
        self._sync_failed = False

    def stop(self) -> Deferred[None]:
        """
        Wait for the deliveries under way, then end the transport's
        threads (a later delivery starts them again).
        """

        def idle(_: None) -> None:
            self._runner.stop()
            fds, self._sync_fds = self._sync_fds, {}
            for fd in fds.values():
                os.close(fd)

        return self._runner.when_idle().addCallback(idle)

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        directory = route.arguments.get("directory", "")
        if route.reject is not None or local_mailbox_name(os.path.basename(directory)) is None:
            reply = route.reject or Reply(550, "5.1.1", "Bad mailbox name")
            return Deferred.fromCoroutine(self._fail(recipients, reply, DeliveryStatus.PERMANENT))
        return Deferred.fromCoroutine(self._deliver(entry, recipients, directory))

    async def _fail(
        self, recipients: Sequence[tuple[Mailbox, Mailbox]], reply: Reply, status: DeliveryStatus
    ) -> list[RecipientResult]:
        return [RecipientResult(r, status, reply, original=o) for r, o in recipients]

    async def _deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], directory: str
    ) -> list[RecipientResult]:
        envelope = entry.envelope
        first = recipients[0][0]
        lines = [f"Return-Path: <{envelope.sender}>", f"Delivered-To: {first}",
                 *envelope.added_headers]
        prefix = ("\n".join(lines) + "\n").encode("utf-8")
        clock: IReactorTime = self.reactor
        try:
            message = await self.store.open_message(entry.queue_id)
            try:
                if self._syncfs is not None and not self._sync_failed:
                    path = await self._group.join(
                        _Delivery(directory, prefix, message, clock.seconds()))
                else:
                    path = await self._runner.run(
                        deliver_to_maildir, directory, prefix, message, clock.seconds())
            finally:
                message.close()
        except OSError as error:
            reply = Reply(451, "4.3.0", f"Maildir delivery failed: {error.strerror}")
            return await self._fail(recipients, reply, DeliveryStatus.TRANSIENT)
        reply = Reply(250, "2.0.0", f"Delivered to maildir {os.path.basename(path)}")
        return [RecipientResult(r, DeliveryStatus.DELIVERED, reply, original=o)
                for r, o in recipients]

    def _deliver_group(self, deliveries: list[_Delivery]) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            if not self._sync_failed and failure.check(_SyncFailed):
                self._sync_failed = True
                _log.failure(
                    "syncfs of a Maildir's file system failed: the deliveries written"
                    " with it will be tried again, and from now on each is fsynced on"
                    " its own", failure,
                )
            return failure

        return self._runner.run(self._write_together, deliveries).addErrback(failed)

    # -- in the transport's threads ------------------------------------------------

    def _write_together(self, deliveries: list[_Delivery]) -> list[object]:
        """
        Deliver a group: write every file into ``tmp/``, ``syncfs`` each
        file system written to, rename each file into ``new/``, and
        ``syncfs`` again.

        :return: for each delivery in order, its path in ``new/`` or its
            own error.
        :raises _SyncFailed: if a ``syncfs`` failed, which fails them all;
            their files are removed first.
        """
        if self._sync_failed:
            # A group that waited while the last one failed.
            return [_outcome(deliver_to_maildir, d.directory, d.prefix, d.message, d.now)
                    for d in deliveries]
        outcomes: list[object] = []
        for delivery in deliveries:
            outcomes.append(_outcome(self._write_one, delivery))
        written = _succeeded(deliveries, outcomes)
        try:
            self._sync_all(written)
            for index, delivery in enumerate(deliveries):
                if outcomes[index] is None:
                    outcomes[index] = _outcome(os.rename, delivery.tmp_path, delivery.new_path)
                    if outcomes[index] is not None:
                        unlink_if_there(delivery.tmp_path)
            renamed = _succeeded(deliveries, outcomes)
            self._sync_all(renamed)
        except _SyncFailed:
            # Not known to be durable: tried again, they must not stay.
            for delivery in written:
                unlink_if_there(delivery.tmp_path)
                unlink_if_there(delivery.new_path)
            raise
        for index, delivery in enumerate(deliveries):
            if outcomes[index] is None:
                if delivery.made:
                    _known.add(delivery.directory)
                outcomes[index] = delivery.new_path
        return outcomes

    def _write_one(self, delivery: _Delivery) -> None:
        """Make the delivery's Maildir if need be, and write its file; not yet durable."""
        directory = delivery.directory
        device = None
        if directory in _known:
            try:
                device = os.stat(os.path.join(directory, "new")).st_dev
            except FileNotFoundError:
                pass
        if device is None:
            missing = _missing(directory)
            existing = os.path.dirname(missing[-1]) if missing else directory
            device = os.stat(existing).st_dev
            self._open_sync_fd(device, existing)
            _make_maildir(directory, missing)
            delivery.made = True
        self._open_sync_fd(device, directory)
        delivery.device = device
        delivery.tmp_path, delivery.new_path = _paths(directory, delivery.now)
        _write(delivery.tmp_path, delivery.prefix, delivery.message, _no_sync)

    def _open_sync_fd(self, device: int, directory: str) -> None:
        """Keep a descriptor of *directory* for *device*'s ``syncfs``, unless one is kept."""
        if device not in self._sync_fds:
            self._sync_fds[device] = os.open(
                directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _sync_all(self, deliveries: list[_Delivery]) -> None:
        """``syncfs`` each file system that *deliveries* wrote to."""
        for device in sorted({d.device for d in deliveries}):
            try:
                cast(Callable[[int], None], self._syncfs)(self._sync_fds[device])
            except OSError as error:
                raise _SyncFailed(error.errno, error.strerror) from error
            self.stats_syncfs += 1


def _outcome(f: Callable[..., object], *args: Any) -> object:
    """``f(*args)``, or the error it raised: one delivery's, not its group's."""
    try:
        return f(*args)
    except Exception as error:
        return error


def _succeeded(deliveries: list[_Delivery], outcomes: list[object]) -> list[_Delivery]:
    """The deliveries whose step so far went well."""
    return [d for d, outcome in zip(deliveries, outcomes, strict=True) if outcome is None]


def _build_maildir(settings: Any, context: Any) -> MaildirTransport:
    return MaildirTransport(context.store, context.reactor, threads=settings["threads"],
                            sync=settings["sync"])


#: The ``maildir`` transport plugin.
maildir_maker = ComponentMaker(
    kind="transport",
    name="maildir",
    description="Delivers into the Maildir named by the route, with fsync",
    factory=_build_maildir,
    validate=check_sync,
    schema={
        "threads": Setting(
            "integer", DEFAULT_THREADS,
            "Deliveries written at once, each in a thread of its own. More let more"
            " wait on the disk together; fewer cost less CPU while mail comes in.",
            minimum=1,
        ),
        "sync": Setting(
            "string", SYNC_FILE,
            "How a delivery is made durable: \"file\", an fsync of its file and of"
            " its new/ directory; or \"filesystem\", two syncfs calls for each group"
            " of deliveries written together, for Maildirs on a file system that"
            " little else writes to (Linux 5.8 or later).",
            choices=(SYNC_FILE, SYNC_FILESYSTEM),
        ),
    },
)

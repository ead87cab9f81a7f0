"""
Delivery into Maildir: a file is written and fsynced in ``tmp/``, then
renamed into ``new/``, whose directory is fsynced before the delivery counts.

Delivered messages get ``Return-Path:`` and ``Delivered-To:`` fields on top
(RFC 5321 §4.4), and their line ends become LF, as Maildir readers expect.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult, Route
from mailframe.interfaces import IDeliveryTransport, IQueueStore
from mailframe.policies.users import local_mailbox_name
from mailframe.reply import Reply
from mailframe.stores._files import write_all
from mailframe.stores._threads import PoolRunner, Runner, ThreadPoolLike, ThreadRunner

__all__ = ["DEFAULT_THREADS", "MaildirTransport", "deliver_to_maildir"]

_CHUNK = 256 * 1024
_counter = itertools.count()

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
    counted and the queue had let the message go.
    """
    if directory in _known and os.path.isdir(os.path.join(directory, "new")):
        return
    made: list[str] = []
    missing: list[str] = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
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
    # Children before parents: a parent's fsync then holds entries whose
    # own directories are already durable.
    for path in sorted({os.path.dirname(p) for p in made}, key=len, reverse=True):
        _fsync_directory(path)
    _known.add(directory)


def deliver_to_maildir(directory: str, prefix: bytes, message: IO[bytes], now: float) -> str:
    """
    Write *prefix* and *message* (CRLF turned into LF) into the Maildir at
    *directory*, durably. Blocking: call it from a thread.

    :return: the path of the delivered file in ``new/``.
    """
    _ensure_maildir(directory)
    seconds = int(now)
    unique = (f"{seconds}.M{int((now - seconds) * 1e6)}P{os.getpid()}"
              f"Q{next(_counter)}.{_host()}")
    tmp_path = os.path.join(directory, "tmp", unique)
    new_path = os.path.join(directory, "new", unique)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp_path)
        raise
    os.close(fd)
    os.rename(tmp_path, new_path)
    _fsync_directory(os.path.join(directory, "new"))
    return new_path


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
    """

    def __init__(self, store: IQueueStore, reactor: Any,
                 threadpool: ThreadPoolLike | None = None,
                 threads: int = DEFAULT_THREADS) -> None:
        self.store = store
        self.reactor = reactor
        self._runner: Runner = (
            PoolRunner(reactor, threadpool) if threadpool is not None
            else ThreadRunner(reactor, threads, "mailframe-maildir")
        )

    def stop(self) -> Deferred[None]:
        """
        Wait for the deliveries under way, then end the transport's
        threads (a later delivery starts them again).
        """

        def idle(_: None) -> None:
            self._runner.stop()

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


def _build_maildir(settings: Any, context: Any) -> MaildirTransport:
    return MaildirTransport(context.store, context.reactor, threads=settings["threads"])


#: The ``maildir`` transport plugin.
maildir_maker = ComponentMaker(
    kind="transport",
    name="maildir",
    description="Delivers into the Maildir named by the route, with fsync",
    factory=_build_maildir,
    schema={
        "threads": Setting(
            "integer", DEFAULT_THREADS,
            "Deliveries written at once, each in a thread of its own. More let more"
            " wait on the disk together; fewer cost less CPU while mail comes in.",
            minimum=1,
        ),
    },
)

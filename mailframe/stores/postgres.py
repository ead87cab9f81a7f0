"""
A queue store in PostgreSQL, shared by several mailframe nodes: any node
can deliver any message.

Writing: a message is written in chunks of :data:`DEFAULT_CHUNK_SIZE`
octets, each in a short transaction of its own, while the entry is not yet
visible; the producer that feeds the writer is paused while a chunk is in
flight. No session holds a database connection between chunks, so a pool
of a few connections serves hundreds of sessions at once. The sealing
commit inserts the entry row (envelope and delivery state) with
``synchronous_commit`` on, in one transaction with the last chunk; the
commit Deferred fires, and the server answers ``250``, only after that
``COMMIT`` has returned. It also sends ``NOTIFY mailframe_queue``, which
wakes the runners of every node.

Claiming: ``SELECT … FOR UPDATE SKIP LOCKED`` takes due rows, and one
``UPDATE`` leases them to this node: its node id, a token of the claim, and
the end of the lease. The lease must outlast the longest transaction
(:data:`DEFAULT_LEASE`); it is renewed before the message data is sent and
again before the final dot, and a node whose renewal fails stops before the
final dot. An entry whose lease has run out is claimed by another node.
Delivery is at least once: a node that stops between a remote ``250`` and
recording it, or whose lease runs out while it waits for that ``250``,
leaves the entry to be delivered again.

Time: the store compares due times and leases with the time its caller
gives to :meth:`~PostgresQueueStore.claim` (the queue runner's clock), and
uses its reactor's clock for commits, renewals and an operator's changes,
as every store does. Nodes must therefore keep their clocks in step (NTP):
at start, :meth:`~PostgresQueueStore.recover` compares this node's clock
with the database's, and refuses to start when they differ by half a lease
or more.

Blocking calls of the driver (psycopg 3, with psycopg-pool) run in a thread
pool of the store's own, never on the reactor thread, so the store works on
every reactor. The driver is imported when the store is built: ``mailframe
plugins`` lists the store without it.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, Protocol, TypeVar, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import EntryState, Envelope, QueueEntry, QueueStats
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import (
    EntryStateError,
    LeaseLost,
    NoSuchEntry,
    StoreUnavailable,
    check_recipients,
)
from mailframe.stores._ids import RandomSource, id_source, new_queue_id
from mailframe.stores._pgschema import (
    SchemaMismatch,
    current_version,
    mismatch_message,
    upgrade_blocking,
)
from mailframe.stores._pressure import (
    DEFAULT_HIGH_WATER,
    GatedWriter,
    ProducerGate,
    WriterState,
)
from mailframe.stores._serialize import CorruptEntryError, entry_from_json, entry_to_json

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = [
    "CHANNEL",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LEASE",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_STATEMENT_TIMEOUT",
    "ClockSkew",
    "MissingDriver",
    "PostgresQueueStore",
    "StoreUnavailable",
    "UploadLost",
    "default_node",
    "describe_dsn",
    "schema_version",
    "upgrade",
]

#: Octets of a message written in one chunk, each in its own transaction.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Connections the store keeps to the database at most; as many threads
#: run its blocking calls.
DEFAULT_POOL_SIZE = 10
#: Seconds a claim leases an entry for: longer than the longest SMTP
#: transaction between two renewals, whose last step, the wait for the
#: reply to the final dot, may take 10 minutes (RFC 5321 §4.5.3.2.6).
DEFAULT_LEASE = 900.0
#: Seconds after the last chunk of a message that was never sealed when the
#: sweep deletes its chunks: far beyond the server's timeouts.
DEFAULT_ORPHAN_AGE = 3600.0
#: Seconds to wait for a database connection before an operation fails.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds the database lets one statement of the store run before it
#: cancels it (its ``statement_timeout``): far above the longest the store
#: runs, a flush or a count of a queue of millions, so that only a stuck
#: statement, such as one waiting on a lock that is never released, fails.
DEFAULT_STATEMENT_TIMEOUT = 300.0
#: Seconds the database keeps a transaction of the store open while it sends
#: nothing (``idle_in_transaction_session_timeout``), which frees the rows
#: locked by a node that hangs mid-transaction. The store's transactions
#: run their statements back to back.
IDLE_IN_TRANSACTION_TIMEOUT = 60.0
#: TCP keepalives on every connection (libpq's ``keepalives_idle``,
#: ``keepalives_interval`` and ``keepalives_count``): a database that is
#: gone without a word (a host down, a network cut) is noticed within about
#: a minute, not the two hours of the kernel's default.
KEEPALIVES_IDLE = 30
KEEPALIVES_INTERVAL = 10
KEEPALIVES_COUNT = 3
#: Seconds that data sent to the database may stay unacknowledged before
#: the connection is closed (libpq's ``tcp_user_timeout``, on Linux).
TCP_USER_TIMEOUT = 60.0
#: Seconds between sweeps for orphaned chunks, at most.
SWEEP_INTERVAL = 600.0
#: A message read from the database stays in memory up to this size, and
#: goes to a temporary file beyond it.
IN_MEMORY = 1024 * 1024
#: The channel of ``NOTIFY`` that wakes the runners.
CHANNEL = "mailframe_queue"
#: Clocks further apart than this are logged as a warning at start.
CLOCK_WARNING = 1.0
#: Seconds the notification thread waits between checks that it should stop.
LISTEN_POLL = 1.0
#: Seconds between attempts of the notification thread to reconnect, at most.
LISTEN_BACKOFF = 5.0

_log = Logger(namespace="mailframe.stores.postgres")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")
_Entries = list[QueueEntry]
_COLUMNS = "queue_id, state, next_attempt, reason, size, entry"


class MissingDriver(ImportError):
    """psycopg 3 or psycopg-pool is not installed."""


class UploadLost(Exception):
    """The chunks of a message being received were swept away as orphans."""


class ClockSkew(StoreUnavailable):
    """This node's clock and the database's differ too much for leases to work."""


def _driver() -> tuple[Any, Any]:
    """The psycopg and psycopg_pool modules, or :class:`MissingDriver`."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as error:
        raise MissingDriver(
            f"the postgres store needs psycopg 3 and psycopg-pool ({error}):"
            " pip install 'mailframe[postgres]'") from None
    return psycopg, psycopg_pool


def default_node() -> str:
    """This process's node id: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe_dsn(dsn: str) -> str:
    """*dsn* without its password, to name the database in messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "the configured database"
    shown = [f"{key}={value}" for key, value in parts.items()
             if key in ("host", "hostaddr", "port", "dbname", "user")]
    return " ".join(shown) or "the default database"


def _connection_options(connect_timeout: float) -> dict[str, Any]:
    """What every connection of the store passes to libpq beside the DSN."""
    return {
        "connect_timeout": max(1, round(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE,
        "keepalives_interval": KEEPALIVES_INTERVAL,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": round(TCP_USER_TIMEOUT * 1000),
    }


def _with_timeouts(dsn: str, statement_timeout: float) -> str:
    """
    *dsn* with the server-side timeouts of the store's sessions in its
    ``options``, before those the DSN gives itself, which win.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    ours = (f"-c statement_timeout={round(statement_timeout * 1000)}"
            f" -c idle_in_transaction_session_timeout="
            f"{round(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}")
    theirs = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{ours} {theirs}" if theirs else ours)


def _connect(dsn: str, connect_timeout: float) -> Any:
    psycopg, _ = _driver()
    try:
        return psycopg.connect(dsn, autocommit=True, **_connection_options(connect_timeout))
    except psycopg.OperationalError as error:
        raise StoreUnavailable(f"cannot connect to the PostgreSQL database"
                               f" ({describe_dsn(dsn)}): {str(error).strip()}") from None


def upgrade(dsn: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> tuple[int, int]:
    """
    Apply the schema migrations that the database at *dsn* lacks (blocking;
    for ``mailframe db upgrade``). Safe to run again, and on several nodes
    at once.

    :return: the schema versions before and after.
    :raises StoreUnavailable: when the database cannot be reached or is
        newer than this mailframe.
    """
    with _connect(dsn, connect_timeout) as conn:
        return upgrade_blocking(conn)


def schema_version(dsn: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> int:
    """The schema version of the database at *dsn* (blocking), 0 for none."""
    with _connect(dsn, connect_timeout) as conn:
        return current_version(conn)


class PostgresReactor(Protocol):
    """What the store needs of a reactor: its clock, calls from threads, shutdown."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None: ...

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., Any], *args: object,
        **kwargs: object,
    ) -> Any: ...

    def removeSystemEventTrigger(self, triggerID: Any) -> None: ...


@attrs.define
class _Claim:
    """What a claim found, gathered in a thread."""

    entries: _Entries
    tokens: dict[str, str]
    corrupt: list[tuple[str, str]]
    incoming_first: bool


@implementer(IQueueStore)
class PostgresQueueStore:
    """
    An :class:`~mailframe.interfaces.IQueueStore` in a PostgreSQL database,
    which several nodes may share.

    A server calls :meth:`recover` once before the first
    :meth:`open_writer` or :meth:`claim`; the ``mailframe queue`` command
    uses the other operations without it. Every operation first checks, once,
    that the database's schema is the one this mailframe needs
    (``mailframe db upgrade`` makes it so).

    :param dsn: a libpq connection string or URI.
    :param reactor: the clock, and where results are delivered.
    :param pool_size: connections to the database at most, and threads that
        use them.
    :param lease: seconds a claim and a renewal lease an entry for, in
        place of what the queue runner asks; ``None`` for what it asks.
    :param node: this node's id in leases, unique among the processes
        running at once; by default ``hostname:pid``. A node that restarts
        with the same id takes its own leases back at :meth:`recover`; with
        the default, which changes with each start, the entries a crashed
        node was delivering wait for their leases to run out.
    :param chunk_size: octets of message data per chunk.
    :param orphan_age: seconds after which the chunks of a message that was
        never sealed are deleted.
    :param connect_timeout: seconds to wait for a connection.
    :param statement_timeout: seconds the database lets one statement run
        before it cancels it (the operation then fails with
        :class:`StoreUnavailable`).
    :param random: the random source of queue ids.
    :param high_water: octets a writer holds before it pauses its producer.
    """

    def __init__(
        self,
        dsn: str,
        reactor: PostgresReactor,
        pool_size: int = DEFAULT_POOL_SIZE,
        lease: float | None = None,
        node: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        orphan_age: float = DEFAULT_ORPHAN_AGE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        random: RandomSource | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self._psycopg, self._psycopg_pool = _driver()
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.dsn = dsn
        self.pool_size = pool_size
        self.lease = lease
        self.node = node if node is not None else default_node()
        self.chunk_size = chunk_size
        self.orphan_age = orphan_age
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.high_water = max(high_water, 2 * chunk_size)
        self._reactor = reactor
        self._random: RandomSource = random if random is not None else _system_random()
        self._threads: ThreadPool | None = None
        self._shutdown_trigger: Any = None
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._schema_checked = False
        self._jobs: set[Deferred[Any]] = set()
        self._tokens: dict[str, str] = {}
        self._writers: dict[str, _PostgresWriter] = {}
        self._watchers: list[Callable[[], object]] = []
        self._incoming_first = True
        self._recovering = False
        self._recovered = False
        self._stopped = False
        self._sweep: IDelayedCall | None = None
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._stop_listening = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    # -- IQueueStore --------------------------------------------------------

    def recover(self) -> Deferred[int]:
        """
        Check the database and make this node's part of it consistent:

        - the database must be reachable, and its schema the one this
          mailframe needs (else the Deferred fails with a message that
          says what to do);
        - this node's clock must be within half a lease of the database's;
        - entries still leased to this node's id (from before a restart)
          become deferred and due now; other nodes' leases are left alone,
          and are taken over by claims once they run out;
        - chunks of messages never sealed are deleted once they are older
          than *orphan_age*.

        :return: a Deferred firing with the number of entries.
        """
        if self._recovering or self._recovered:
            return defer.fail(RuntimeError("recover() runs once, when the store starts"))
        self._recovering = True
        now = self._reactor.seconds()

        def done(result: tuple[int, int, int, float]) -> int:
            count, released, orphans, skew = result
            self._recovering = False
            self._recovered = True
            if abs(skew) > CLOCK_WARNING:
                _log.warn("This node's clock is {skew:.1f} s away from the database's;"
                          " keep the nodes' clocks in step (NTP)", skew=skew)
            _log.info("PostgreSQL queue {database} recovered as node {node}: {count} entries;"
                      " {released} leased to this node are deferred now; removed"
                      " {orphans} orphaned messages", database=describe_dsn(self.dsn),
                      node=self.node, count=count, released=released, orphans=orphans)
            self._schedule_sweep()
            if self._watchers:
                self._start_listening()
            return count

        def failed(failure: Failure) -> Failure:
            self._recovering = False
            return failure

        return self._run(self._recover, now).addCallbacks(done, failed)

    def has_room(self, size: int) -> bool:
        """Always ``True``: the database's space is watched by its operator."""
        return True

    def open_writer(self) -> _PostgresWriter:
        queue_id = new_queue_id(self._random, self._reactor.seconds())
        while queue_id in self._writers:
            queue_id = new_queue_id(self._random, self._reactor.seconds())
        writer = _PostgresWriter(self, queue_id)
        self._writers[queue_id] = writer
        return writer

    def open_message(self, queue_id: str) -> Deferred[BinaryIO]:
        """
        A Deferred firing with the message, read chunk by chunk in a thread
        into a temporary file (in memory up to :data:`IN_MEMORY` octets).
        """
        return self._run(self._read_message, queue_id)

    def claim(self, now: float, limit: int, lease: float) -> Deferred[_Entries]:
        """
        Lease up to *limit* due entries to this node, taking new mail
        (first in, first out) and due mail (the longest due first) in turn.
        Rows that another node is claiming or changing at the same moment
        are skipped (``SKIP LOCKED``), and so are those this store is still
        delivering, even once their lease ran out: another node may take
        those over, not this one. An entry whose envelope cannot be read is
        set aside in ``corrupt``.
        """
        if limit <= 0:
            return defer.succeed([])
        lease = self.lease if self.lease is not None else lease

        def claimed(found: _Claim) -> _Entries:
            self._tokens.update(found.tokens)
            self._incoming_first = found.incoming_first
            for queue_id, reason in found.corrupt:
                _log.warn("Set {queue_id} aside as corrupt: {reason}",
                          queue_id=queue_id, reason=reason)
            return found.entries

        token = uuid.uuid4().hex
        return self._run(
            self._claim, now, limit, now + lease, token, self._incoming_first,
            list(self._tokens),
        ).addCallback(claimed)

    def renew(self, queue_id: str, lease: float) -> Deferred[None]:
        """
        Extend this node's lease to at least *lease* seconds (or the
        store's own lease) from now. Fails with
        :class:`~mailframe.stores.LeaseLost` when the entry is no longer
        leased by this node's claim: another node took it over, or an
        operator changed it. A lease that ran out but that nobody took over
        is still this node's, and is extended.
        """
        lease = self.lease if self.lease is not None else lease
        until = self._reactor.seconds() + lease
        token = self._tokens.get(queue_id)
        return self._run(self._renew, queue_id, token, until).addErrback(
            self._attempt_ended, queue_id, token)

    def record(self, entry: QueueEntry) -> Deferred[None]:
        """
        Store the delivery state of *entry*, or delete the entry and its
        message when it is done; fires after the commit. Only the claim
        that holds the entry may record: this fails with
        :class:`~mailframe.stores.LeaseLost` when the lease was lost
        meanwhile, to another node's claim (even one that has ended since)
        or to an operator's change, and the entry is delivered again.
        """
        queue_id = entry.queue_id
        token = self._tokens.get(queue_id)

        def recorded(_: None) -> None:
            if entry.done:
                self._drop_token(queue_id, token)

        return self._run(self._record, entry, token).addCallbacks(
            recorded, self._attempt_ended, errbackArgs=(queue_id, token))

    def reschedule(self, queue_id: str, when: float, reason: str) -> Deferred[None]:
        """
        Defer an entry that this node's claim holds until *when*, ending the
        lease. An entry that an operator held, or another node took over,
        stays as it is.
        """
        token = self._tokens.pop(queue_id, None)
        return self._run(self._reschedule, queue_id, token, when, reason)

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> Deferred[_Entries]:
        return self._run(self._list, state, after, limit)

    def get(self, queue_id: str) -> Deferred[QueueEntry | None]:
        return self._run(self._get, queue_id)

    def hold(self, queue_id: str, reason: str) -> Deferred[None]:
        """Put an entry on hold; a delivery under way loses its lease."""
        return self._run(self._hold, queue_id, reason)

    def release(self, queue_id: str) -> Deferred[None]:
        return self._changing(self._run(self._release, queue_id, self._reactor.seconds()))

    def delete(self, queue_id: str) -> Deferred[None]:
        return self._run(self._delete, queue_id)

    def requeue(self, queue_id: str) -> Deferred[None]:
        """Make an entry due now; refused while a lease on it runs."""
        return self._changing(self._run(self._requeue, queue_id, self._reactor.seconds()))

    def flush(self) -> Deferred[int]:
        """Make every deferred entry due now; fires with how many there were."""
        return self._changing(self._run(self._flush, self._reactor.seconds()))

    def stats(self) -> Deferred[QueueStats]:
        return self._run(self._stats)

    def quarantine(self, queue_id: str, reason: str) -> Deferred[None]:
        return self._run(self._quarantine, queue_id, reason)

    def notify_on_change(self, callback: Callable[[], object]) -> None:
        """
        Call *callback* when entries may have become due: after
        :meth:`flush`, :meth:`release` and :meth:`requeue` here, and, in a
        recovered store, on every ``NOTIFY mailframe_queue`` of any node or
        command (a new entry, a flush, a release, a requeue). One thread
        keeps a connection that ``LISTEN``\\ s, and reconnects when it is
        lost; the queue runner's own polling covers the time between.
        """
        self._watchers.append(callback)
        if self._recovered:
            self._start_listening()

    # -- beyond the interface ------------------------------------------------

    def stop(self) -> Deferred[None]:
        """
        Stop listening and sweeping, wait for operations, and close the
        connections. Whoever uses the store stops it: a
        :class:`~mailframe.services.mta.MailService` does, last. A store
        still running when the reactor has shut down is stopped then.
        """
        if self._stopped:
            return defer.succeed(None)
        self._stopped = True
        self._stop_listening.set()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except ValueError:
                pass
            self._shutdown_trigger = None
        threads = self._threads

        def close(_: object) -> Deferred[None]:
            if threads is None:
                return defer.succeed(None)
            reactor = cast(IReactorFromThreads, self._reactor)
            return deferToThreadPool(reactor, threads, self._close_pool)

        def stop_threads(result: object) -> object:
            if threads is not None:
                threads.stop()
            return result

        return self.wait_idle().addCallback(close).addBoth(stop_threads).addCallback(
            lambda _: None)

    def wait_idle(self) -> Deferred[None]:
        """A Deferred firing once no database operation is in flight."""
        if not self._jobs:
            return defer.succeed(None)
        pending: Deferred[Any] = defer.DeferredList(list(self._jobs))
        return pending.addCallback(lambda _: self.wait_idle())

    def listening(self) -> bool:
        """Whether the notification thread has a connection that listens."""
        return self._listening.is_set()

    # -- reactor-side helpers -------------------------------------------------

    def _run(self, f: Callable[..., _R], *args: Any) -> Deferred[_R]:
        """Run ``f(connection, *args)`` in one transaction, in the store's threads."""
        if self._stopped:
            return defer.fail(StoreUnavailable("the store is stopped"))
        threads = self._start_threads()
        reactor = cast(IReactorFromThreads, self._reactor)
        d = deferToThreadPool(reactor, threads, self._transact, f, *args)
        self._jobs.add(d)

        def finished(result: object) -> object:
            self._jobs.discard(d)
            return result

        d.addBoth(finished)
        return d

    def _start_threads(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(minthreads=0, maxthreads=self.pool_size,
                                       name="mailframe-postgres")
            self._threads.start()
            # A safety net for a store that nobody stops, such as that of a
            # ``mailframe queue`` command. It runs after the "before"
            # phase, in which twistd stops the services: a MailService
            # stops its store itself, last, once the grace period for
            # connected sessions and the queue runner are over, and the
            # store must serve them until then.
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "after", "shutdown", self._stop_at_shutdown)
        return self._threads

    def _stop_at_shutdown(self) -> None:
        """
        Stop at once, blocking, after the reactor has stopped: wait for the
        threads' operations, then close the connections. Their results are
        not delivered any more.
        """
        self._shutdown_trigger = None
        if self._stopped:
            return
        self._stopped = True
        self._stop_listening.set()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.stop()
        self._close_pool()

    def _attempt_ended(self, failure: Failure, queue_id: str, token: str | None) -> Failure:
        """
        Forget the claim of *queue_id* once a renewal or a record fails in
        a way that ends the delivery attempt: its lease is lost, the entry
        is gone, or the database is unavailable (the queue runner gives the
        attempt up; the entry is claimed again once its lease runs out).
        """
        if failure.check(LeaseLost, NoSuchEntry, StoreUnavailable):
            self._drop_token(queue_id, token)
        return failure

    def _drop_token(self, queue_id: str, token: str | None) -> None:
        if token is not None and self._tokens.get(queue_id) == token:
            del self._tokens[queue_id]

    def _changing(self, d: Deferred[_T]) -> Deferred[_T]:
        def changed(result: _T) -> _T:
            self._changed()
            return result

        return d.addCallback(changed)

    def _changed(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        for callback in list(self._watchers):
            callback()

    def _schedule_sweep(self) -> None:
        if self._stopped:
            return
        interval = min(SWEEP_INTERVAL, max(self.orphan_age / 2, 1.0))
        self._sweep = self._reactor.callLater(interval, self._sweep_now)

    def _sweep_now(self) -> None:
        self._sweep = None

        def swept(count: int) -> None:
            if count:
                _log.info("Removed {count} orphaned messages", count=count)

        def failed(failure: Failure) -> None:
            _log.warn("Could not sweep orphaned chunks: {error}", error=failure.getErrorMessage())

        d = self._run(self._sweep_orphans)
        d.addCallbacks(swept, failed).addBoth(lambda _: self._schedule_sweep())

    def _start_listening(self) -> None:
        if self._listener is not None or self._stopped:
            return
        self._listener = threading.Thread(target=self._listen, name="mailframe-postgres-listen",
                                          daemon=True)
        self._listener.start()

    # -- in a thread ------------------------------------------------------------

    def _open_pool(self) -> ConnectionPool[Any]:
        with self._pool_lock:
            if self._pool is not None:
                return self._pool
            pool_module = self._psycopg_pool
            pool: ConnectionPool[Any] = pool_module.ConnectionPool(
                _with_timeouts(self.dsn, self.statement_timeout), min_size=1,
                max_size=self.pool_size, open=False, timeout=self.connect_timeout,
                name="mailframe", kwargs=_connection_options(self.connect_timeout),
                check=pool_module.ConnectionPool.check_connection,
            )
            try:
                pool.open(wait=True, timeout=self.connect_timeout)
            except Exception as error:
                pool.close(timeout=0)
                raise StoreUnavailable(
                    f"cannot connect to the PostgreSQL database ({describe_dsn(self.dsn)})"
                    f" within {self.connect_timeout:g} s") from error
            self._pool = pool
            return pool

    def _close_pool(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5.0)

    def _transact(self, f: Callable[..., _R], *args: Any) -> _R:
        psycopg = self._psycopg
        pool = self._open_pool()
        try:
            with pool.connection() as conn:
                try:
                    if not self._schema_checked:
                        problem = mismatch_message(current_version(conn))
                        if problem is not None:
                            raise SchemaMismatch(problem)
                        self._schema_checked = True
                    return f(conn, *args)
                except psycopg.DatabaseError as error:
                    if _cannot_write_now(error):
                        # The pool replaces it: its next connection may
                        # reach the new primary after a failover.
                        conn.close()
                    raise
        except (psycopg.OperationalError, psycopg.InterfaceError,
                self._psycopg_pool.PoolTimeout) as error:
            raise StoreUnavailable(
                f"the PostgreSQL database ({describe_dsn(self.dsn)}) is unavailable:"
                f" {error}") from error
        except psycopg.DatabaseError as error:
            if not _cannot_write_now(error):
                # A programming error, a constraint: a bug to see, not an outage.
                raise
            raise StoreUnavailable(
                f"the PostgreSQL database ({describe_dsn(self.dsn)}) cannot take writes"
                f" now: {error}") from error

    def _recover(self, conn: psycopg.Connection[Any], now: float) -> tuple[int, int, int, float]:
        skew = now - float(_scalar(conn, "SELECT extract(epoch FROM clock_timestamp())::float8"))
        if self.lease is not None and abs(skew) >= self.lease / 2:
            raise ClockSkew(
                f"this node's clock is {skew:+.1f} s away from the database's, half a lease"
                f" ({self.lease:g} s) or more: leases cannot be trusted; set the clock (NTP)")
        released = conn.execute(
            "UPDATE mailframe_entries SET state = 'deferred', next_attempt ="
            " LEAST(next_attempt, %s), lease_owner = NULL, lease_token = NULL,"
            " lease_until = NULL WHERE state = 'active' AND lease_owner = %s",
            (now, self.node)).rowcount
        orphans = self._sweep_orphans(conn)
        count = int(_scalar(conn, "SELECT count(*) FROM mailframe_entries"))
        return count, released, orphans, skew

    def _sweep_orphans(self, conn: psycopg.Connection[Any]) -> int:
        gone = [row[0] for row in conn.execute(
            "DELETE FROM mailframe_uploads WHERE touched < now() - make_interval(secs => %s)"
            " RETURNING queue_id", (self.orphan_age,))]
        if gone:
            conn.execute("DELETE FROM mailframe_chunks WHERE queue_id = ANY(%s)"
                         " AND NOT EXISTS (SELECT 1 FROM mailframe_entries e"
                         " WHERE e.queue_id = mailframe_chunks.queue_id)", (gone,))
        return len(gone)

    def _read_message(self, conn: psycopg.Connection[Any], queue_id: str) -> BinaryIO:
        row = conn.execute("SELECT chunks FROM mailframe_entries WHERE queue_id = %s",
                           (queue_id,)).fetchone()
        if row is None:
            raise NoSuchEntry(queue_id)
        return _read_chunks(conn, queue_id, int(row[0]))

    def _claim(
        self, conn: psycopg.Connection[Any], now: float, limit: int, until: float, token: str,
        incoming_first: bool, in_flight: Sequence[str],
    ) -> _Claim:
        incoming = [row[0] for row in conn.execute(
            "SELECT queue_id FROM mailframe_entries WHERE state = 'incoming'"
            " ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))]
        deferred = conn.execute(
            "SELECT next_attempt, queue_id FROM mailframe_entries WHERE state = 'deferred'"
            " AND next_attempt <= %s ORDER BY next_attempt LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, limit)).fetchall()
        # Not those this store is still delivering: their leases ran out,
        # but taking them again would run two deliveries under one claim.
        expired = conn.execute(
            "SELECT lease_until, queue_id FROM mailframe_entries WHERE state = 'active'"
            " AND lease_until <= %s AND (lease_owner IS DISTINCT FROM %s"
            " OR queue_id <> ALL(%s)) ORDER BY lease_until LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, self.node, in_flight, limit)).fetchall()
        due = [queue_id for _, queue_id in sorted(deferred + expired)]
        taken: list[str] = []
        while len(taken) < limit and (incoming or due):
            from_incoming = bool(incoming) and (incoming_first or not due)
            taken.append(incoming.pop(0) if from_incoming else due.pop(0))
            incoming_first = not from_incoming
        found = _Claim([], {}, [], incoming_first)
        if not taken:
            return found
        rows = conn.execute(
            "UPDATE mailframe_entries SET state = 'active', lease_owner = %s,"
            f" lease_token = %s, lease_until = %s WHERE queue_id = ANY(%s) RETURNING {_COLUMNS}",
            (self.node, token, until, taken)).fetchall()
        by_id = {row[0]: row for row in rows}
        for queue_id in taken:
            try:
                entry = _entry(by_id[queue_id])
            except CorruptEntryError as error:
                conn.execute(
                    "UPDATE mailframe_entries SET state = 'corrupt', reason = %s,"
                    " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                    " WHERE queue_id = %s", (str(error), queue_id))
                found.corrupt.append((queue_id, str(error)))
                continue
            found.entries.append(entry)
            found.tokens[queue_id] = token
        return found

    def _renew(
        self, conn: psycopg.Connection[Any], queue_id: str, token: str | None, until: float
    ) -> None:
        row = conn.execute(
            "UPDATE mailframe_entries SET lease_until = GREATEST(lease_until, %s)"
            " WHERE queue_id = %s AND state = 'active' AND lease_token = %s RETURNING 1",
            (until, queue_id, token)).fetchone()
        if row is None:
            _require(conn, queue_id)
            raise LeaseLost(queue_id)

    def _record(
        self, conn: psycopg.Connection[Any], entry: QueueEntry, token: str | None
    ) -> None:
        queue_id = entry.queue_id
        row = conn.execute(
            f"SELECT {_COLUMNS}, lease_token FROM mailframe_entries WHERE queue_id = %s"
            " FOR UPDATE", (queue_id,)).fetchone()
        if row is None:
            raise NoSuchEntry(queue_id)
        stored = _entry(row[:6])
        check_recipients(stored, entry)
        if token is None or row[6] != token:
            # Another claim took the entry over (and may have ended its
            # lease since), or an operator changed it: what this attempt
            # learnt must not overwrite what came after it.
            raise LeaseLost(queue_id)
        if entry.done:
            _remove(conn, queue_id)
            return
        updated = attrs.evolve(stored, recipients=entry.recipients, attempts=entry.attempts,
                               warned=entry.warned)
        conn.execute("UPDATE mailframe_entries SET entry = %b WHERE queue_id = %s",
                     (entry_to_json(updated), queue_id))

    def _reschedule(
        self, conn: psycopg.Connection[Any], queue_id: str, token: str | None, when: float,
        reason: str,
    ) -> None:
        row = conn.execute(
            "UPDATE mailframe_entries SET state = 'deferred', next_attempt = %s, reason = %s,"
            " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
            " WHERE queue_id = %s AND state = 'active' AND lease_token = %s RETURNING 1",
            (when, reason, queue_id, token)).fetchone()
        if row is None:
            _require(conn, queue_id)

    def _list(
        self, conn: psycopg.Connection[Any], state: EntryState | None, after: str | None,
        limit: int,
    ) -> _Entries:
        clauses, params = [], []
        if state is not None:
            clauses.append("state = %s")
            params.append(state.value)
        if after is not None:
            clauses.append("queue_id > %s")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM mailframe_entries {where} ORDER BY queue_id LIMIT %s",
            (*params, limit)).fetchall()
        found = []
        for row in rows:
            try:
                found.append(_entry(row))
            except CorruptEntryError as error:
                _log.warn("Cannot read entry {queue_id}: {error}", queue_id=row[0],
                          error=str(error))
        return found

    def _get(self, conn: psycopg.Connection[Any], queue_id: str) -> QueueEntry | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM mailframe_entries WHERE queue_id = %s",
                           (queue_id,)).fetchone()
        return None if row is None else _entry(row)

    def _hold(self, conn: psycopg.Connection[Any], queue_id: str, reason: str) -> None:
        state = _lock_state(conn, queue_id)
        if state is EntryState.CORRUPT:
            raise EntryStateError(f"{queue_id} is corrupt and cannot be hold")
        _move(conn, queue_id, EntryState.HOLD, reason)

    def _release(self, conn: psycopg.Connection[Any], queue_id: str, now: float) -> None:
        state = _lock_state(conn, queue_id)
        if state is not EntryState.HOLD:
            raise EntryStateError(f"{queue_id} is {state.value}, not on hold")
        _move(conn, queue_id, EntryState.DEFERRED, "", now)
        conn.execute(f"NOTIFY {CHANNEL}")

    def _delete(self, conn: psycopg.Connection[Any], queue_id: str) -> None:
        _lock_state(conn, queue_id)
        _remove(conn, queue_id)

    def _requeue(self, conn: psycopg.Connection[Any], queue_id: str, now: float) -> None:
        row = conn.execute(
            "SELECT state, lease_until FROM mailframe_entries WHERE queue_id = %s FOR UPDATE",
            (queue_id,)).fetchone()
        if row is None:
            raise NoSuchEntry(queue_id)
        state = EntryState(row[0])
        if state is EntryState.ACTIVE and row[1] is not None and row[1] > now:
            raise EntryStateError(f"{queue_id} is being delivered")
        if state is EntryState.CORRUPT:
            raise EntryStateError(f"{queue_id} is corrupt and cannot be deferred")
        _move(conn, queue_id, EntryState.DEFERRED, "", now)
        conn.execute(f"NOTIFY {CHANNEL}")

    def _flush(self, conn: psycopg.Connection[Any], now: float) -> int:
        count = conn.execute(
            "UPDATE mailframe_entries SET next_attempt = LEAST(next_attempt, %s)"
            " WHERE state = 'deferred'", (now,)).rowcount
        conn.execute(f"NOTIFY {CHANNEL}")
        return count

    def _stats(self, conn: psycopg.Connection[Any]) -> QueueStats:
        rows = conn.execute(
            "SELECT state, count(*), coalesce(sum(size), 0), min(received_at)"
            " FROM mailframe_entries GROUP BY state").fetchall()
        counts = dict.fromkeys(EntryState, 0)
        size = 0
        oldest: float | None = None
        for state, count, octets, first in rows:
            counts[EntryState(state)] = int(count)
            size += int(octets)
            if first is not None and (oldest is None or first < oldest):
                oldest = float(first)
        return QueueStats(tuple(counts.items()), size=size, oldest=oldest)

    def _quarantine(self, conn: psycopg.Connection[Any], queue_id: str, reason: str) -> None:
        _lock_state(conn, queue_id)
        _move(conn, queue_id, EntryState.CORRUPT, reason)

    def _listen(self) -> None:
        """The notification thread: LISTEN, and wake the watchers on each NOTIFY."""
        psycopg = self._psycopg
        backoff = 0.5
        while not self._stop_listening.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True,
                                     **_connection_options(self.connect_timeout)) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    backoff = 0.5
                    # Whatever was notified while nobody listened.
                    self._wake_from_thread()
                    while not self._stop_listening.is_set():
                        for _ in conn.notifies(timeout=LISTEN_POLL, stop_after=1):
                            self._wake_from_thread()
            except Exception as error:
                self._listening.clear()
                if self._stop_listening.is_set():
                    break
                _log.info("Not listening for queue notifications ({error}); trying again",
                          error=str(error).strip())
                self._stop_listening.wait(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF)
        self._listening.clear()

    def _wake_from_thread(self) -> None:
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._reactor.callFromThread(self._changed)
        except Exception:
            with self._wake_lock:
                self._wake_pending = False


#: SQLSTATEs, beside those of ``OperationalError``, that say the database
#: cannot take the store's writes now rather than that the store is wrong: a
#: read-only transaction (a standby, after a failover), a session ended by
#: a timeout, and the server's internal errors (class XX).
_UNAVAILABLE_STATES = frozenset({"25006", "25P03", "25P04"})


def _cannot_write_now(error: BaseException) -> bool:
    """Whether *error*, of psycopg, means an outage of the database, not a bug."""
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is None:
        return False
    return sqlstate in _UNAVAILABLE_STATES or sqlstate.startswith("XX")


def _system_random() -> RandomSource:
    from random import SystemRandom

    return SystemRandom()


def _entry(row: Any) -> QueueEntry:
    queue_id, state, next_attempt, reason, size, document = row
    entry = entry_from_json(bytes(document), queue_id)
    try:
        entry_state = EntryState(state)
    except ValueError as error:
        raise CorruptEntryError(str(error)) from error
    return attrs.evolve(entry, state=entry_state, next_attempt=float(next_attempt),
                        reason=reason, size=int(size))


def _scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    """The one value that *sql* selects."""
    row = conn.execute(sql).fetchone()
    if row is None:
        raise ValueError(f"no row from {sql}")
    return row[0]


def _require(conn: psycopg.Connection[Any], queue_id: str) -> None:
    if conn.execute("SELECT 1 FROM mailframe_entries WHERE queue_id = %s",
                    (queue_id,)).fetchone() is None:
        raise NoSuchEntry(queue_id)


def _lock_state(conn: psycopg.Connection[Any], queue_id: str) -> EntryState:
    row = conn.execute("SELECT state FROM mailframe_entries WHERE queue_id = %s FOR UPDATE",
                       (queue_id,)).fetchone()
    if row is None:
        raise NoSuchEntry(queue_id)
    return EntryState(row[0])


def _move(
    conn: psycopg.Connection[Any], queue_id: str, state: EntryState, reason: str,
    when: float | None = None,
) -> None:
    """Move an entry to *state*, ending any lease; due at *when* if given."""
    conn.execute(
        "UPDATE mailframe_entries SET state = %s, reason = %s,"
        " next_attempt = coalesce(%s, next_attempt), lease_owner = NULL,"
        " lease_token = NULL, lease_until = NULL WHERE queue_id = %s",
        (state.value, reason, when, queue_id))


def _remove(conn: psycopg.Connection[Any], queue_id: str) -> None:
    conn.execute("DELETE FROM mailframe_entries WHERE queue_id = %s", (queue_id,))
    conn.execute("DELETE FROM mailframe_chunks WHERE queue_id = %s", (queue_id,))


def _read_chunks(conn: psycopg.Connection[Any], queue_id: str, count: int) -> BinaryIO:
    """The first *count* chunks of *queue_id*, one at a time, into a temporary file."""
    file = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    try:
        for seq in range(count):
            row = conn.execute(
                "SELECT data FROM mailframe_chunks WHERE queue_id = %s AND seq = %s",
                (queue_id, seq), binary=True).fetchone()
            if row is None:
                raise NoSuchEntry(queue_id)
            file.write(row[0])
            del row
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return cast(BinaryIO, file)


@implementer(IQueueWriter)
class _PostgresWriter(GatedWriter):
    """
    One message being written into the database, chunk by chunk.

    Writes collect in memory up to the store's chunk size; each full chunk
    is inserted in a transaction of its own, one after another, and its
    octets count as outstanding (pausing the producer above the high-water
    mark) until that transaction has committed. The first chunk also
    inserts an upload row, which each later chunk touches and the sealing
    commit deletes; a message whose upload row the orphan sweep deleted can
    no longer be sealed.
    """

    def __init__(self, store: PostgresQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._state = WriterState.OPEN
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._chunks = 0
        self._error: Failure | None = None
        self._tail: Deferred[None] = defer.succeed(None)
        self._gate = ProducerGate(cast(IReactorTime, store._reactor), store.high_water)

    def write(self, data: bytes) -> None:
        """
        Append *data*. A write error is kept and reported by :meth:`commit`;
        writes after :meth:`abort` are ignored.
        """
        if not self._take_in(data):
            return
        while self._buffered >= self._store.chunk_size:
            self._send(self._cut(self._store.chunk_size))

    def commit(self, envelope: Envelope, hold: str | None = None) -> Deferred[str]:
        """
        Insert what is left as the last chunk and seal the entry, in one
        transaction with ``synchronous_commit`` on; fire with the queue id
        once its ``COMMIT`` has returned.
        """
        if self._state is not WriterState.OPEN:
            state = self._state.value
            return defer.fail(RuntimeError(f"commit() of {self.queue_id}, which is {state}"))
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._state = WriterState.COMMITTING
        store = self._store
        data = self._cut(self._buffered)
        state = EntryState.INCOMING if hold is None else EntryState.HOLD
        entry = QueueEntry.new(self.queue_id, envelope, store._reactor.seconds(), self._size,
                               state)
        if hold is not None:
            entry = attrs.evolve(entry, reason=hold)

        def seal() -> Deferred[str]:
            if self._error is not None:
                self._gate.done(len(data))
                return defer.fail(self._error)
            before = self._chunks
            total = before + (1 if data else 0)
            d = store._run(self._seal, entry, data, before, total)

            def sealed(result: object) -> object:
                self._gate.done(len(data))
                return result

            return d.addBoth(sealed).addCallback(lambda _: self._committed())

        return self._chain(seal).addErrback(self._commit_failed)

    def open_message(self) -> Deferred[BinaryIO]:
        """A file reading what was written so far, once it is in the database."""
        if self._state is not WriterState.OPEN:
            return defer.fail(RuntimeError(f"open_message() of {self.queue_id} after commit"))
        if self._buffered:
            self._send(self._cut(self._buffered))

        def read() -> Deferred[BinaryIO]:
            if self._error is not None:
                return defer.fail(self._error)
            return self._store._run(_read_chunks, self.queue_id, self._chunks)

        return self._chain(read)

    def abort(self) -> None:
        """
        Throw the message away, deleting its chunks (best effort: the
        orphan sweep deletes what is left). Once :meth:`commit` is called
        this does nothing.
        """
        if self._state is not WriterState.OPEN:
            return
        self._state = WriterState.ABORTED
        self._gate.done(len(self._cut(self._buffered)))
        self._store._writers.pop(self.queue_id, None)
        self._discard()

    # -- on the reactor --------------------------------------------------------

    def _cut(self, count: int) -> bytes:
        """The first *count* buffered octets, taken from the buffer."""
        data = b"".join(self._buffer)
        rest = data[count:]
        self._buffer = [rest] if rest else []
        self._buffered = len(rest)
        return data[:count]

    def _send(self, data: bytes) -> None:
        seq = self._chunks
        self._chunks += 1

        def insert() -> Deferred[None]:
            if self._error is not None or self._state is WriterState.ABORTED:
                return defer.succeed(None)
            return self._store._run(self._insert_chunk, seq, data)

        def failed(failure: Failure) -> None:
            if self._error is None:
                self._error = failure

        d = self._chain(insert)
        d.addErrback(failed)
        d.addCallback(lambda _: self._gate.done(len(data)))

    def _committed(self) -> str:
        self._state = WriterState.COMMITTED
        self._store._writers.pop(self.queue_id, None)
        return self.queue_id

    def _commit_failed(self, failure: Failure) -> Failure:
        self._state = WriterState.FAILED
        self._store._writers.pop(self.queue_id, None)
        self._discard()
        return failure

    def _discard(self) -> None:
        def cleanup() -> Deferred[None]:
            return self._store._run(self._remove_chunks)

        def failed(failure: Failure) -> None:
            _log.warn("Cannot remove the chunks of {queue_id} ({error}); the orphan sweep"
                      " will", queue_id=self.queue_id, error=failure.getErrorMessage())

        self._chain(cleanup).addErrback(failed)

    # -- in a thread -------------------------------------------------------------

    def _insert_chunk(self, conn: psycopg.Connection[Any], seq: int, data: bytes) -> None:
        queue_id = self.queue_id
        if seq == 0:
            conn.execute("INSERT INTO mailframe_uploads (queue_id, node) VALUES (%s, %s)",
                         (queue_id, self._store.node))
        elif conn.execute("UPDATE mailframe_uploads SET touched = now() WHERE queue_id = %s",
                          (queue_id,)).rowcount != 1:
            raise UploadLost(f"the chunks of {queue_id} were removed as orphans")
        conn.execute("INSERT INTO mailframe_chunks (queue_id, seq, data) VALUES (%s, %s, %b)",
                     (queue_id, seq, data))

    def _seal(
        self, conn: psycopg.Connection[Any], entry: QueueEntry, data: bytes, before: int,
        total: int,
    ) -> None:
        queue_id = self.queue_id
        # 250 follows this commit: it must be durable when it returns.
        conn.execute("SET LOCAL synchronous_commit = on")
        if before and conn.execute("DELETE FROM mailframe_uploads WHERE queue_id = %s",
                                   (queue_id,)).rowcount != 1:
            raise UploadLost(f"the chunks of {queue_id} were removed as orphans")
        if data:
            conn.execute("INSERT INTO mailframe_chunks (queue_id, seq, data)"
                         " VALUES (%s, %s, %b)", (queue_id, before, data))
        conn.execute(
            "INSERT INTO mailframe_entries (queue_id, state, next_attempt, reason, size,"
            " received_at, chunks, entry) VALUES (%s, %s, %s, %s, %s, %s, %s, %b)",
            (queue_id, entry.state.value, entry.next_attempt, entry.reason, entry.size,
             entry.envelope.received_at, total, entry_to_json(entry)))
        conn.execute(f"NOTIFY {CHANNEL}")

    def _remove_chunks(self, conn: psycopg.Connection[Any]) -> None:
        # The upload row first: its lock waits for a seal of this message
        # still under way (one whose answer was lost), which deletes it.
        conn.execute("DELETE FROM mailframe_uploads WHERE queue_id = %s", (self.queue_id,))
        # A commit whose COMMIT went through but whose answer was lost made
        # an entry: its chunks stay (its client heard 451, and may send it
        # again: a duplicate, not a loss).
        conn.execute("DELETE FROM mailframe_chunks WHERE queue_id = %s AND NOT EXISTS"
                     " (SELECT 1 FROM mailframe_entries WHERE queue_id = %s)",
                     (self.queue_id, self.queue_id))


def _build_postgres(settings: Any, context: Any) -> PostgresQueueStore:
    node = settings["node"] or None
    worker = getattr(context, "worker", None)
    if worker is not None:
        # One id per worker slot, kept across the worker's restarts: a
        # worker started again takes back its predecessor's leases at once,
        # and never its siblings'.
        node = f"{node or socket.gethostname()}/worker-{worker}"
    return PostgresQueueStore(
        settings["dsn"], context.reactor,
        pool_size=settings["pool_size"],
        lease=settings["lease"],
        node=node,
        chunk_size=settings["chunk_size"],
        orphan_age=settings["orphan_age"],
        connect_timeout=settings["connect_timeout"],
        random=id_source(context.random),
        statement_timeout=settings["statement_timeout"],
    )


#: The ``postgres`` store plugin: a queue in PostgreSQL that nodes share.
postgres_maker = ComponentMaker(
    kind="store",
    name="postgres",
    description="Durable queue in PostgreSQL (dsn), shared by several nodes",
    factory=_build_postgres,
    shared=True,
    schema={
        "dsn": Setting(
            "string", None,
            "The libpq connection string or URI of the database, such as"
            " 'host=db.example port=5432 dbname=mail user=mailframe'.", required=True,
        ),
        "pool_size": Setting(
            "integer", DEFAULT_POOL_SIZE,
            "Connections to the database at most (and threads that use them); sessions"
            " share them, one short transaction at a time.", minimum=1,
        ),
        "lease": Setting(
            "duration", DEFAULT_LEASE,
            "How long a claim leases an entry to this node: longer than the longest"
            " delivery between renewals. Another node takes an entry over once its lease"
            " runs out.", minimum=1,
        ),
        "node": Setting(
            "string", "",
            "This node's id in leases, unique among the running processes (default:"
            " hostname:pid). A node that restarts with the same id takes back its own"
            " leases at once; with the default, a crashed node's entries wait for their"
            " leases to run out. Worker processes (--workers) add /worker-SLOT to it"
            " (default: hostname/worker-SLOT), so a restarted worker takes back its"
            " predecessor's leases at once.",
        ),
        "chunk_size": Setting(
            "integer", DEFAULT_CHUNK_SIZE,
            "Octets of message data written in one chunk, each in its own transaction.",
            minimum=1024,
        ),
        "orphan_age": Setting(
            "duration", DEFAULT_ORPHAN_AGE,
            "How long the chunks of a message that was never sealed (a node stopped"
            " mid-DATA) stay before they are deleted.", minimum=60,
        ),
        "connect_timeout": Setting(
            "duration", DEFAULT_CONNECT_TIMEOUT,
            "How long an operation waits for a database connection before it fails"
            " (new mail then gets 451 4.3.0).", minimum=0.1,
        ),
        "statement_timeout": Setting(
            "duration", DEFAULT_STATEMENT_TIMEOUT,
            "How long the database lets one statement of the store run before it"
            " cancels it: far above the longest the store needs, so that only a stuck"
            " one fails.", minimum=1,
        ),
    },
)

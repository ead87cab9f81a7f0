"""
The PostgreSQL store against a real PostgreSQL server (tests/pg_support.py):
the contract, and what only this store does: chunks, orphans, leases shared
between nodes, notifications, the schema.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailframe.stores.postgres import PostgresQueueStore
from mailframe.testing._store_contract import QueueStoreContract
from tests.pg_support import postgres

_Test = Generator[Deferred[Any], Any, None]


def make_store(testcase: TestCase, dsn: str, **options: Any) -> PostgresQueueStore:
    """A store on *dsn*, stopped when the test ends."""
    store = PostgresQueueStore(dsn, reactor, connect_timeout=3.0, **options)
    testcase.addCleanup(store.stop)
    return store


class PostgresContractTests(QueueStoreContract, TestCase):
    def make_store(self) -> Deferred[PostgresQueueStore]:
        self.dsn = postgres().new_database()
        store = make_store(self, self.dsn, pool_size=3)
        return store.recover().addCallback(lambda _: store)

    @inlineCallbacks
    def test_claim_respects_lease(self) -> _Test:
        """
        As in the contract, except who claims once the lease ran out:
        another node, not the one that still delivers the entry.
        """
        store = yield self._store()
        queue_id = yield self._commit(store)
        self.assertEqual(self._ids((yield store.claim(self.now, 10, 60))), [queue_id])
        other = make_store(self, self.dsn, node="other")
        self.assertEqual((yield other.claim(self.now + 30, 10, 60)), [])
        self.assertEqual((yield store.claim(self.now + 61, 10, 60)), [])
        again = yield other.claim(self.now + 61, 10, 60)
        self.assertEqual(self._ids(again), [queue_id])


def _envelope() -> Any:
    from mailframe.testing._fakes import envelope

    return envelope("sender@example.org", "alice@example.com")


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def _wait_for(predicate: Any, timeout: float = 10.0) -> Deferred[None]:
    """Fires once *predicate()* holds, checking every 20 ms; fails after *timeout*."""
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def wait() -> _Test:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"not within {timeout} s")
            yield deferLater(reactor, 0.02, lambda: None)

    return wait()


class _Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class PostgresStoreTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dsn = postgres().new_database()

    def store(self, **options: Any) -> PostgresQueueStore:
        return make_store(self, self.dsn, **options)

    @inlineCallbacks
    def commit(self, store: PostgresQueueStore, data: bytes = b"Subject: x\r\n\r\nhi\r\n") -> _Test:
        writer = store.open_writer()
        writer.write(data)
        queue_id = yield writer.commit(_envelope())
        return queue_id  # type: ignore[misc]

    @inlineCallbacks
    def test_large_message_in_chunks_in_bounded_memory(self) -> _Test:
        """
        50 MB streamed through a writer whose producer honours pauses: every
        chunk row is at most the chunk size, the message reads back intact,
        and Python never held much more than the high-water mark at once.
        """
        import hashlib
        import tracemalloc

        chunk_size = 256 * 1024
        store = self.store(chunk_size=chunk_size)
        yield store.recover()
        total = 50 * 1024 * 1024
        piece = 64 * 1024
        digest = hashlib.sha256()
        writer = store.open_writer()
        producer = _Producer()
        writer.registerProducer(producer, True)
        pauses = 0
        tracemalloc.start()
        try:
            sent = 0
            while sent < total:
                if producer.paused:
                    pauses += 1
                    yield _wait_for(lambda: not producer.paused, 60)
                data = (b"%08d" % (sent // piece)) * (piece // 8)
                digest.update(data)
                writer.write(data)
                sent += len(data)
            queue_id = yield writer.commit(_envelope())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        writer.unregisterProducer()
        self.assertGreater(pauses, 0)
        self.assertLess(peak, 16 * 1024 * 1024, f"peak {peak} octets")
        rows = _rows(self.dsn, f"SELECT count(*), max(length(data)), sum(length(data))"
                               f" FROM mailframe_chunks WHERE queue_id = '{queue_id}'")
        count, longest, octets = rows[0]
        self.assertEqual(count, total // chunk_size)
        self.assertEqual(longest, chunk_size)
        self.assertEqual(octets, total)
        f = yield store.open_message(queue_id)
        try:
            check = hashlib.sha256()
            while block := f.read(1024 * 1024):
                check.update(block)
        finally:
            f.close()
        self.assertEqual(check.hexdigest(), digest.hexdigest())
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_uploads"), [(0,)])

    @inlineCallbacks
    def test_orphaned_chunks_are_swept(self) -> _Test:
        """A node that stopped mid-DATA leaves chunks; recovery elsewhere removes them."""
        crashed = self.store(chunk_size=1024, node="crashed")
        yield crashed.recover()
        writer = crashed.open_writer()
        writer.write(b"x" * 5000)
        yield crashed.wait_idle()
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_chunks"), [(4,)])
        # The node is gone: its writer is neither committed nor aborted.
        survivor = self.store(node="survivor", orphan_age=0.0)
        yield survivor.recover()
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_chunks"), [(0,)])
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_uploads"), [(0,)])
        # Were it still alive, its message could not be sealed any more.
        writer.write(b"y" * 2000)
        try:
            yield writer.commit(_envelope())
        except Exception as error:
            self.assertIn("orphans", str(error))
        else:
            self.fail("a message whose chunks were swept was committed")
        self.assertEqual((yield survivor.list()), [])

    @inlineCallbacks
    def test_abort_removes_chunks(self) -> _Test:
        store = self.store(chunk_size=1024)
        yield store.recover()
        writer = store.open_writer()
        writer.write(b"z" * 4096)
        yield store.wait_idle()
        writer.abort()
        yield store.wait_idle()
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_chunks"), [(0,)])
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_uploads"), [(0,)])

    @inlineCallbacks
    def test_removing_chunks_waits_for_a_seal_under_way(self) -> _Test:
        """
        A writer whose commit failed (its answer lost, say) removes its
        chunks while the sealing transaction may still be running in the
        database: the removal waits for it, and keeps the chunks of the
        entry it made.
        """
        import psycopg
        from twisted.internet.task import deferLater

        from mailframe.envelope import EntryState, QueueEntry

        store = self.store(chunk_size=1024)
        yield store.recover()
        writer = store.open_writer()
        writer.write(b"x" * 3000)
        yield store.wait_idle()
        entry = QueueEntry.new(writer.queue_id, _envelope(), reactor.seconds(), 2048,
                               EntryState.INCOMING)
        sealing = psycopg.connect(self.dsn)
        self.addCleanup(sealing.close)
        writer._seal(sealing, entry, b"", 2, 2)
        removed = store._run(writer._remove_chunks)
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(removed.called, "the removal did not wait for the seal")
        sealing.commit()
        yield removed
        f = yield store.open_message(writer.queue_id)
        try:
            self.assertEqual(f.read(), b"x" * 2048)
        finally:
            f.close()

    @inlineCallbacks
    def test_expired_lease_is_taken_over_by_another_node(self) -> _Test:
        first = self.store(node="first", lease=60.0)
        second = self.store(node="second", lease=60.0)
        yield first.recover()
        yield second.recover()
        queue_id = yield self.commit(first)
        now = reactor.seconds()
        taken = yield first.claim(now, 10, 60)
        self.assertEqual([e.queue_id for e in taken], [queue_id])
        self.assertEqual((yield second.claim(now + 30, 10, 60)), [])
        owner = _rows(self.dsn, "SELECT lease_owner FROM mailframe_entries")
        self.assertEqual(owner, [("first",)])
        # The first node's lease runs out: the second takes the entry over.
        again = yield second.claim(now + 61, 10, 60)
        self.assertEqual([e.queue_id for e in again], [queue_id])
        self.assertEqual(_rows(self.dsn, "SELECT lease_owner FROM mailframe_entries"),
                         [("second",)])
        # The first node finds out at its next step, and changes nothing.
        from mailframe.stores import LeaseLost

        yield self.assertFailure(first.renew(queue_id, 60), LeaseLost)
        yield self.assertFailure(first.record(taken[0]), LeaseLost)
        yield first.reschedule(queue_id, now + 999, "first gave up")
        entry = yield second.get(queue_id)
        self.assertEqual(entry.state.value, "active")
        yield second.renew(queue_id, 60)

    @inlineCallbacks
    def test_a_late_record_does_not_overwrite_the_next_claim(self) -> _Test:
        """
        The first node's lease runs out; the second claims the entry,
        delivers to one recipient and reschedules it, which ends its lease.
        The first node's record, arriving late, is refused, and the
        second's outcome stays.
        """
        import attrs

        from mailframe.envelope import RecipientState
        from mailframe.stores import LeaseLost

        first = self.store(node="first", lease=60.0)
        second = self.store(node="second", lease=60.0)
        yield first.recover()
        yield second.recover()
        queue_id = yield self.commit(first)
        now = reactor.seconds()
        (late,) = yield first.claim(now, 10, 60)
        (taken,) = yield second.claim(now + 61, 10, 60)
        (alice,) = taken.recipients
        # Delivered, with a report owed: not done yet.
        owed = attrs.evolve(alice, state=RecipientState.DELIVERED, report="delivered")
        yield second.record(attrs.evolve(taken, recipients=(owed,), attempts=1))
        yield second.reschedule(queue_id, now + 999, "a report is owed")
        self.assertEqual(_rows(self.dsn, "SELECT state, lease_token FROM mailframe_entries"),
                         [("deferred", None)])
        pending = attrs.evolve(alice, attempts=1, next_attempt=now + 300)
        yield self.assertFailure(
            first.record(attrs.evolve(late, recipients=(pending,), attempts=1)), LeaseLost)
        entry = yield second.get(queue_id)
        self.assertEqual(entry.recipients[0].state, RecipientState.DELIVERED)
        self.assertEqual(entry.recipients[0].report, "delivered")

    @inlineCallbacks
    def test_a_node_does_not_claim_what_it_still_delivers(self) -> _Test:
        """
        A lease that runs out while this node still delivers the entry is
        left to other nodes; once the attempt ends (here: the database is
        unavailable for a renewal), this node may claim the entry again.
        """
        from mailframe.stores import LeaseLost, StoreUnavailable

        first = self.store(node="first", lease=60.0)
        yield first.recover()
        queue_id = yield self.commit(first)
        now = reactor.seconds()
        taken = yield first.claim(now, 10, 60)
        self.assertEqual([e.queue_id for e in taken], [queue_id])
        self.assertEqual((yield first.claim(now + 61, 10, 60)), [])

        def unavailable(*args: Any) -> None:
            raise StoreUnavailable("the database is down")

        patched = self.patch(first, "_renew", unavailable)
        yield self.assertFailure(first.renew(queue_id, 60), StoreUnavailable)
        patched.restore()
        again = yield first.claim(now + 61, 10, 60)
        self.assertEqual([e.queue_id for e in again], [queue_id])
        # Another node takes it over; this one's lost renewal forgets it.
        second = self.store(node="second", lease=60.0)
        yield second.recover()
        self.assertEqual(len((yield second.claim(now + 122, 10, 60))), 1)
        yield self.assertFailure(first.renew(queue_id, 60), LeaseLost)
        self.assertEqual(first._tokens, {})
        yield self.assertFailure(first.record(again[0]), LeaseLost)

    @inlineCallbacks
    def test_recover_leaves_other_nodes_leases(self) -> _Test:
        first = self.store(node="first", lease=600.0)
        yield first.recover()
        queue_id = yield self.commit(first)
        yield first.claim(reactor.seconds(), 10, 600)
        other = self.store(node="other", lease=600.0)
        yield other.recover()
        self.assertEqual((yield other.get(queue_id)).state.value, "active")
        self.assertEqual((yield other.claim(reactor.seconds(), 10, 600)), [])
        # The first node restarts under the same id: its leases come back.
        restarted = self.store(node="first", lease=600.0)
        yield restarted.recover()
        entry = yield restarted.get(queue_id)
        self.assertEqual(entry.state.value, "deferred")
        self.assertEqual(len((yield other.claim(reactor.seconds(), 10, 600))), 1)

    @inlineCallbacks
    def test_notify_wakes_another_node(self) -> _Test:
        sender = self.store(node="sender")
        watcher = self.store(node="watcher")
        yield sender.recover()
        yield watcher.recover()
        woken: list[None] = []
        watcher.notify_on_change(lambda: woken.append(None))
        yield _wait_for(watcher.listening)
        yield _wait_for(lambda: bool(woken))  # the look after connecting
        del woken[:]
        yield self.commit(sender)
        yield _wait_for(lambda: bool(woken))

    @inlineCallbacks
    def test_listening_resumes_after_the_database_restarts(self) -> _Test:
        """
        The notification thread reconnects once the database is back, and
        the writing store's pool replaces its broken connections.
        """
        from twisted.internet.threads import deferToThread

        sender = self.store(node="sender")
        watcher = self.store(node="watcher")
        yield sender.recover()
        yield watcher.recover()
        woken: list[None] = []
        watcher.notify_on_change(lambda: woken.append(None))
        yield _wait_for(watcher.listening)
        yield _wait_for(lambda: bool(woken))  # the look after connecting
        server = postgres()
        yield deferToThread(server.stop)
        try:
            yield _wait_for(lambda: not watcher.listening())
            del woken[:]
        finally:
            yield deferToThread(server.start)
        yield _wait_for(watcher.listening, 30)
        yield _wait_for(lambda: bool(woken))  # the look after reconnecting
        del woken[:]
        yield self.commit(sender)
        yield _wait_for(lambda: bool(woken))

    @inlineCallbacks
    def test_a_clock_half_a_lease_away_is_refused(self) -> _Test:
        from mailframe.stores.postgres import ClockSkew

        class Skewed:
            """The reactor, with a clock an hour ahead."""

            def __getattr__(self, name: str) -> Any:
                return getattr(reactor, name)

            def seconds(self) -> float:
                return reactor.seconds() + 3600

        store = PostgresQueueStore(self.dsn, Skewed(), lease=600.0)
        self.addCleanup(store.stop)
        failure = yield self.assertFailure(store.recover(), ClockSkew)
        # Less the time between the two clocks' readings.
        self.assertRegex(str(failure), r"\+(3599\.\d|3600\.0) s away")
        # Within half a lease, it starts.
        yield self.store(lease=600.0).recover()

    @inlineCallbacks
    def test_shutdown_leaves_the_store_to_its_service_until_the_end(self) -> _Test:
        """
        twistd stops its services in the "before" phase of the reactor's
        shutdown, and a MailService stops its store last, once its sessions
        and runner are done: the store serves them through that phase. Only
        a store that nobody stopped is stopped, after the reactor, blocking.
        """
        from mailframe.stores.postgres import StoreUnavailable

        phases: dict[str, list[tuple[str, Any]]] = {"before": [], "during": [], "after": []}

        class Shutting:
            """The reactor, with shutdown triggers that the test fires."""

            def __getattr__(self, name: str) -> Any:
                return getattr(reactor, name)

            def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> Any:
                handle = (phase, f)
                phases[phase].append(handle)
                return handle

            def removeSystemEventTrigger(self, handle: Any) -> None:
                phases[handle[0]].remove(handle)

        store = PostgresQueueStore(self.dsn, Shutting(), connect_timeout=3.0)
        self.addCleanup(store.stop)
        yield store.recover()
        for _, trigger in list(phases["before"]) + list(phases["during"]):
            yield trigger()
        # Sessions still in DATA, and deliveries, still reach the database.
        queue_id = yield self.commit(store)
        claimed = yield store.claim(reactor.seconds(), 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [queue_id])
        yield store.record(claimed[0])
        # A service that stops its store removes the safety net.
        stopped = PostgresQueueStore(self.dsn, Shutting(), connect_timeout=3.0)
        yield stopped.get(queue_id)
        self.assertEqual(len(phases["after"]), 2)
        yield stopped.stop()
        self.assertEqual(len(phases["after"]), 1)
        # Nobody stopped the first one: the reactor's last phase does.
        for _, trigger in list(phases["after"]):
            trigger()
        self.assertIsNone(store._threads)
        self.assertIsNone(store._pool)
        yield self.assertFailure(store.get(queue_id), StoreUnavailable)

    @inlineCallbacks
    def test_connections_have_keepalives_and_timeouts(self) -> _Test:
        """
        Every connection of the pool has TCP keepalives and a TCP user
        timeout, and its session a statement timeout and an idle-in-
        transaction timeout; options in the DSN are kept, and win.
        """
        from mailframe.stores import postgres as module

        dsn = self.dsn + " options='-c lock_timeout=7s -c idle_in_transaction_session_timeout=45s'"
        store = make_store(self, dsn, statement_timeout=120.0)

        def settings(conn: Any) -> tuple[dict[str, str], list[str]]:
            shown = [conn.execute(f"SHOW {name}").fetchone()[0] for name in (
                "statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout")]
            return conn.info.get_parameters(), shown

        parameters, shown = yield store._run(settings)
        self.assertEqual(shown, ["2min", "45s", "7s"])
        self.assertEqual(
            {key: parameters.get(key) for key in ("keepalives", "keepalives_idle",
                                                  "keepalives_interval", "keepalives_count",
                                                  "tcp_user_timeout")},
            {"keepalives": "1", "keepalives_idle": str(module.KEEPALIVES_IDLE),
             "keepalives_interval": str(module.KEEPALIVES_INTERVAL),
             "keepalives_count": str(module.KEEPALIVES_COUNT),
             "tcp_user_timeout": str(round(module.TCP_USER_TIMEOUT * 1000))})
        plain = make_store(self, self.dsn)
        _, shown = yield plain._run(settings)
        self.assertEqual(shown[:2], ["5min", "1min"])

    @inlineCallbacks
    def test_a_stuck_statement_is_cancelled(self) -> _Test:
        """A statement that outlasts the statement timeout fails the operation."""
        from mailframe.stores.postgres import StoreUnavailable

        store = self.store(statement_timeout=1.0)
        yield store.recover()
        failure = yield self.assertFailure(
            store._run(lambda conn: conn.execute("SELECT pg_sleep(5)")), StoreUnavailable)
        self.assertIn("statement timeout", str(failure))
        yield store.stats()

    @inlineCallbacks
    def test_a_read_only_database_is_unavailable_and_bugs_stay_loud(self) -> _Test:
        """
        A database that takes no writes (a standby after a failover) makes
        operations fail with StoreUnavailable, and its connections are
        replaced; once it takes writes again, so does the store. A
        programming error is not taken for an outage.
        """
        import psycopg

        from mailframe.stores.postgres import StoreUnavailable

        store = self.store(pool_size=1)
        yield store.recover()
        database = self.dsn.split("dbname=")[1]
        postgres().execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        # The pool's connection predates the change: it still writes.
        yield self.commit(store)
        yield store._run(lambda conn: conn.close())
        failure = yield self.assertFailure(self.commit(store), StoreUnavailable)
        self.assertIn("read-only transaction", str(failure))
        postgres().execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        # Each failure closed its connection (the pool, of one, may have
        # opened the next before the reset): a later one takes writes.
        for attempt in range(3):
            try:
                yield self.commit(store)
                break
            except StoreUnavailable:
                if attempt == 2:
                    raise
        yield self.assertFailure(store._run(lambda conn: conn.execute("SELEC 1")),
                                 psycopg.ProgrammingError)
        self.assertEqual(len((yield store.list())), 2)

    @inlineCallbacks
    def test_schema_missing_or_newer_is_refused(self) -> _Test:
        from mailframe.stores._pgschema import SchemaMismatch

        empty = make_store(self, postgres().new_database(migrated=False))
        failure = yield self.assertFailure(empty.recover(), SchemaMismatch)
        self.assertIn("mailframe db upgrade", str(failure))
        _rows(self.dsn, "UPDATE mailframe_schema SET version = 99 RETURNING 1")
        newer = self.store()
        failure = yield self.assertFailure(newer.recover(), SchemaMismatch)
        self.assertIn("version 99", str(failure))

    def test_upgrade_is_idempotent(self) -> None:
        import psycopg

        from mailframe.stores._pgschema import SCHEMA_VERSION, upgrade_blocking

        dsn = postgres().new_database(migrated=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.assertEqual(upgrade_blocking(conn), (0, SCHEMA_VERSION))
            self.assertEqual(upgrade_blocking(conn), (SCHEMA_VERSION, SCHEMA_VERSION))
        tables = _rows(dsn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mailframe_%'")
        self.assertEqual(tables, [(4,)])

    @inlineCallbacks
    def test_unreachable_database_fails_recovery_clearly(self) -> _Test:
        from mailframe.stores.postgres import StoreUnavailable
        from tests.pg_support import _free_port

        store = make_store(self, f"host=127.0.0.1 port={_free_port()} dbname=x user=y"
                                 " password=secret")
        store.connect_timeout = 1.0
        failure = yield self.assertFailure(store.recover(), StoreUnavailable)
        self.assertIn("cannot connect", str(failure))
        self.assertNotIn("secret", str(failure))


class PostgresThreadTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dsn = postgres().new_database()

    @inlineCallbacks
    def test_no_database_call_on_the_reactor_thread(self) -> _Test:
        import threading

        import psycopg

        threads: set[int] = set()
        original = psycopg.Connection.execute

        def execute(conn: Any, *args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return original(conn, *args, **kwargs)

        self.patch(psycopg.Connection, "execute", execute)
        store = make_store(self, self.dsn, chunk_size=1024)
        yield store.recover()
        writer = store.open_writer()
        writer.write(b"x" * 5000)
        queue_id = yield writer.commit(_envelope())
        claimed = yield store.claim(reactor.seconds(), 10, 60)
        self.assertEqual([e.queue_id for e in claimed], [queue_id])
        yield store.renew(queue_id, 60)
        f = yield store.open_message(queue_id)
        f.close()
        yield store.list()
        yield store.stats()
        yield store.reschedule(queue_id, reactor.seconds(), "later")
        yield store.delete(queue_id)
        self.assertTrue(threads)
        self.assertNotIn(threading.get_ident(), threads)

    @inlineCallbacks
    def test_200_sessions_share_a_few_connections(self) -> _Test:
        """
        200 messages received at once, interleaved chunk by chunk, through
        a pool of 3 connections: every one is committed, and the database
        never saw more connections than the pool's size.
        """
        from twisted.internet import defer

        store = make_store(self, self.dsn, chunk_size=1024, pool_size=3)
        yield store.recover()
        writers = [store.open_writer() for _ in range(200)]
        for _ in range(3):
            for number, writer in enumerate(writers):
                writer.write(b"%04d" % number * 256)
        import psycopg
        from twisted.internet.task import LoopingCall

        database = self.dsn.split("dbname=")[1]
        seen: list[int] = []
        with psycopg.connect(postgres().dsn(), autocommit=True) as watcher:

            def sample() -> None:
                row = watcher.execute("SELECT count(*) FROM pg_stat_activity"
                                      " WHERE datname = %s", (database,)).fetchone()
                assert row is not None
                seen.append(int(row[0]))

            sampler = LoopingCall(sample)
            sampler.start(0.005)
            try:
                ids = yield defer.gatherResults([w.commit(_envelope()) for w in writers])
            finally:
                sampler.stop()
        self.assertGreater(len(seen), 3)
        self.assertLessEqual(max(seen), 3)
        self.assertEqual(len(set(ids)), 200)
        stats = yield store.stats()
        self.assertEqual(stats.size, 200 * 3 * 1024)
        self.assertEqual(_rows(self.dsn, "SELECT count(*) FROM mailframe_chunks"), [(600,)])
        assert store._pool is not None
        self.assertLessEqual(store._pool.get_stats()["pool_size"], 3)

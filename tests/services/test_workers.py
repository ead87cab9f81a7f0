"""
The worker supervisor with a fake process reactor and a task clock: which
sockets it binds, when it spawns, how it restarts a worker that dies, and
how it stops them; the listener strings it accepts; the inherited-socket
endpoint; the supervisor watch in a worker; and the ``--workers`` options.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mailframe.config import Config, parse_config
from mailframe.errors import ConfigError
from mailframe.services.workers import (
    BALANCE_SLACK,
    DISTRUST,
    KILL_MARGIN,
    MAX_DEFER,
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    STABLE_AFTER,
    AcceptBalance,
    AdoptedEndpoint,
    ParentWatch,
    SessionBoard,
    WorkerSupervisor,
    open_listener,
    parse_listener,
    restart_delay,
)
from mailframe.tap import Options, worker_command


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.gone = False

    def signalProcess(self, name: str) -> None:
        if self.gone:
            raise ProcessExitedAlready()
        self.signals.append(name)


class ProcessReactor(Clock):
    """A clock that records spawned processes instead of starting them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.next_pid = 1000

    def spawnProcess(
        self, protocol: Any, executable: str, args: Sequence[str],
        env: Mapping[str, str] | None = None, childFDs: Mapping[int, Any] | None = None,
    ) -> FakeProcess:
        self.next_pid += 1
        process = FakeProcess(self.next_pid)
        protocol.makeConnection(process)
        self.spawned.append({"protocol": protocol, "executable": executable, "args": list(args),
                             "env": env, "childFDs": dict(childFDs or {}), "process": process})
        return process

    def end(self, index: int, reason: Failure) -> None:
        """The spawned process *index* ends."""
        spawned = self.spawned[index]
        spawned["process"].gone = True
        spawned["protocol"].processEnded(reason)


class FakeStore:
    def __init__(self) -> None:
        self.recovering: Deferred[int] = Deferred()
        self.recovered = 0
        self.stopped = 0

    def recover(self) -> Deferred[int]:
        self.recovered += 1
        return self.recovering

    def stop(self) -> Deferred[None]:
        self.stopped += 1
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


def killed(number: int = 9) -> Failure:
    return Failure(ProcessTerminated(signal=number))


def exited(code: int = 0) -> Failure:
    return Failure(ProcessDone(code) if code == 0 else ProcessTerminated(exitCode=code))


def command(slot: str, fds: Sequence[int], board: int) -> list[str]:
    return ["/bin/worker", slot, ",".join(map(str, fds)), str(board)]


def capture_log(test: TestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class SupervisorTests(TestCase):
    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.store = FakeStore()

    def supervisor(self, count: int = 2, listeners: Sequence[str] = (
            "tcp:0:interface=127.0.0.1", "haproxy:tcp:0:interface=127.0.0.1:backlog=7")
    ) -> WorkerSupervisor:
        supervisor = WorkerSupervisor(self.reactor, listeners, count, command,
                                      store=self.store, grace=5.0, env={"X": "1"})
        self.addCleanup(supervisor._close)
        return supervisor

    def started(self, count: int = 2) -> WorkerSupervisor:
        supervisor = self.supervisor(count)
        supervisor.privilegedStartService()
        supervisor.startService()
        self.store.recovering.callback(3)
        return supervisor

    def test_binds_before_privileges_are_dropped(self) -> None:
        supervisor = self.supervisor()
        supervisor.privilegedStartService()
        self.assertEqual(len(supervisor.sockets), 2)
        for sock in supervisor.sockets:
            self.assertEqual(sock.getsockname()[0], "127.0.0.1")
            self.assertFalse(sock.getblocking())
            self.assertFalse(os.get_inheritable(sock.fileno()))
            # Listening: a client gets through the handshake into the backlog.
            with socket.create_connection(sock.getsockname(), timeout=5):
                pass
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.store.recovered, 0)

    def test_a_listener_that_cannot_bind_fails_the_start(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            supervisor = self.supervisor(listeners=(
                "tcp:0:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1"))
            with self.assertRaises(OSError) as caught:
                supervisor.privilegedStartService()
        self.assertEqual(caught.exception.errno, errno.EADDRINUSE)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", str(caught.exception))
        self.assertEqual(supervisor.sockets, [])

    def test_recovers_once_then_spawns_each_slot(self) -> None:
        supervisor = self.supervisor(3)
        supervisor.privilegedStartService()
        supervisor.startService()
        self.assertEqual(self.store.recovered, 1)
        self.assertEqual(self.reactor.spawned, [])
        self.assertNoResult(supervisor.ready)
        self.store.recovering.callback(7)
        self.successResultOf(supervisor.ready)
        self.assertEqual(self.store.stopped, 1)
        self.assertEqual([s["args"] for s in self.reactor.spawned], [
            ["/bin/worker", "1", "3,4", "5"], ["/bin/worker", "2", "3,4", "5"],
            ["/bin/worker", "3", "3,4", "5"]])
        fds = [sock.fileno() for sock in supervisor.sockets]
        board = supervisor._board_fd
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned["executable"], "/bin/worker")
            self.assertEqual(spawned["env"], {"X": "1"})
            self.assertEqual(spawned["childFDs"],
                             {0: "w", 1: "r", 2: "r", 3: fds[0], 4: fds[1], 5: board})
        assert supervisor.board is not None
        self.assertEqual(supervisor.board.counts(), [-1, -1, -1])
        self.assertEqual(supervisor.pids(), {"1": 1001, "2": 1002, "3": 1003})

    def test_a_worker_that_cannot_be_started_is_tried_again(self) -> None:
        """
        A failed fork (no process, so no processEnded) neither leaves the
        slot dead nor keeps the supervisor from stopping.
        """
        spawn = self.reactor.spawnProcess
        failures = [OSError(errno.EAGAIN, "fork")]

        def failing(*args: Any, **kwargs: Any) -> FakeProcess:
            if failures:
                raise failures.pop()
            return spawn(*args, **kwargs)

        self.reactor.spawnProcess = failing  # type: ignore[method-assign]
        events = capture_log(self)
        supervisor = self.started(2)
        self.assertEqual(sorted(supervisor.pids()), ["2"])
        self.assertTrue(any(e.get("log_failure") is not None for e in events))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.reactor.advance(restart_delay(1))
        self.assertEqual(sorted(supervisor.pids()), ["1", "2"])
        stopped = supervisor.stopService()
        for index in range(len(self.reactor.spawned)):
            self.reactor.end(index, exited(0))
        self.successResultOf(stopped)

    def test_no_worker_when_recovery_fails(self) -> None:
        supervisor = self.supervisor()
        supervisor.privilegedStartService()
        supervisor.startService()
        self.store.recovering.errback(OSError(errno.EIO, "disk"))
        self.failureResultOf(supervisor.ready, OSError)
        self.assertEqual(self.reactor.spawned, [])
        self.flushLoggedErrors(OSError)

    def test_a_worker_that_dies_is_started_again(self) -> None:
        events = capture_log(self)
        supervisor = self.started()
        assert supervisor.board is not None
        supervisor.board.set(0, 40)
        supervisor.board.set(1, 3)
        self.reactor.advance(STABLE_AFTER + 1)
        self.reactor.end(0, killed())
        self.assertEqual(supervisor.pids(), {"2": 1002})
        # Its sessions are gone with it.
        self.assertEqual(supervisor.board.counts(), [-1, 3])
        self.reactor.advance(RESTART_DELAY - 0.01)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.reactor.spawned[2]["args"], ["/bin/worker", "1", "3,4", "5"])
        self.assertEqual(supervisor.pids(), {"1": 1003, "2": 1002})
        self.assertEqual(supervisor.restarts, 1)
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("Worker 1 (pid 1001) died after" in line and "SIGKILL" in line
                            for line in said), said)

    def test_a_worker_that_keeps_dying_waits_longer_each_time(self) -> None:
        self.started(1)
        delays = []
        for index in range(9):
            self.reactor.end(index, exited(1))
            before = len(self.reactor.spawned)
            waited = 0.0
            while len(self.reactor.spawned) == before:
                self.reactor.advance(0.25)
                waited += 0.25
            delays.append(waited)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0])
        # Once it has run long enough, the next death costs the short wait.
        self.reactor.advance(STABLE_AFTER)
        self.reactor.end(9, exited(1))
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 11)

    def test_restart_delay(self) -> None:
        self.assertEqual(restart_delay(0), RESTART_DELAY)
        self.assertEqual(restart_delay(1), 2 * RESTART_DELAY)
        self.assertEqual(restart_delay(10_000), MAX_RESTART_DELAY)

    def test_output_is_logged_by_line_and_slot(self) -> None:
        events = capture_log(self)
        self.started(1)
        protocol = self.reactor.spawned[0]["protocol"]
        protocol.childDataReceived(1, b"2026-11-29T21:30:16+0000 [ns#info] first li")
        protocol.childDataReceived(1, b"ne\nsecond\r\n")
        protocol.childDataReceived(2, b"no newline at the end")
        self.reactor.end(0, exited(0))
        said = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("workers")]
        self.assertIn("worker 1: [ns#info] first line", said)
        self.assertIn("worker 1: second", said)
        self.assertIn("worker 1: no newline at the end", said)

    def test_stop_terms_every_worker_and_waits(self) -> None:
        supervisor = self.started()
        sockets = list(supervisor.sockets)
        stopped = supervisor.stopService()
        self.assertEqual([s["process"].signals for s in self.reactor.spawned], [["TERM"], ["TERM"]])
        self.reactor.end(0, killed(15))
        self.assertNoResult(stopped)
        self.reactor.end(1, killed(15))
        self.successResultOf(stopped)
        self.assertEqual(supervisor.sockets, [])
        self.assertTrue(all(sock.fileno() == -1 for sock in sockets))
        # Nothing is started again, and no kill comes later.
        self.reactor.advance(1000)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual([s["process"].signals for s in self.reactor.spawned], [["TERM"], ["TERM"]])

    def test_stop_kills_a_worker_that_overstays(self) -> None:
        supervisor = self.started()
        stopped = supervisor.stopService()
        self.reactor.end(0, killed(15))
        self.reactor.advance(5.0 + KILL_MARGIN - 0.1)
        self.assertEqual(self.reactor.spawned[1]["process"].signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.spawned[1]["process"].signals, ["TERM", "KILL"])
        self.reactor.end(1, killed(9))
        self.successResultOf(stopped)

    def test_stop_cancels_a_pending_restart(self) -> None:
        supervisor = self.started()
        self.reactor.end(0, killed())
        stopped = supervisor.stopService()
        self.reactor.end(1, killed(15))
        self.successResultOf(stopped)
        self.reactor.advance(MAX_RESTART_DELAY * 2)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_signals_reach_every_worker(self) -> None:
        supervisor = self.started()
        self.reactor.end(1, killed())
        supervisor.signal_workers("HUP")
        self.assertEqual(self.reactor.spawned[0]["process"].signals, ["HUP"])


@pytest.mark.parametrize(
    ("description", "family", "host", "port", "backlog"),
    [
        ("tcp:25", socket.AF_INET, "", 25, 50),
        ("tcp:2525:interface=127.0.0.1:backlog=1024", socket.AF_INET, "127.0.0.1", 2525, 1024),
        ("tcp:port=587:interface=0.0.0.0", socket.AF_INET, "0.0.0.0", 587, 50),
        ("tcp:25:interface=\\:\\:1", socket.AF_INET6, "::1", 25, 50),
        ("tcp6:25", socket.AF_INET6, "::", 25, 50),
        ("haproxy:tcp:2525:interface=127.0.0.1", socket.AF_INET, "127.0.0.1", 2525, 50),
        ("HAPROXY:tcp:2525", socket.AF_INET, "", 2525, 50),
    ],
)
def test_parse_listener(description: str, family: int, host: str, port: int,
                        backlog: int) -> None:
    spec = parse_listener(description)
    assert (spec.description, spec.family, spec.host, spec.port, spec.backlog) == (
        description, family, host, port, backlog)


@pytest.mark.parametrize(
    "description",
    ["ssl:465:privateKey=key.pem", "unix:/run/mailframe.sock", "haproxy:ssl:465",
     "tcp:25:interface=127.0.0.1:reuse=1", "tcp:smtp", "tcp:70000", "tcp:25:backlog=0", "tcp"],
)
def test_parse_listener_refuses(description: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_listener(description)
    assert str(caught.value).startswith(f"listener {description}: ")


class BalanceTests(TestCase):
    def setUp(self) -> None:
        self.board, fd = SessionBoard.create(3)
        self.addCleanup(os.close, fd)
        self.addCleanup(self.board.close)
        # A worker maps the same file from its own descriptor.
        self.other = SessionBoard(fd)
        self.addCleanup(self.other.close)
        self.clock = Clock()
        self.sessions = 0
        self.balance = AcceptBalance(self.other, 0, lambda: self.sessions, self.clock)

    def test_the_board_is_shared(self) -> None:
        self.assertEqual(self.board.slots, 3)
        self.assertEqual(self.board.counts(), [-1, -1, -1])
        self.sessions = 7
        self.balance.publish()
        self.assertEqual(self.board.counts(), [7, -1, -1])

    def test_alone_it_takes_everything(self) -> None:
        self.sessions = 1000
        self.assertFalse(self.balance.defer())

    def test_it_leaves_connections_to_a_less_busy_worker(self) -> None:
        self.board.set(1, 10)
        self.board.set(2, 4)
        self.sessions = 4 + BALANCE_SLACK
        self.assertFalse(self.balance.defer())
        self.sessions += 1
        self.assertTrue(self.balance.defer())
        self.board.set(2, 5)
        self.assertFalse(self.balance.defer())

    def test_it_waits_for_the_others_only_so_long(self) -> None:
        self.board.set(1, 0)
        self.sessions = 10
        self.assertTrue(self.balance.defer())
        self.clock.advance(MAX_DEFER - 0.001)
        self.assertTrue(self.balance.defer())
        self.clock.advance(0.001)
        # Nobody took it: this worker does, and takes the next ones too.
        self.assertFalse(self.balance.defer())
        self.clock.advance(DISTRUST - 0.01)
        self.assertFalse(self.balance.defer())
        self.clock.advance(0.02)
        self.assertTrue(self.balance.defer())

    def test_an_absent_worker_counts_for_nothing(self) -> None:
        self.board.set(1, 0)
        self.sessions = 10
        self.assertTrue(self.balance.defer())
        self.board.set(1, -1)
        self.assertFalse(self.balance.defer())
        self.balance.absent()
        self.assertEqual(self.board.counts()[0], -1)


class AdoptedEndpointTests(TestCase):
    @inlineCallbacks
    def test_adopts_the_inherited_socket(self) -> Any:
        listening = open_listener(parse_listener("tcp:0:interface=127.0.0.1"))
        address = listening.getsockname()
        fd = os.dup(listening.fileno())
        listening.close()
        connected: Deferred[None] = Deferred()

        class Greeter(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"220 hi\r\n")
                self.transport.loseConnection()
                connected.callback(None)

        port = yield AdoptedEndpoint(global_reactor, fd).listen(Factory.forProtocol(Greeter))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().port, address[1])
        # The inherited descriptor is closed: the port works on its own copy.
        self.assertRaises(OSError, os.fstat, fd)

        def talk() -> bytes:
            with socket.create_connection(address, timeout=5) as client:
                return client.recv(100)

        from twisted.internet.threads import deferToThread

        greeting = yield deferToThread(talk)
        yield connected
        self.assertEqual(greeting, b"220 hi\r\n")

    def test_a_bad_descriptor_fails(self) -> None:
        read, write = os.pipe()
        os.close(write)
        os.close(read)
        self.failureResultOf(AdoptedEndpoint(global_reactor, read).listen(Factory()), OSError)


class ParentWatchTests(TestCase):
    @inlineCallbacks
    def test_end_of_file_means_the_supervisor_is_gone(self) -> Any:
        read, write = os.pipe()
        self.addCleanup(_close_quietly, read)
        lost: list[None] = []
        watch = ParentWatch(global_reactor, lambda: lost.append(None), fd=read)
        self.addCleanup(global_reactor.removeReader, watch)
        yield deferLater(global_reactor, 0.05, lambda: None)
        self.assertEqual(lost, [])
        os.close(write)
        for _ in range(100):
            if lost:
                break
            yield deferLater(global_reactor, 0.02, lambda: None)
        self.assertEqual(lost, [None])


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def test_workers_option_and_key() -> None:
    options = Options()
    options.parseOptions(["--workers", "4", "--listen", "tcp:2525"])
    assert options.config.workers == 4
    assert Config().workers == 1
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--workers", "0"])
    assert str(caught.value).startswith("--workers: ")
    with pytest.raises(ConfigError) as error:
        parse_config('hostname = "mx.example.com"\nworkers = "many"\n')
    assert (error.value.key, error.value.line) == ("workers", 2)


def test_worker_option() -> None:
    options = Options()
    options.parseOptions(["--listen", "tcp:2525", "--listen", "tcp:2526",
                          "--worker", "2:3,4@5"])
    assert options.worker == ("2", [3, 4], 5)
    for bad in ("2", "2:", "a/b:3@5", "2:3;4@5", "2:3,4"):
        with pytest.raises(usage.UsageError) as caught:
            Options().parseOptions(["--worker", bad])
        assert str(caught.value).startswith("--worker: ")


def test_worker_command_repeats_the_options() -> None:
    import sys

    options = Options()
    options.parseOptions(["--workers", "2", "--queue-dir", "q"])
    argv = worker_command(options.argv)("1", [3, 4], 5)
    assert argv[0] == sys.executable
    assert argv[argv.index("mailframe"):] == [
        "mailframe", "--workers", "2", "--queue-dir", "q", "--worker", "1:3,4@5"]
    assert "--nodaemon" in argv and "--pidfile=" in argv


def test_the_memory_store_cannot_be_shared(tmp_path: object) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from mailframe.compose import build_mail_service

    with pytest.raises(ConfigError) as caught:
        build_mail_service(Config(queue_dir=str(tmp_path), store="memory", unsafe_store=True,
                                  workers=2), MemoryReactorClock())
    assert caught.value.key == "workers"
    assert "memory" in caught.value.message


def test_make_service_returns_the_supervisor(tmp_path: Any, monkeypatch: Any) -> None:
    import signal

    from mailframe import tap

    monkeypatch.setattr(signal, "signal", lambda *args: None)
    options = Options()
    options.parseOptions(["--workers", "2", "--queue-dir", str(tmp_path / "q"),
                          "--listen", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options)
    assert isinstance(service, WorkerSupervisor)
    assert service.count == 2
    refused = Options()
    refused.parseOptions(["--workers", "2", "--queue-dir", str(tmp_path / "q"),
                          "--listen", "unix:" + str(tmp_path / "sock")])
    with pytest.raises(usage.UsageError) as caught:
        tap.makeService(refused)
    assert "unix:" in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["twistd", "-n", "mailframe"], True),
        (["twistd", "--nodaemon", "--pidfile=", "mailframe", "--workers", "2"], True),
        (["twistd", "-n", "--logfile=-", "mailframe"], True),
        (["twistd", "-l", "-", "mailframe"], True),
        (["twistd", "-n", "--logfile=/var/log/mf.log", "mailframe"], False),
        (["twistd", "-n", "-l", "mf.log", "mailframe"], False),
        (["twistd", "-n", "--syslog", "mailframe"], False),
        (["twistd", "-n", "--logger=a.b", "mailframe"], False),
        (["twistd", "mailframe"], False),
        (["twistd", "-n"], False),
    ],
)
def test_logs_to_stdout(argv: list[str], expected: bool) -> None:
    from mailframe.tap import logs_to_stdout

    assert logs_to_stdout(argv) is expected


def test_worker_command_with_shared_output() -> None:
    argv = worker_command(["--workers", "2"], share_output=True)("2", [3], 4)
    assert "--logger=mailframe.services.workers.worker_log_observer" in argv
    assert "--logfile=-" not in argv
    assert "--logfile=-" in worker_command(["--workers", "2"])("2", [3], 4)


def test_worker_log_observer_names_the_slot(monkeypatch: Any) -> None:
    import io
    import sys

    from mailframe.services.workers import worker_log_observer

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "argv", ["-c", "mailframe", "--worker", "7:3,4@5"])
    observer = worker_log_observer()
    observer({"log_format": "Queue recovered with {count} entries", "count": 3,
              "log_namespace": "mailframe.services.mta", "log_level": None,
              "log_time": 1795987816.0})
    stamp, _, rest = out.getvalue().partition(" ")
    assert stamp.startswith("20")
    assert rest == "worker 7: [mailframe.services.mta#-] Queue recovered with 3 entries\n"


class SharedOutputTests(TestCase):
    def test_workers_write_to_the_supervisors_output(self) -> None:
        reactor = ProcessReactor()
        store = FakeStore()
        supervisor = WorkerSupervisor(reactor, ["tcp:0:interface=127.0.0.1"], 1, command,
                                      store=store, share_output=True)
        self.addCleanup(supervisor._close)
        supervisor.privilegedStartService()
        supervisor.startService()
        store.recovering.callback(0)
        child_fds = reactor.spawned[0]["childFDs"]
        self.assertEqual((child_fds[0], child_fds[1], child_fds[2]), ("w", 1, 2))


def test_a_worker_wraps_an_adopted_haproxy_listener(tmp_path: Any) -> None:
    from twisted.python.threadpool import ThreadPool

    from mailframe.compose import build_mail_service
    from mailframe.protocols.proxy import ProxyHeaderEndpoint

    class PoolReactor(ProcessReactor):
        def getThreadPool(self) -> ThreadPool:
            return ThreadPool()

    board, board_fd = SessionBoard.create(2)
    try:
        config = Config(queue_dir=str(tmp_path), listen=(
            "tcp:2525:interface=127.0.0.1", "haproxy:tcp:2526:interface=127.0.0.1"))
        service = build_mail_service(config, PoolReactor(), worker="2",
                                     sockets=[11, 12], board=board_fd)
        plain, proxied = (listener.endpoint for listener in service.listeners)
        assert isinstance(plain, AdoptedEndpoint) and plain.fd == 11
        assert plain.balance is not None and plain.balance.index == 1
        assert isinstance(proxied, ProxyHeaderEndpoint)
        assert isinstance(proxied.endpoint, AdoptedEndpoint) and proxied.endpoint.fd == 12
        assert service.store.slot == "2"
    finally:
        board.close()
        os.close(board_fd)


@pytest.mark.parametrize(("node", "expected"), [("", socket.gethostname() + "/worker-2"),
                                                ("mx1", "mx1/worker-2")])
def test_each_postgres_worker_has_a_node_id_of_its_own(node: str, expected: str) -> None:
    import random

    from mailframe.config import ComponentContext
    from mailframe.stores.postgres import postgres_maker

    context = ComponentContext(reactor=ProcessReactor(), random=random.Random(), worker="2")
    store = postgres_maker.build({"dsn": "host=127.0.0.1 dbname=mail", "node": node}, context)
    assert store.node == expected
    alone = postgres_maker.build({"dsn": "host=127.0.0.1 dbname=mail", "node": node},
                                 ComponentContext(reactor=ProcessReactor(), random=random.Random()))
    assert alone.node != expected

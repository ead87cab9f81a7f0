"""
Worker processes on one host (``mailframe --workers N``).

A :class:`WorkerSupervisor` opens the listening sockets itself, recovers the
queue once, and runs *N* worker processes, each of which builds the normal
mail service on those sockets: it adopts the inherited descriptor with
``reactor.adoptStreamPort`` (:class:`AdoptedEndpoint`) instead of binding
its own. The kernel hands each new connection to whichever worker accepts
it first.

``SO_REUSEPORT`` is not used on purpose: each of its sockets has its own
accept queue, and Linux resets the connections waiting in a socket's queue
when the process that owns it dies. Here the one queue belongs to the
supervisor, which never accepts: a connection waiting when a worker dies is
taken by another worker.

A worker that dies is started again, in the same slot, after a delay that
doubles with each quick death (:func:`restart_delay`). Its slot names its
own ``active/`` and ``tmp/`` directories in the spool, so the new process
recovers what the dead one left behind, and nothing else.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.interfaces import IQueueStore
from mailframe.logs import format_classic
from mailframe.protocols.proxy import split_proxy
from mailframe.stores import StoreUnavailable

__all__ = [
    "AdoptedEndpoint",
    "ListenSocket",
    "ParentWatch",
    "WorkerSupervisor",
    "open_listener",
    "parse_listener",
    "restart_delay",
    "worker_log_observer",
]

#: Seconds before the first restart of a worker that died.
RESTART_DELAY = 0.5
#: The longest wait between restarts of a worker that keeps dying.
MAX_RESTART_DELAY = 30.0
#: A worker that ran at least this many seconds died of something new: its
#: next restart waits only :data:`RESTART_DELAY`.
STABLE_AFTER = 10.0
#: Seconds beyond the shutdown grace that a worker gets to exit after
#: SIGTERM before it is killed.
KILL_MARGIN = 10.0
#: The child descriptor of the first inherited listening socket.
FIRST_FD = 3
#: Connections a worker accepts each time one is waiting (see :class:`_SharedPort`).
ACCEPTS_PER_WAKE = 1
#: Sessions a worker may hold beyond the least busy one before it leaves
#: new connections to the others.
BALANCE_SLACK = 2
#: Seconds a worker leaves a waiting connection to the others at most.
MAX_DEFER = 0.05
#: Seconds between looks while a worker leaves connections to the others.
RECHECK = 0.005
#: Seconds a worker takes every connection after the others left one waiting.
DISTRUST = 1.0
#: Octets of a worker's output held while waiting for the end of a line.
MAX_LINE = 64 * 1024

_log = Logger(namespace="mailframe.services.workers")
_COUNT = struct.Struct("=q")
#: The time at the start of each line that twistd logs.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4} ")


def restart_delay(quick_deaths: int) -> float:
    """
    Seconds to wait before starting a worker again, after *quick_deaths*
    deaths in a row that each came within :data:`STABLE_AFTER` seconds of
    its start: :data:`RESTART_DELAY`, doubled for each, at most
    :data:`MAX_RESTART_DELAY`. So a worker that cannot start costs at most
    one start every :data:`MAX_RESTART_DELAY` seconds.
    """
    return min(MAX_RESTART_DELAY, RESTART_DELAY * 2.0 ** max(0, min(quick_deaths, 32)))


@attrs.frozen
class ListenSocket:
    """
    What the supervisor binds for one listener.

    :ivar description: the listener's endpoint string, as configured.
    :ivar family: ``AF_INET`` or ``AF_INET6``.
    :ivar host: the address to bind; empty for all of the family's.
    :ivar port: the TCP port.
    :ivar backlog: the accept queue's length.
    """

    description: str
    family: int
    host: str
    port: int
    backlog: int = 50


def parse_listener(description: str) -> ListenSocket:
    """
    The socket that the endpoint string *description* listens on:
    ``tcp:PORT``, ``tcp6:PORT``, with ``interface=`` and ``backlog=``, and
    either one behind ``haproxy:``.

    :raises ValueError: naming the listener, for any other kind (``ssl:``,
        ``unix:``): worker processes cannot share it.
    """
    from twisted.internet.endpoints import _parse  # the endpoint grammar, escapes and all

    _, text = split_proxy(description)
    args, kwargs = _parse(text)
    kind = str(args[0]).lower() if args else ""
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"listener {description}: worker processes share tcp: and"
                         " haproxy:tcp: listeners only")
    unknown = set(kwargs) - {"port", "interface", "backlog"}
    if unknown:
        raise ValueError(f"listener {description}: unknown parameter {sorted(unknown)[0]}")
    if len(args) + ("port" in kwargs) != 2:
        raise ValueError(f"listener {description}: one port, please")
    try:
        port = int(kwargs["port"] if "port" in kwargs else args[1])
        backlog = int(kwargs.get("backlog", 50))
    except ValueError:
        raise ValueError(f"listener {description}: the port and backlog are numbers") from None
    if not 0 <= port <= 65535 or backlog < 1:
        raise ValueError(f"listener {description}: no such port or backlog")
    host = str(kwargs.get("interface", "::" if kind == "tcp6" else ""))
    family = socket.AF_INET6 if kind == "tcp6" or ":" in host else socket.AF_INET
    return ListenSocket(description, family, host, port, backlog)


def open_listener(spec: ListenSocket) -> socket.socket:
    """
    Bind and listen on *spec*, non-blocking (the workers share the open
    file, and Twisted's ports want it so), and not inherited by anything
    but the workers, which are given it by name.
    """
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(spec.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {spec.description}: {e.strerror}") from None
    return sock


class SessionBoard:
    """
    How many sessions each worker holds, in a small file that the
    supervisor made and every worker maps: one signed 64-bit count per
    slot, -1 for a slot whose worker is not running.

    :param fd: the file; its size gives the number of slots.
    """

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, 0)
        self.slots = len(self._map) // _COUNT.size

    @classmethod
    def create(cls, slots: int) -> tuple[SessionBoard, int]:
        """A new board for *slots* workers, all absent, and its descriptor."""
        fd = os.memfd_create("mailframe-sessions", os.MFD_CLOEXEC) if hasattr(
            os, "memfd_create") else _temporary_fd()
        os.ftruncate(fd, slots * _COUNT.size)
        board = cls(fd)
        for index in range(slots):
            board.set(index, -1)
        return board, fd

    def set(self, index: int, sessions: int) -> None:
        _COUNT.pack_into(self._map, index * _COUNT.size, sessions)

    def counts(self) -> list[int]:
        return [_COUNT.unpack_from(self._map, i * _COUNT.size)[0] for i in range(self.slots)]

    def close(self) -> None:
        self._map.close()


class AcceptBalance:
    """
    Whether this worker should leave a waiting connection to another: when
    it holds more than :data:`BALANCE_SLACK` sessions more than the least
    busy running worker. A connection is never left waiting longer than
    :data:`MAX_DEFER` seconds: if no other worker took it by then (it may
    be stuck), this one does, and stops deferring for a while.

    :param board: the :class:`SessionBoard`.
    :param index: this worker's slot on it, from 0.
    :param sessions: how many sessions this worker holds now.
    :param clock: the reactor's clock.
    """

    def __init__(self, board: SessionBoard, index: int, sessions: Callable[[], int],
                 clock: Any) -> None:
        self.board = board
        self.index = index
        self.sessions = sessions
        self.clock = clock
        self._since: float | None = None
        self._trust_after = 0.0

    def publish(self) -> int:
        mine = self.sessions()
        self.board.set(self.index, mine)
        return mine

    def defer(self) -> bool:
        """Whether to leave the next connection to another worker for now."""
        mine = self.publish()
        now = self.clock.seconds()
        others = [n for i, n in enumerate(self.board.counts()) if i != self.index and n >= 0]
        if not others or mine <= min(others) + BALANCE_SLACK or now < self._trust_after:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if now - self._since < MAX_DEFER:
            return True
        # Nobody took it: do not wait for the others for a while.
        self._since = None
        self._trust_after = now + DISTRUST
        return False

    def absent(self) -> None:
        self.board.set(self.index, -1)


class _SharedPort(tcp.Port):
    """
    A TCP port on a socket that other workers accept from too: it accepts
    :data:`ACCEPTS_PER_WAKE` connections each time the reactor says one is
    waiting, where Twisted's port takes up to a hundred, and with an
    :class:`AcceptBalance` it leaves a connection to a less busy worker.
    The kernel wakes every worker for a new connection, so that the
    sessions spread over the workers instead of going in a burst to the
    first one that woke.
    """

    balance: AcceptBalance | None = None
    _resume: IDelayedCall | None = None

    def doRead(self) -> None:
        if self.balance is not None and self.balance.defer():
            # Not reading for a moment: level-triggered, the reactor would
            # call again at once.
            self.stopReading()
            self._resume = self.balance.clock.callLater(RECHECK, self._recheck)
            return
        self.numberAccepts = ACCEPTS_PER_WAKE
        super().doRead()

    def _recheck(self) -> None:
        self._resume = None
        if self.connected:
            self.startReading()

    def startReading(self) -> None:
        if self.balance is not None:
            # Accepting now: the others may leave connections to it.
            self.balance.publish()
        super().startReading()

    def stopReading(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().stopReading()

    def connectionLost(self, reason: Failure) -> None:
        if self.balance is not None:
            self.balance.absent()
        super().connectionLost(reason)


def _temporary_fd() -> int:
    import tempfile

    handle = tempfile.TemporaryFile()
    fd = os.dup(handle.fileno())
    handle.close()
    return fd


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A server endpoint on a listening socket that this process inherited:
    :meth:`listen` adopts it as ``reactor.adoptStreamPort`` does (as a
    :class:`_SharedPort` on a POSIX reactor), and closes the inherited
    descriptor, which the port has duplicated.

    :param reactor: an ``IReactorSocket``.
    :param fd: the inherited listening socket.
    """

    def __init__(self, reactor: Any, fd: int, balance: AcceptBalance | None = None) -> None:
        self._reactor = reactor
        self.fd = fd
        self.balance = balance

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            probe = socket.socket(fileno=self.fd)
            family = probe.family
            probe.detach()
            if isinstance(self._reactor, PosixReactorBase) and family in (
                    socket.AF_INET, socket.AF_INET6):
                port = _SharedPort._fromListeningDescriptor(
                    self._reactor, self.fd, family, protocolFactory)
                port.balance = self.balance
                port.startListening()
            else:
                port = self._reactor.adoptStreamPort(self.fd, family, protocolFactory)
            os.close(self.fd)
        except Exception:
            return defer.fail()
        return defer.succeed(port)


class ParentWatch:
    """
    Calls *on_lost* once when the supervisor is gone: a worker's standard
    input is a pipe from it, which reads end of file when the supervisor
    exits, even by SIGKILL. So no worker outlives its supervisor.

    :param reactor: an ``IReactorFDSet``.
    :param fd: the pipe's descriptor (standard input).
    """

    def __init__(self, reactor: Any, on_lost: Callable[[], object], fd: int = 0) -> None:
        self._reactor = reactor
        self._fd = fd
        self._on_lost: Callable[[], object] | None = on_lost
        reactor.addReader(self)
        # The reactor lets go of every reader as it stops: that is no news.
        reactor.addSystemEventTrigger("before", "shutdown", self._detach)

    def _detach(self) -> None:
        self._on_lost = None
        self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "ParentWatch"

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reactor.removeReader(self)
            self._lost()

    def connectionLost(self, reason: Failure) -> None:
        self._lost()

    def _lost(self) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            _log.warn("The supervisor is gone; stopping")
            on_lost()


class _Worker(ProcessProtocol):
    """One worker process: its output goes to the supervisor's log, line by line."""

    def __init__(self, supervisor: WorkerSupervisor, slot: str, started: float) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        if rest:
            self._partial[childFD] = rest
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        # The worker's own log lines: their time is the supervisor's now.
        text = _TIMESTAMP.sub("", line.rstrip(b"\r").decode("utf-8", "replace"), 1)
        if text:
            _log.info("worker {slot}: {line}", slot=self.slot, line=text)

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            self._emit(rest)
        self._partial.clear()
        self.supervisor._ended(self, reason)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except Exception as e:  # already gone: ProcessExitedAlready
                _log.debug("worker {slot}: {error}", slot=self.slot, error=e)


class WorkerSupervisor(Service):
    """
    Runs *count* worker processes that share the listening sockets and
    the queue.

    :param reactor: the reactor: its clock, ``spawnProcess``.
    :param listeners: the listeners' endpoint strings; see
        :func:`parse_listener`.
    :param count: how many workers.
    :param command: ``command(slot, fds, board)`` is the argument list of
        the worker in *slot* (``"1"`` to ``"N"``), which finds the listening
        sockets on descriptors *fds*, in the order of *listeners*, and the
        :class:`SessionBoard` on descriptor *board*.
    :param store: the queue store, recovered here once before any worker
        starts (so that a crash of the whole host is recovered once), and
        stopped then; or ``None``.
    :param grace: the workers' shutdown grace: on stop, each worker gets it
        and :data:`KILL_MARGIN` more after SIGTERM, and then SIGKILL.
    :param env: the workers' environment; by default this process's.
    :param share_output: give the workers this process's standard output
        and error, where they write their log lines themselves (see
        :func:`worker_log_observer`), when this process logs there too;
        otherwise each line comes through a pipe into this process's log.

    :ivar ready: fires once the queue is recovered and every worker is
        started; fails if the recovery failed.
    :ivar restarts: workers started again after dying, since the start.
    """

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[str],
        count: int,
        command: Callable[[str, Sequence[int], int], Sequence[str]],
        store: IQueueStore | None = None,
        grace: float = 30.0,
        env: Mapping[str, str] | None = None,
        share_output: bool = False,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.share_output = share_output
        self.specs = [parse_listener(description) for description in listeners]
        self.count = count
        self.command = command
        self.store = store
        self.grace = grace
        self.restarts = 0
        self.ready: Deferred[None] = Deferred()
        self.sockets: list[socket.socket] = []
        self.board: SessionBoard | None = None
        self._board_fd: int | None = None
        self.workers: dict[str, _Worker] = {}
        self._reactor = reactor
        self._env = dict(os.environ if env is None else env)
        self._quick: dict[str, int] = {}
        self._pending: dict[str, IDelayedCall] = {}
        self._stopping = False

    def privilegedStartService(self) -> None:
        """
        Bind every listener now, while twistd still has the privileges that
        a port below 1024 needs; the workers, started later, have only what
        is left after ``--uid``/``--gid``.
        """
        super().privilegedStartService()
        self._bind()

    def _bind(self) -> None:
        if self.sockets:
            return
        try:
            for spec in self.specs:
                self.sockets.append(open_listener(spec))
        except OSError:
            self._close()
            raise
        self.board, self._board_fd = SessionBoard.create(self.count)

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._bind()
        for sock, spec in zip(self.sockets, self.specs, strict=True):
            _log.info("Listening on {description} ({address}) for {count} workers",
                      description=spec.description, address=sock.getsockname(),
                      count=self.count)
        recovered = defer.succeed(0) if self.store is None else self.store.recover()

        def start(count: int) -> None:
            _log.info("Queue recovered with {count} entries; starting {workers} workers",
                      count=count, workers=self.count)
            if self.store is not None:
                stop = getattr(self.store, "stop", None)
                if callable(stop):
                    stop()
            if self.running and not self._stopping:
                for number in range(1, self.count + 1):
                    self._spawn(str(number))

        def failed(failure: Failure) -> None:
            if failure.check(StoreUnavailable):
                # Not a bug: the message says what is wrong and what to do.
                _log.critical("Could not recover the queue; starting no worker: {error}",
                              error=failure.getErrorMessage())
            else:
                _log.failure("Could not recover the queue; starting no worker", failure)
            self.ready.errback(failure)

        recovered.addCallback(start).addCallbacks(lambda _: self.ready.callback(None), failed)

    def pids(self) -> dict[str, int]:
        """The pid of each running worker, by slot."""
        return {slot: w.pid for slot, w in self.workers.items() if w.pid is not None}

    def signal_workers(self, name: str) -> None:
        """Send signal *name* (``"HUP"``, ``"TERM"``...) to every worker."""
        for worker in list(self.workers.values()):
            worker.signal(name)

    def _spawn(self, slot: str) -> None:
        self._pending.pop(slot, None)
        fds = [FIRST_FD + i for i in range(len(self.sockets))]
        board = FIRST_FD + len(fds)
        argv = list(self.command(slot, fds, board))
        child_fds: dict[int, int | str] = (
            {0: "w", 1: 1, 2: 2} if self.share_output else {0: "w", 1: "r", 2: "r"})
        for fd, sock in zip(fds, self.sockets, strict=True):
            child_fds[fd] = sock.fileno()
        assert self._board_fd is not None
        child_fds[board] = self._board_fd
        worker = _Worker(self, slot, self._reactor.seconds())
        try:
            self._reactor.spawnProcess(worker, argv[0], argv, env=self._env, childFDs=child_fds)
        except Exception:
            # No process, so no processEnded: retry as after a quick death,
            # or the slot (and the mail claimed in it) would stay dead.
            quick = self._quick.get(slot, 0) + 1
            self._quick[slot] = quick
            delay = restart_delay(quick)
            _log.failure("Could not start worker {slot}; trying again in {delay:.1f} s",
                         slot=slot, delay=delay)
            if self.running and not self._stopping:
                self._pending[slot] = self._reactor.callLater(delay, self._spawn, slot)
            return
        self.workers[slot] = worker
        _log.info("Started worker {slot} as pid {pid}", slot=slot, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        slot = worker.slot
        if self.workers.get(slot) is worker:
            del self.workers[slot]
            if self.board is not None:
                # Its sessions are gone: the others stop leaving it any.
                self.board.set(int(slot) - 1, -1)
        status = _status(reason)
        if self._stopping or not self.running:
            _log.info("Worker {slot} (pid {pid}) stopped: {status}",
                      slot=slot, pid=worker.pid, status=status)
            return
        lived = self._reactor.seconds() - worker.started
        quick = self._quick.get(slot, 0) + 1 if lived < STABLE_AFTER else 0
        self._quick[slot] = quick
        delay = restart_delay(quick)
        level = _log.info if reason.check(ProcessDone) else _log.error
        level("Worker {slot} (pid {pid}) died after {lived:.1f} s: {status}; starting it"
              " again in {delay:.1f} s", slot=slot, pid=worker.pid, lived=lived,
              status=status, delay=delay)
        self.restarts += 1
        self._pending[slot] = self._reactor.callLater(delay, self._spawn, slot)

    def stopService(self) -> Deferred[None]:
        """
        SIGTERM to every worker, which stops as a single server does (the
        grace for connected sessions, then the queue runner); SIGKILL to
        those still running :data:`KILL_MARGIN` seconds after the grace.
        The listening sockets close once every worker is gone.
        """
        super().stopService()
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        waits = [w.ended for w in workers]
        self.signal_workers("TERM")
        killer = self._reactor.callLater(self.grace + KILL_MARGIN, self._kill, workers)

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()
            self._close()

        return defer.gatherResults(waits, consumeErrors=True).addBoth(done)

    def _kill(self, workers: Sequence[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                _log.warn("Worker {slot} (pid {pid}) did not stop; killing it",
                          slot=worker.slot, pid=worker.pid)
                worker.signal("KILL")

    def _close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
        if self._board_fd is not None:
            os.close(self._board_fd)
            self._board_fd = None
        for sock in self.sockets:
            try:
                sock.close()
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
        self.sockets = []


def worker_log_observer() -> ILogObserver:
    """
    The log observer of a worker that writes to its supervisor's standard
    output (``twistd --logger``): twistd's own format, with the worker's
    slot (from its ``--worker`` option) after the time::

        2026-11-29T21:30:16+0000 worker 2: [mailframe.services.mta.MailService#info] ...
    """
    slot = "?"
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == "--worker" and index + 1 < len(argv):
            slot = argv[index + 1].split(":", 1)[0]
        elif arg.startswith("--worker="):
            slot = arg.split("=", 1)[1].split(":", 1)[0]

    def format_event(event: LogEvent) -> str | None:
        text = format_classic(event)
        if text is None:
            return None
        stamp, _, rest = text.partition(" ")
        return f"{stamp} worker {slot}: {rest}"

    return FileLogObserver(sys.stdout, format_event)


def _status(reason: Failure) -> str:
    """How a worker ended, in a few words."""
    number = getattr(reason.value, "signal", None)
    if number is not None:
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {getattr(reason.value, 'exitCode', None)}"

"""
Blocking work for a store, in a few threads of its own.

:func:`twisted.internet.threads.deferToThreadPool` costs about twice the CPU
of a plain queue feeding a thread for each job: the thread pool's
coordinator hands the job over under locks, and each result wakes the
reactor with a ``callFromThread`` of its own. A spool makes one or two such
trips for every message, so :class:`ThreadRunner` does the least: its
threads take jobs from one queue, and their results reach the reactor
together, with one ``callFromThread`` for all those that finished while the
reactor was busy.

:class:`PoolRunner` runs the same jobs on a given thread pool instead (any
object with ``callInThreadWithCallback``, such as Twisted's
:class:`~twisted.python.threadpool.ThreadPool`), for a store built with
one; both count the jobs in flight for :meth:`~Runner.when_idle`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

__all__ = ["DEFAULT_THREADS", "PoolRunner", "Runner", "ThreadRunner"]

_R = TypeVar("_R")

#: Threads of a :class:`ThreadRunner` unless told otherwise. A small
#: message costs a thread one ``fsync``; four threads let four of them wait
#: on the disk together, so that its journal commits them together, and
#: leave the reactor most of the interpreter's lock (more threads waste CPU
#: handing it round: see ``benchmarks/spool_commit.py``).
DEFAULT_THREADS = 4

_Job = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]


class FromThreads(Protocol):
    """What a runner needs of a reactor."""

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None: ...


class ThreadPoolLike(Protocol):
    """What :class:`PoolRunner` needs of a thread pool."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object], func: Callable[..., Any],
        *args: Any, **kwargs: Any,
    ) -> None: ...


class Runner:
    """
    Runs blocking calls off the reactor thread, and counts those in flight.

    A job is in flight from :meth:`run` until its Deferred has fired and
    every callback that ran then has returned: so work that a callback
    starts in turn keeps the runner busy without a gap.
    """

    def __init__(self) -> None:
        self.pending = 0
        self._idle: list[Deferred[None]] = []

    def run(self, f: Callable[..., _R], *args: Any) -> Deferred[_R]:
        """A Deferred of ``f(*args)``, called in a thread; it fires on the reactor thread."""
        raise NotImplementedError

    def when_idle(self) -> Deferred[None]:
        """A Deferred firing once no job is in flight."""
        if not self.pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def stop(self) -> None:
        """Let the threads go once the jobs queued so far are done."""

    def _fire(self, d: Deferred[Any], ok: bool, result: Any) -> None:
        try:
            if ok:
                d.callback(result)
            else:
                d.errback(result)
        finally:
            self.pending -= 1
            if not self.pending and self._idle:
                waiting, self._idle = self._idle, []
                for idle in waiting:
                    idle.callback(None)


class PoolRunner(Runner):
    """Runs jobs on a given thread pool, as :func:`~twisted.internet.threads.deferToThreadPool`."""

    def __init__(self, reactor: FromThreads, pool: ThreadPoolLike) -> None:
        super().__init__()
        self._reactor = reactor
        self._pool = pool

    def run(self, f: Callable[..., _R], *args: Any) -> Deferred[_R]:
        d: Deferred[_R] = Deferred()
        self.pending += 1

        def on_result(ok: bool, result: Any) -> None:
            self._reactor.callFromThread(self._fire, d, ok, result)

        self._pool.callInThreadWithCallback(on_result, f, *args)
        return d


class ThreadRunner(Runner):
    """
    Runs jobs in up to *size* threads of its own, named *name*, started as
    jobs need them. Results that finish while the reactor has not yet
    taken the last ones wait for it beside them: one ``callFromThread``
    delivers them all, in the order they finished.

    The threads are not daemons, so that an interpreter that exits waits
    for a job under way, such as an ``fsync``; :meth:`stop` lets them end,
    and so does the reactor's shutdown, when the reactor has
    ``addSystemEventTrigger``. A runner used after :meth:`stop` starts new
    ones.
    """

    def __init__(self, reactor: FromThreads, size: int = DEFAULT_THREADS,
                 name: str = "mailframe-store") -> None:
        if size < 1:
            raise ValueError("a runner needs at least one thread")
        super().__init__()
        self.size = size
        self._reactor = reactor
        self._name = name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._done: deque[tuple[Deferred[Any], bool, Any]] = deque()
        self._lock = threading.Lock()
        self._called = False
        self._registered = False

    def run(self, f: Callable[..., _R], *args: Any) -> Deferred[_R]:
        d: Deferred[_R] = Deferred()
        self.pending += 1
        if len(self._threads) < min(self.pending, self.size):
            self._start_thread()
        self._jobs.put((d, f, args))
        return d

    def stop(self) -> None:
        """
        Let every thread end once the jobs queued before are done, and wait
        for them. Called when nothing is in flight, as a store's ``stop()``
        does, it waits for nothing.
        """
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()
        self._deliver()

    def _start_thread(self) -> None:
        if not self._registered:
            # Like the reactor's own thread pool, the threads end when the
            # reactor does, for an owner that never calls stop().
            self._registered = True
            trigger = getattr(self._reactor, "addSystemEventTrigger", None)
            if trigger is not None:
                trigger("after", "shutdown", self.stop)
        number = len(self._threads) + 1
        thread = threading.Thread(target=self._work, name=f"{self._name}-{number}")
        self._threads.append(thread)
        thread.start()

    # -- in the threads ------------------------------------------------------------

    def _work(self) -> None:
        jobs, done, lock = self._jobs, self._done, self._lock
        while True:
            job = jobs.get()
            if job is None:
                return
            d, f, args = job
            try:
                result = (d, True, f(*args))
            except BaseException:
                result = (d, False, Failure())
            with lock:
                done.append(result)
                call, self._called = not self._called, True
            if call:
                self._reactor.callFromThread(self._deliver)
            del job, d, f, args, result

    # -- on the reactor --------------------------------------------------------------

    def _deliver(self) -> None:
        done = self._done
        with self._lock:
            self._called = False
            batch = list(done)
            done.clear()
        for d, ok, result in batch:
            self._fire(d, ok, result)

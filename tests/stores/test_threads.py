"""
The runners that take a store's blocking work off the reactor thread: the
store's own threads (:class:`ThreadRunner`) and a given thread pool
(:class:`PoolRunner`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.stores._threads import DEFAULT_THREADS, PoolRunner, ThreadRunner

from .test_spool import started_pool

_Test = Generator[Deferred[Any], Any, None]


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("in a thread")


class CountingReactor:
    """The real reactor's callFromThread, counted."""

    def __init__(self) -> None:
        self.calls = 0

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        reactor.callFromThread(f, *args, **kwargs)


class ThreadRunnerTests(TestCase):
    def runner(self, size: int = DEFAULT_THREADS) -> tuple[ThreadRunner, CountingReactor]:
        counting = CountingReactor()
        runner = ThreadRunner(counting, size, "runner-test")
        self.addCleanup(runner.stop)
        return runner, counting

    @inlineCallbacks
    def test_runs_off_the_reactor_thread(self) -> _Test:
        runner, _ = self.runner()
        name = yield runner.run(lambda: threading.current_thread().name)
        self.assertEqual(name, "runner-test-1")
        self.assertIsNot(threading.current_thread().name, name)

    @inlineCallbacks
    def test_results_and_failures(self) -> _Test:
        runner, _ = self.runner()
        self.assertEqual((yield runner.run(sum, [1, 2, 3])), 6)
        yield self.assertFailure(runner.run(boom), Boom)
        # The job is in flight until its callbacks (this test's) return.
        self.assertEqual(runner.pending, 1)
        yield runner.when_idle()
        self.assertEqual(runner.pending, 0)

    @inlineCallbacks
    def test_threads_started_as_needed_up_to_the_size(self) -> _Test:
        runner, _ = self.runner(size=3)
        self.assertEqual(runner._threads, [])
        yield runner.run(lambda: None)
        self.assertEqual(len(runner._threads), 1)
        gate = threading.Event()
        self.addCleanup(gate.set)
        seen: set[str] = set()
        started = threading.Semaphore(0)

        def wait() -> None:
            seen.add(threading.current_thread().name)
            started.release()
            gate.wait(30)

        jobs = [runner.run(wait) for _ in range(6)]
        self.assertEqual(len(runner._threads), 3)
        # Each of the three threads is held by a job of its own.
        for _ in range(3):
            self.assertTrue(started.acquire(timeout=30))
        gate.set()
        yield gatherResults(jobs)
        self.assertEqual(seen, {"runner-test-1", "runner-test-2", "runner-test-3"})

    @inlineCallbacks
    def test_results_share_a_wake_up(self) -> _Test:
        """Results that finish while the reactor is busy come back with one callFromThread."""
        runner, counting = self.runner(size=2)
        finished = threading.Semaphore(0)

        def job(n: int) -> int:
            finished.release()
            return n

        jobs = [runner.run(job, n) for n in range(10)]
        # Hold the reactor thread until every job is done in the threads.
        for _ in range(10):
            self.assertTrue(finished.acquire(timeout=30))
        results = yield gatherResults(jobs)
        self.assertEqual(sorted(results), list(range(10)))
        self.assertEqual(counting.calls, 1)

    @inlineCallbacks
    def test_idle_waits_for_the_work_a_callback_starts(self) -> _Test:
        runner, _ = self.runner()
        order: list[str] = []
        gate = threading.Event()
        self.addCleanup(gate.set)

        def second(_: object) -> Deferred[None]:
            order.append("first done")
            return runner.run(gate.wait, 30).addCallback(lambda _: order.append("second done"))

        runner.run(lambda: None).addCallback(second)
        idle = runner.when_idle().addCallback(lambda _: order.append("idle"))
        yield runner.run(lambda: None)
        self.assertFalse(idle.called)
        gate.set()
        yield idle
        self.assertEqual(order, ["first done", "second done", "idle"])
        self.assertTrue(runner.when_idle().called)

    @inlineCallbacks
    def test_stop_ends_the_threads_and_a_new_job_starts_them(self) -> _Test:
        runner, _ = self.runner()
        yield gatherResults([runner.run(lambda: None) for _ in range(3)])
        threads = list(runner._threads)
        self.assertTrue(threads)
        runner.stop()
        self.assertEqual(runner._threads, [])
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertFalse(any(t.daemon for t in threads))
        self.assertEqual((yield runner.run(lambda: 7)), 7)
        self.assertEqual(len(runner._threads), 1)

    def test_size_must_be_positive(self) -> None:
        self.assertRaises(ValueError, ThreadRunner, reactor, 0)


class ThreadedMemoryReactor(MemoryReactorClock):
    """A memory reactor that notes the calls from threads, and makes none."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Callable[..., Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_threads.append(f)


class ShutdownTests(SynchronousTestCase):
    def test_threads_end_after_the_reactor_shuts_down(self) -> None:
        memory = ThreadedMemoryReactor()
        runner = ThreadRunner(memory, 2, "shutdown-test")
        self.addCleanup(runner.stop)
        self.assertEqual(memory.triggers, {})
        done = threading.Event()
        runner.run(done.set)
        self.assertTrue(done.wait(30))
        [trigger] = memory.triggers["after"]["shutdown"]
        self.assertEqual(trigger[0], runner.stop)
        thread = runner._threads[0]
        trigger[0]()
        self.assertFalse(thread.is_alive())


class PoolRunnerTests(TestCase):
    @inlineCallbacks
    def test_runs_on_the_given_pool(self) -> _Test:
        pool = started_pool(self, threads=2)
        runner = PoolRunner(reactor, pool)
        name = yield runner.run(lambda: threading.current_thread().name)
        self.assertIn("spool-test", name)
        yield self.assertFailure(runner.run(boom), Boom)
        # The job is in flight until its callbacks (this test's) return.
        self.assertEqual(runner.pending, 1)
        yield runner.when_idle()
        self.assertEqual(runner.pending, 0)

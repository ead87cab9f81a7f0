"""
Back-pressure for queue writers: pause the producer that feeds a writer
while too many of its octets wait to be written, so that memory per
connection stays bounded whatever the message size.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.python.failure import Failure

__all__ = ["DEFAULT_HIGH_WATER", "GatedWriter", "ProducerGate", "WriterState", "then"]

_T = TypeVar("_T")

#: Octets a writer may hold before it pauses its producer.
DEFAULT_HIGH_WATER = 1024 * 1024


class ProducerGate:
    """
    Tracks the octets a writer holds and pauses or resumes its producer.

    A streaming (push) producer is paused when more than *high_water*
    octets are outstanding and resumed once they drain below half of it. A
    pull producer is asked for more (on the next turn of the reactor) after
    each write while the writer is below *high_water*, and again when it
    drains below half.
    """

    def __init__(self, clock: IReactorTime, high_water: int) -> None:
        if high_water <= 0:
            raise ValueError("high_water must be positive")
        self.high_water = high_water
        #: Octets written to the writer and not yet stored.
        self.outstanding = 0
        #: ``True`` while the producer is paused by this gate.
        self.paused = False
        self._clock = clock
        self._push: IPushProducer | None = None
        self._puller: IPullProducer | None = None
        self._pull: IDelayedCall | None = None

    def register(self, producer: object, streaming: bool) -> None:
        if self._push is not None or self._puller is not None:
            raise RuntimeError("a producer is already registered")
        self.paused = False
        if streaming:
            self._push = cast(IPushProducer, producer)
            self._check()
        else:
            self._puller = cast(IPullProducer, producer)
            self._ask()

    def unregister(self) -> None:
        self._push = self._puller = None
        self.paused = False
        if self._pull is not None and self._pull.active():
            self._pull.cancel()
        self._pull = None

    def add(self, octets: int) -> None:
        """*octets* were written to the writer."""
        self.outstanding += octets
        if self._puller is not None and self.outstanding <= self.high_water:
            self._ask()
        else:
            self._check()

    def done(self, octets: int) -> None:
        """*octets* were stored (or thrown away)."""
        self.outstanding -= octets
        self._check()

    def _check(self) -> None:
        if self._push is None and self._puller is None:
            return
        if not self.paused and self.outstanding > self.high_water:
            self.paused = True
            if self._push is not None:
                self._push.pauseProducing()
        elif self.paused and self.outstanding < self.high_water // 2:
            self.paused = False
            if self._push is not None:
                self._push.resumeProducing()
            else:
                self._ask()

    def _ask(self) -> None:
        if self._pull is None or not self._pull.active():
            self._pull = self._clock.callLater(0, self._resume_pull)

    def _resume_pull(self) -> None:
        self._pull = None
        if self._puller is not None and not self.paused:
            self._puller.resumeProducing()


class WriterState(enum.Enum):
    """Where a queue writer is in its life."""

    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    FAILED = "failed"
    ABORTED = "aborted"


def then(
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


class GatedWriter:
    """
    What the queue writers share: a registered producer is paused and
    resumed by the writer's :class:`ProducerGate` (set by the subclass as
    ``_gate``); the writer's jobs run one after another (``_tail``); and
    :meth:`_take_in` accounts for each write.
    """

    queue_id: str
    _gate: ProducerGate
    _state: WriterState
    _tail: Deferred[None]
    _buffer: list[bytes]
    _buffered: int
    _size: int

    def _take_in(self, data: bytes) -> bool:
        """
        Buffer *data* and count it against the gate; ``False`` when there
        is nothing to take: no data, or the writer was aborted or failed
        (a write error is reported by ``commit``).
        """
        if self._state in (WriterState.ABORTED, WriterState.FAILED):
            return False
        if self._state is not WriterState.OPEN:
            raise RuntimeError(f"write() after commit() of {self.queue_id}")
        if not data:
            return False
        data = bytes(data)
        self._buffer.append(data)
        self._buffered += len(data)
        self._size += len(data)
        self._gate.add(len(data))
        return True

    def _chain(self, op: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """Run *op* after the writer's earlier jobs."""
        self._tail, outcome = then(self._tail, op)
        return outcome

    @property
    def paused(self) -> bool:
        """``True`` while the registered producer is paused."""
        return self._gate.paused

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._gate.register(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregister()

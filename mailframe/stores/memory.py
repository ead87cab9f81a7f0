"""
A queue store that keeps everything in memory: for tests, and for an MTA
that may lose its queue when it stops.
"""

from __future__ import annotations

import enum
import io
import random as _random
from collections.abc import Callable, Iterable
from typing import BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailframe.envelope import (
    EntryState,
    Envelope,
    QueueEntry,
    QueueStats,
    RecipientResult,
    RecipientState,
)
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import NoSuchEntry
from mailframe.stores._ids import RandomSource, new_queue_id
from mailframe.stores._index import QueueIndex
from mailframe.stores._pressure import DEFAULT_HIGH_WATER, GatedWriter, ProducerGate

__all__ = ["MemoryQueueStore"]

_Entries = list[QueueEntry]


class _Writing(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@implementer(IQueueStore)
class MemoryQueueStore:
    """
    An :class:`~mailframe.interfaces.IQueueStore` in memory.

    It keeps the rules of every store (leases, recipient states, hold,
    quarantine) without durability: a commit fires at once, and nothing
    survives the process. Tests use it as the reference store.

    :param clock: the time of commits, releases and lease renewals; also
        schedules the pulls of non-streaming producers.
    :param random: the random source of queue ids.
    :param high_water: octets a writer may hold before it pauses its
        producer; they are only held while :attr:`paused_writes` is set.
    :param capacity: octets of messages the store holds before
        :meth:`has_room` says no; ``None`` for no limit.

    :ivar paused_writes: while ``True``, written octets count as waiting
        to be stored, as on a disk that is slow, until :meth:`drain_writes`;
        a test sets it to see back-pressure.
    """

    def __init__(
        self,
        clock: IReactorTime,
        random: RandomSource | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        capacity: int | None = None,
    ) -> None:
        self.paused_writes = False
        self._clock = clock
        self._random: RandomSource = random if random is not None else _random.Random()
        self._high_water = high_water
        self._capacity = capacity
        self._index = QueueIndex()
        self._messages: dict[str, bytes] = {}
        self._writers: dict[str, _MemoryWriter] = {}

    def recover(self) -> defer.Deferred[int]:
        """As after a restart: active entries become deferred and due now."""
        self._index.recover(self._clock.seconds())
        return defer.succeed(len(self._index))

    def has_room(self, size: int) -> bool:
        if self._capacity is None:
            return True
        used = sum(len(m) for m in self._messages.values())
        return used + size <= self._capacity

    def open_writer(self) -> _MemoryWriter:
        queue_id = new_queue_id(self._random, self._clock.seconds())
        while queue_id in self._index or queue_id in self._writers:
            queue_id = new_queue_id(self._random, self._clock.seconds())
        writer = _MemoryWriter(self, queue_id)
        self._writers[queue_id] = writer
        return writer

    def drain_writes(self) -> None:
        """Store every octet held while :attr:`paused_writes` was set."""
        for writer in list(self._writers.values()):
            writer._drain()

    def wait_idle(self) -> defer.Deferred[None]:
        """Nothing is ever in flight in memory; for symmetry with the spool."""
        return defer.succeed(None)

    def open_message(self, queue_id: str) -> defer.Deferred[BinaryIO]:
        if queue_id not in self._index:
            return defer.fail(NoSuchEntry(queue_id))
        return defer.succeed(io.BytesIO(self._messages[queue_id]))

    def claim(self, now: float, limit: int, lease: float) -> defer.Deferred[_Entries]:
        return defer.succeed(self._index.claim(now, limit, lease))

    def renew(self, queue_id: str, lease: float) -> defer.Deferred[None]:
        return defer.maybeDeferred(self._index.renew, queue_id, self._clock.seconds(), lease)

    def record(self, queue_id: str, results: Iterable[RecipientResult]) -> defer.Deferred[None]:
        try:
            entry = self._index.record(queue_id, results)
        except Exception:
            return defer.fail()
        if not entry.pending:
            self._remove(queue_id)
        return defer.succeed(None)

    def reschedule(self, queue_id: str, when: float, reason: str) -> defer.Deferred[None]:
        return self._update(self._index.reschedule, queue_id, when, reason)

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> defer.Deferred[_Entries]:
        return defer.succeed(self._index.page(state, after, limit))

    def get(self, queue_id: str) -> defer.Deferred[QueueEntry | None]:
        return defer.succeed(self._index.get(queue_id))

    def hold(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return self._update(self._index.hold, queue_id, reason)

    def release(self, queue_id: str) -> defer.Deferred[None]:
        return self._update(self._index.release, queue_id, self._clock.seconds())

    def delete(self, queue_id: str) -> defer.Deferred[None]:
        try:
            self._remove(queue_id)
        except NoSuchEntry:
            return defer.fail()
        return defer.succeed(None)

    def requeue(self, queue_id: str) -> defer.Deferred[None]:
        return self._update(self._index.requeue, queue_id, self._clock.seconds())

    def flush(self) -> defer.Deferred[int]:
        """Make every deferred entry due now; fires with how many there were."""
        return defer.succeed(len(self._index.flush(self._clock.seconds())))

    def stats(self) -> defer.Deferred[QueueStats]:
        return defer.succeed(self._index.stats(incoming=len(self._writers)))

    def quarantine(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return self._update(self._index.quarantine, queue_id, reason)

    def _update(self, change: Callable[..., QueueEntry], *args: object) -> defer.Deferred[None]:
        try:
            change(*args)
        except Exception:
            return defer.fail()
        return defer.succeed(None)

    def _remove(self, queue_id: str) -> None:
        self._index.remove(queue_id)
        del self._messages[queue_id]

    def _committed(self, entry: QueueEntry, message: bytes) -> None:
        del self._writers[entry.queue_id]
        self._index.add(entry)
        self._messages[entry.queue_id] = message

    def _forget(self, queue_id: str) -> None:
        self._writers.pop(queue_id, None)


@implementer(IQueueWriter)
class _MemoryWriter(GatedWriter):
    """One message being written into a :class:`MemoryQueueStore`."""

    def __init__(self, store: MemoryQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._state = _Writing.OPEN
        self._chunks: list[bytes] = []
        self._held: list[bytes] = []
        self._gate = ProducerGate(store._clock, store._high_water)

    def write(self, data: bytes) -> None:
        if self._state is _Writing.ABORTED:
            return
        if self._state is not _Writing.OPEN:
            raise RuntimeError(f"write() after commit() of {self.queue_id}")
        data = bytes(data)
        if self._store.paused_writes:
            self._held.append(data)
            self._gate.add(len(data))
        else:
            # Stored at once: a pull producer is asked for more at once too.
            self._chunks.append(data)
            self._gate.add(len(data))
            self._gate.done(len(data))

    def open_message(self) -> defer.Deferred[BinaryIO]:
        """A file reading what was written so far."""
        return defer.succeed(io.BytesIO(b"".join(self._chunks)))

    def commit(self, envelope: Envelope) -> defer.Deferred[str]:
        if self._state is not _Writing.OPEN:
            state = self._state.value
            return defer.fail(RuntimeError(f"commit() of {self.queue_id}, which is {state}"))
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._drain()
        message = b"".join(self._chunks)
        self._chunks = []
        self._state = _Writing.COMMITTED
        entry = QueueEntry(
            queue_id=self.queue_id,
            envelope=envelope,
            state=EntryState.ACTIVE,
            recipients=tuple((r, RecipientState.PENDING) for r in envelope.recipients),
            next_attempt=self._store._clock.seconds(),
            size=len(message),
        )
        self._store._committed(entry, message)
        return defer.succeed(self.queue_id)

    def abort(self) -> None:
        if self._state is _Writing.OPEN:
            self._state = _Writing.ABORTED
            self._gate.done(sum(len(c) for c in self._held))
            self._chunks = self._held = []
            self._store._forget(self.queue_id)

    def _drain(self) -> None:
        held, self._held = self._held, []
        self._chunks.extend(held)
        self._gate.done(sum(len(c) for c in held))

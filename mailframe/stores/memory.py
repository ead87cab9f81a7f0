"""
A queue store that keeps everything in memory: for tests, and for an MTA
that may lose its queue when it stops.
"""

from __future__ import annotations

import bisect
import io
import random as _random
from collections.abc import Callable
from typing import Any, BinaryIO

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailframe.components import ComponentMaker
from mailframe.envelope import EntryState, Envelope, QueueEntry, QueueStats
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import EntryStateError, NoSuchEntry, check_recipients
from mailframe.stores._ids import RandomSource, id_source, new_queue_id
from mailframe.stores._index import QueueIndex
from mailframe.stores._pressure import DEFAULT_HIGH_WATER, GatedWriter, ProducerGate, WriterState

__all__ = ["MemoryQueueStore"]

_Entries = list[QueueEntry]


@implementer(IQueueStore)
class MemoryQueueStore:
    """
    An :class:`~mailframe.interfaces.IQueueStore` in memory.

    It keeps the rules of every store (states, leases, the order of claims,
    hold and corrupt entries) without durability: a commit fires at once,
    and nothing survives the process. Tests use it as the reference store.

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
        self._entries: dict[str, QueueEntry] = {}
        self._ids: list[str] = []
        self._messages: dict[str, bytes] = {}
        self._writers: dict[str, _MemoryWriter] = {}
        self._watchers: list[Callable[[], object]] = []

    def recover(self) -> defer.Deferred[int]:
        """As after a restart: active entries become deferred and due now."""
        for queue_id in self._index.recover(self._clock.seconds()):
            self._sync(queue_id)
        return defer.succeed(len(self._entries))

    def has_room(self, size: int) -> bool:
        if self._capacity is None:
            return True
        used = sum(len(m) for m in self._messages.values())
        return used + size <= self._capacity

    def open_writer(self) -> _MemoryWriter:
        queue_id = new_queue_id(self._random, self._clock.seconds())
        while queue_id in self._entries or queue_id in self._writers:
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
        if queue_id not in self._entries:
            return defer.fail(NoSuchEntry(queue_id))
        return defer.succeed(io.BytesIO(self._messages[queue_id]))

    def claim(self, now: float, limit: int, lease: float) -> defer.Deferred[_Entries]:
        taken = self._index.claim(now, limit, lease)
        return defer.succeed([self._sync(queue_id) for queue_id, _ in taken])

    def renew(self, queue_id: str, lease: float) -> defer.Deferred[None]:
        return defer.maybeDeferred(self._index.renew, queue_id, self._clock.seconds(), lease)

    def record(self, entry: QueueEntry) -> defer.Deferred[None]:
        try:
            stored = self._require(entry.queue_id)
            check_recipients(stored, entry)
        except Exception:
            return defer.fail()
        if entry.done:
            self._remove(entry.queue_id)
        else:
            self._entries[entry.queue_id] = attrs.evolve(
                stored, recipients=entry.recipients, attempts=entry.attempts, warned=entry.warned
            )
        return defer.succeed(None)

    def reschedule(self, queue_id: str, when: float, reason: str) -> defer.Deferred[None]:
        try:
            state = self._index.state(queue_id)
        except NoSuchEntry:
            return defer.fail()
        if state is EntryState.ACTIVE:
            self._index.set(queue_id, EntryState.DEFERRED, when)
            self._sync(queue_id, reason=reason)
        return defer.succeed(None)

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> defer.Deferred[_Entries]:
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        found: list[QueueEntry] = []
        for queue_id in self._ids[start:]:
            if len(found) >= limit:
                break
            entry = self._entries[queue_id]
            if state is None or entry.state is state:
                found.append(entry)
        return defer.succeed(found)

    def get(self, queue_id: str) -> defer.Deferred[QueueEntry | None]:
        return defer.succeed(self._entries.get(queue_id))

    def hold(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return self._move(queue_id, EntryState.HOLD, reason, refuse=(EntryState.CORRUPT,))

    def release(self, queue_id: str) -> defer.Deferred[None]:
        if queue_id in self._entries and self._index.state(queue_id) is not EntryState.HOLD:
            state = self._index.state(queue_id).value
            return defer.fail(EntryStateError(f"{queue_id} is {state}, not on hold"))
        return self._move(queue_id, EntryState.DEFERRED, "", due=True)

    def delete(self, queue_id: str) -> defer.Deferred[None]:
        try:
            self._remove(queue_id)
        except NoSuchEntry:
            return defer.fail()
        return defer.succeed(None)

    def requeue(self, queue_id: str) -> defer.Deferred[None]:
        if queue_id in self._entries and self._index.leased(queue_id, self._clock.seconds()):
            return defer.fail(EntryStateError(f"{queue_id} is being delivered"))
        return self._move(
            queue_id, EntryState.DEFERRED, "", refuse=(EntryState.CORRUPT,), due=True
        )

    def flush(self) -> defer.Deferred[int]:
        """Make every deferred entry due now; fires with how many there were."""
        now = self._clock.seconds()
        deferred = self._index.deferred()
        for queue_id in deferred:
            when = min(now, self._index.next_attempt(queue_id))
            self._index.set(queue_id, EntryState.DEFERRED, when)
            self._sync(queue_id)
        self._changed()
        return defer.succeed(len(deferred))

    def stats(self) -> defer.Deferred[QueueStats]:
        counts = self._index.counts()
        oldest = min((e.envelope.received_at for e in self._entries.values()), default=None)
        size = sum(len(m) for m in self._messages.values())
        return defer.succeed(QueueStats(tuple(counts.items()), size=size, oldest=oldest))

    def quarantine(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return self._move(queue_id, EntryState.CORRUPT, reason)

    def notify_on_change(self, callback: Callable[[], object]) -> None:
        """*callback* runs after :meth:`flush`, :meth:`release` and :meth:`requeue`."""
        self._watchers.append(callback)

    def _move(
        self,
        queue_id: str,
        state: EntryState,
        reason: str,
        refuse: tuple[EntryState, ...] = (),
        due: bool = False,
    ) -> defer.Deferred[None]:
        try:
            current = self._index.state(queue_id)
        except NoSuchEntry:
            return defer.fail()
        if current in refuse:
            return defer.fail(
                EntryStateError(f"{queue_id} is {current.value} and cannot be {state.value}")
            )
        self._index.set(queue_id, state, self._clock.seconds() if due else None)
        self._sync(queue_id, reason=reason)
        if due:
            self._changed()
        return defer.succeed(None)

    def _changed(self) -> None:
        for callback in list(self._watchers):
            callback()

    def _require(self, queue_id: str) -> QueueEntry:
        entry = self._entries.get(queue_id)
        if entry is None:
            raise NoSuchEntry(queue_id)
        return entry

    def _sync(self, queue_id: str, reason: str | None = None) -> QueueEntry:
        """The entry with the state and due time of the index."""
        entry = self._entries[queue_id]
        entry = attrs.evolve(
            entry,
            state=self._index.state(queue_id),
            next_attempt=self._index.next_attempt(queue_id),
            reason=entry.reason if reason is None else reason,
        )
        self._entries[queue_id] = entry
        return entry

    def _remove(self, queue_id: str) -> None:
        self._index.remove(queue_id)
        del self._entries[queue_id]
        del self._messages[queue_id]
        del self._ids[bisect.bisect_left(self._ids, queue_id)]

    def _committed(self, entry: QueueEntry, message: bytes) -> None:
        del self._writers[entry.queue_id]
        self._index.add(entry.queue_id, entry.state, entry.next_attempt)
        self._entries[entry.queue_id] = entry
        self._messages[entry.queue_id] = message
        bisect.insort(self._ids, entry.queue_id)

    def _forget(self, queue_id: str) -> None:
        self._writers.pop(queue_id, None)


@implementer(IQueueWriter)
class _MemoryWriter(GatedWriter):
    """One message being written into a :class:`MemoryQueueStore`."""

    def __init__(self, store: MemoryQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._state = WriterState.OPEN
        self._chunks: list[bytes] = []
        self._held: list[bytes] = []
        self._gate = ProducerGate(store._clock, store._high_water)

    def write(self, data: bytes) -> None:
        if self._state is WriterState.ABORTED:
            return
        if self._state is not WriterState.OPEN:
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

    def commit(self, envelope: Envelope, hold: str | None = None) -> defer.Deferred[str]:
        if self._state is not WriterState.OPEN:
            state = self._state.value
            return defer.fail(RuntimeError(f"commit() of {self.queue_id}, which is {state}"))
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._drain()
        message = b"".join(self._chunks)
        self._chunks = []
        self._state = WriterState.COMMITTED
        entry = QueueEntry.new(
            self.queue_id,
            envelope,
            self._store._clock.seconds(),
            len(message),
            EntryState.INCOMING if hold is None else EntryState.HOLD,
        )
        if hold is not None:
            entry = attrs.evolve(entry, reason=hold)
        self._store._committed(entry, message)
        return defer.succeed(self.queue_id)

    def abort(self) -> None:
        if self._state is WriterState.OPEN:
            self._state = WriterState.ABORTED
            self._gate.done(sum(len(c) for c in self._held))
            self._chunks = self._held = []
            self._store._forget(self.queue_id)

    def _drain(self) -> None:
        held, self._held = self._held, []
        self._chunks.extend(held)
        self._gate.done(sum(len(c) for c in held))


def _build_memory(settings: Any, context: Any) -> MemoryQueueStore:
    return MemoryQueueStore(context.reactor, random=id_source(context.random))


#: The ``memory`` store plugin: not durable, so it starts only with
#: ``--unsafe-store``.
memory_maker = ComponentMaker(
    kind="store",
    name="memory",
    description="Queue in memory: loses every queued message when the process stops",
    factory=_build_memory,
    durable=False,
    shared=False,
)

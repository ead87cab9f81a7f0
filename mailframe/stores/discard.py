"""
A queue store that throws every message away once it is received: for
measuring what the SMTP server costs, and nothing else. It is not durable
(it is not a queue at all), so it starts only with ``--unsafe-store``; it
does not pass the store contract, and must never carry real mail.
"""

from __future__ import annotations

import random as _random
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mailframe.components import ComponentMaker
from mailframe.envelope import EntryState, Envelope, QueueEntry, QueueStats
from mailframe.interfaces import IQueueStore, IQueueWriter
from mailframe.stores._errors import NoSuchEntry
from mailframe.stores._ids import RandomSource, id_source, new_queue_id

__all__ = ["DiscardQueueStore", "discard_maker"]


@implementer(IQueueWriter)
class _DiscardWriter:
    def __init__(self, store: DiscardQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self.size = 0
        self._producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def open_message(self) -> defer.Deferred[BinaryIO]:
        return defer.fail(OSError("the discard store keeps no message"))

    def commit(self, envelope: Envelope, hold: str | None = None) -> defer.Deferred[str]:
        if not envelope.recipients:
            return defer.fail(ValueError("an envelope without recipients cannot be queued"))
        self._store.committed += 1
        return defer.succeed(self.queue_id)

    def abort(self) -> None:
        pass


@implementer(IQueueStore)
class DiscardQueueStore:
    """
    Accepts every message and keeps none: a commit fires at once, and the
    queue is always empty.

    :ivar committed: how many messages were committed (and thrown away).
    """

    def __init__(self, clock: IReactorTime, random: RandomSource | None = None) -> None:
        self.committed = 0
        self._clock = clock
        self._random: RandomSource = random if random is not None else _random.Random()

    def recover(self) -> defer.Deferred[int]:
        return defer.succeed(0)

    def has_room(self, size: int) -> bool:
        return True

    def open_writer(self) -> _DiscardWriter:
        return _DiscardWriter(self, new_queue_id(self._random, self._clock.seconds()))

    def open_message(self, queue_id: str) -> defer.Deferred[BinaryIO]:
        return defer.fail(NoSuchEntry(queue_id))

    def claim(self, now: float, limit: int, lease: float) -> defer.Deferred[list[QueueEntry]]:
        return defer.succeed([])

    def renew(self, queue_id: str, lease: float) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def record(self, entry: QueueEntry) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(entry.queue_id))

    def reschedule(self, queue_id: str, when: float, reason: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def notify_on_change(self, callback: Any) -> None:
        pass

    def list(
        self, state: EntryState | None = None, after: str | None = None, limit: int = 1000
    ) -> defer.Deferred[list[QueueEntry]]:
        return defer.succeed([])

    def get(self, queue_id: str) -> defer.Deferred[QueueEntry | None]:
        return defer.succeed(None)

    def hold(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def release(self, queue_id: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def delete(self, queue_id: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def requeue(self, queue_id: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))

    def flush(self) -> defer.Deferred[int]:
        return defer.succeed(0)

    def stats(self) -> defer.Deferred[QueueStats]:
        return defer.succeed(QueueStats(tuple((s, 0) for s in EntryState), size=0))

    def quarantine(self, queue_id: str, reason: str) -> defer.Deferred[None]:
        return defer.fail(NoSuchEntry(queue_id))


def _build(settings: Any, context: Any) -> DiscardQueueStore:
    return DiscardQueueStore(context.reactor, random=id_source(context.random))


#: The ``discard`` store plugin: for benchmarks only.
discard_maker = ComponentMaker(
    kind="store",
    name="discard",
    description="Throws every message away once received: for benchmarks only",
    factory=_build,
    durable=False,
    shared=True,
)

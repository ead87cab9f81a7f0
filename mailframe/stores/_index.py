"""
The in-memory index of queue entries and the rules of their lifecycle,
shared by the memory store and the spool (which also writes each change to
disk).

The lifecycle (:class:`~mailframe.envelope.EntryState`):

- a committed entry is ``active`` and due at once;
- :meth:`QueueIndex.claim` leases due ``active`` and ``deferred`` entries,
  making them ``active``; a leased entry is not claimed again until its
  lease runs out;
- :meth:`QueueIndex.record` marks recipients delivered or failed; the store
  removes an entry that has none pending;
- :meth:`QueueIndex.reschedule` makes an entry ``deferred`` until a time,
  and ends its lease;
- ``hold`` and ``quarantine`` take an entry out of delivery; ``release`` and
  ``requeue`` make it ``active`` and due now.

Only :meth:`~QueueIndex.claim` takes a lease, and only
:meth:`~QueueIndex.reschedule` and removal end one early: an operator who
holds or requeues an entry under delivery does not make a second runner
deliver it at the same time.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Sequence

import attrs

from mailframe.address import Mailbox
from mailframe.envelope import (
    DeliveryStatus,
    EntryState,
    QueueEntry,
    QueueStats,
    RecipientResult,
    RecipientState,
)
from mailframe.stores._errors import EntryStateError, LeaseLost, NoSuchEntry

__all__ = ["QueueIndex"]

#: What one result does to its recipient.
_OUTCOME = {
    DeliveryStatus.DELIVERED: RecipientState.DELIVERED,
    DeliveryStatus.PERMANENT: RecipientState.FAILED,
    DeliveryStatus.TRANSIENT: RecipientState.PENDING,
}
#: When a router expanded one recipient into several, a transient failure
#: of any keeps it pending, then a permanent one fails it.
_PRECEDENCE = {RecipientState.DELIVERED: 0, RecipientState.FAILED: 1, RecipientState.PENDING: 2}


@attrs.define
class _Slot:
    entry: QueueEntry
    lease_until: float | None = None
    # Whether record() counted an attempt since the last claim, so that
    # recording the results of several routes counts one attempt.
    counted: bool = False


class QueueIndex:
    """Every entry of one store, by queue id, with the leases on them."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._ids: list[str] = []
        # (time, queue id) for every time an entry may become claimable: its
        # next attempt, or the end of its lease. Items go stale when an
        # entry changes; claim() checks each against the entry and skips
        # stale ones, so a claim looks only at what is due, not at the
        # whole queue.
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._slots

    def add(self, entry: QueueEntry) -> None:
        """Add a new entry."""
        if entry.queue_id in self._slots:
            raise ValueError(f"duplicate queue id {entry.queue_id}")
        self._slots[entry.queue_id] = _Slot(entry)
        bisect.insort(self._ids, entry.queue_id)
        heapq.heappush(self._due, (entry.next_attempt, entry.queue_id))

    def get(self, queue_id: str) -> QueueEntry | None:
        slot = self._slots.get(queue_id)
        return None if slot is None else slot.entry

    def require(self, queue_id: str) -> QueueEntry:
        """The entry, or raise :class:`NoSuchEntry`."""
        return self._slot(queue_id).entry

    def remove(self, queue_id: str) -> QueueEntry:
        """Remove an entry and return it."""
        slot = self._slots.pop(queue_id, None)
        if slot is None:
            raise NoSuchEntry(queue_id)
        del self._ids[bisect.bisect_left(self._ids, queue_id)]
        return slot.entry

    def claim(self, now: float, limit: int, lease: float) -> list[QueueEntry]:
        """
        Lease up to *limit* due entries, the longest due first. The cost is
        in the number of due entries looked at, whatever the queue's size.
        """
        taken: list[QueueEntry] = []
        due = self._due
        while due and len(taken) < limit and due[0][0] <= now:
            _, queue_id = heapq.heappop(due)
            slot = self._slots.get(queue_id)
            if slot is None:
                continue
            entry = slot.entry
            if (
                entry.state not in (EntryState.ACTIVE, EntryState.DEFERRED)
                or entry.next_attempt > now
                or (slot.lease_until is not None and slot.lease_until > now)
            ):
                continue
            slot.entry = attrs.evolve(entry, state=EntryState.ACTIVE)
            slot.lease_until = now + lease
            slot.counted = False
            heapq.heappush(due, (slot.lease_until, queue_id))
            taken.append(slot.entry)
        return taken

    def renew(self, queue_id: str, now: float, lease: float) -> None:
        """
        Extend a lease to at least *now* + *lease*.

        :raises LeaseLost: if the entry is not leased at *now*.
        """
        slot = self._slot(queue_id)
        if slot.lease_until is None or slot.lease_until <= now:
            raise LeaseLost(queue_id)
        slot.lease_until = max(slot.lease_until, now + lease)

    def record(self, queue_id: str, results: Iterable[RecipientResult]) -> QueueEntry:
        """
        Apply the results of an attempt. A result counts for its
        ``original`` recipient when it has one. Recipients already delivered
        or failed keep their state. The first record after a claim counts an
        attempt.

        :raises ValueError: if a result names no recipient of the entry;
            nothing is changed then.
        """
        slot = self._slot(queue_id)
        entry = slot.entry
        known = {mailbox for mailbox, _ in entry.recipients}
        outcome: dict[Mailbox, RecipientState] = {}
        for result in results:
            target = result.original if result.original is not None else result.recipient
            if target not in known:
                raise ValueError(f"{target} is not a recipient of {queue_id}")
            state = _OUTCOME[result.status]
            previous = outcome.get(target, RecipientState.DELIVERED)
            outcome[target] = max(previous, state, key=_PRECEDENCE.__getitem__)
        recipients = tuple(
            (mailbox, outcome.get(mailbox, state) if state is RecipientState.PENDING else state)
            for mailbox, state in entry.recipients
        )
        attempts = entry.attempts if slot.counted else entry.attempts + 1
        slot.counted = True
        slot.entry = attrs.evolve(entry, recipients=recipients, attempts=attempts)
        return slot.entry

    def reschedule(self, queue_id: str, when: float, reason: str) -> QueueEntry:
        """
        End the lease and defer the entry until *when*. An entry put on hold
        or quarantined meanwhile stays there.
        """
        slot = self._slot(queue_id)
        slot.lease_until = None
        if slot.entry.state in (EntryState.HOLD, EntryState.QUARANTINE):
            return self._set(slot, next_attempt=when)
        return self._set(slot, state=EntryState.DEFERRED, next_attempt=when, reason=reason)

    def hold(self, queue_id: str, reason: str) -> QueueEntry:
        slot = self._slot(queue_id)
        self._refuse_quarantined(slot, "held")
        return self._set(slot, state=EntryState.HOLD, reason=reason)

    def release(self, queue_id: str, now: float) -> QueueEntry:
        slot = self._slot(queue_id)
        if slot.entry.state is not EntryState.HOLD:
            raise EntryStateError(f"{queue_id} is {slot.entry.state.value}, not on hold")
        return self._set(slot, state=EntryState.ACTIVE, next_attempt=now)

    def requeue(self, queue_id: str, now: float) -> QueueEntry:
        slot = self._slot(queue_id)
        self._refuse_quarantined(slot, "requeued")
        return self._set(slot, state=EntryState.ACTIVE, next_attempt=now)

    def flush(self, now: float) -> list[QueueEntry]:
        """Make every deferred entry due now; return the changed entries."""
        changed = []
        for slot in self._slots.values():
            if slot.entry.state is EntryState.DEFERRED:
                when = min(slot.entry.next_attempt, now)
                changed.append(self._set(slot, state=EntryState.ACTIVE, next_attempt=when))
        return changed

    def quarantine(self, queue_id: str, reason: str) -> QueueEntry:
        slot = self._slot(queue_id)
        return self._set(slot, state=EntryState.QUARANTINE, reason=reason)

    def recover(self, now: float) -> None:
        """
        After a restart, no lease is held: active entries, which may have
        been under delivery, become deferred and due now.
        """
        for slot in self._slots.values():
            slot.lease_until = None
            if slot.entry.state is EntryState.ACTIVE:
                when = min(slot.entry.next_attempt, now)
                self._set(slot, state=EntryState.DEFERRED, next_attempt=when)

    def page(self, state: EntryState | None, after: str | None, limit: int) -> list[QueueEntry]:
        """Up to *limit* entries in queue-id order, with ids above *after*."""
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        found: list[QueueEntry] = []
        for queue_id in self._ids[start:]:
            if len(found) >= limit:
                break
            entry = self._slots[queue_id].entry
            if state is None or entry.state is state:
                found.append(entry)
        return found

    def stats(self, incoming: int = 0) -> QueueStats:
        counts = dict.fromkeys(EntryState, 0)
        counts[EntryState.INCOMING] = incoming
        for slot in self._slots.values():
            counts[slot.entry.state] += 1
        return QueueStats(tuple(counts.items()))

    def entries(self) -> Sequence[QueueEntry]:
        return [self._slots[queue_id].entry for queue_id in self._ids]

    def _slot(self, queue_id: str) -> _Slot:
        slot = self._slots.get(queue_id)
        if slot is None:
            raise NoSuchEntry(queue_id)
        return slot

    def _refuse_quarantined(self, slot: _Slot, verb: str) -> None:
        if slot.entry.state is EntryState.QUARANTINE:
            raise EntryStateError(f"{slot.entry.queue_id} is quarantined and cannot be {verb}")

    def _set(
        self,
        slot: _Slot,
        *,
        state: EntryState | None = None,
        next_attempt: float | None = None,
        reason: str | None = None,
    ) -> QueueEntry:
        entry = slot.entry
        slot.entry = attrs.evolve(
            entry,
            state=entry.state if state is None else state,
            next_attempt=entry.next_attempt if next_attempt is None else next_attempt,
            reason=entry.reason if reason is None else reason,
        )
        if slot.entry.state in (EntryState.ACTIVE, EntryState.DEFERRED):
            heapq.heappush(self._due, (slot.entry.next_attempt, entry.queue_id))
        return slot.entry

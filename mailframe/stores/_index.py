"""
The scheduling index of a queue store: for each entry, its state, when it
is next due and the lease on it, and the order in which claims take them.
Both stores use it: the memory store beside its entries, the spool as its
picture of what the directories hold.

Claims take entries as Postfix's queue manager does: new mail from
``incoming`` (first in, first out) and due mail from ``deferred`` (the
longest due first) in turn, so that a large deferred backlog never starves
new mail, nor new mail the backlog. An ``active`` entry whose lease ran out
is due again, as if deferred.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Container, Iterable, Iterator

import attrs

from mailframe.envelope import EntryState
from mailframe.stores._errors import LeaseLost, NoSuchEntry

__all__ = ["QueueIndex"]

_CLAIMABLE = (EntryState.INCOMING, EntryState.DEFERRED, EntryState.ACTIVE)
#: Due times closer than this are the same: a time that went into a file's
#: modification time comes back rounded.
_SAME_TIME = 0.001


@attrs.define
class _Slot:
    state: EntryState
    next_attempt: float
    lease_until: float | None = None


class QueueIndex:
    """The state, due time and lease of every entry of one store, by queue id."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._incoming: collections.deque[str] = collections.deque()
        # (time, queue id) for every time an entry may become claimable: its
        # next attempt, or the end of its lease. Items go stale when an
        # entry changes; claim() checks each against its slot and skips
        # stale ones, so a claim looks only at what is due, not at the
        # whole queue.
        self._due: list[tuple[float, str]] = []
        # Where the next claim looks first: it goes on from where the last
        # one stopped, so that claims of one entry at a time alternate too.
        self._incoming_first = True

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._slots

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def add(self, queue_id: str, state: EntryState, next_attempt: float) -> None:
        """Add an entry."""
        if queue_id in self._slots:
            raise ValueError(f"duplicate queue id {queue_id}")
        self._slots[queue_id] = _Slot(state, next_attempt)
        self._schedule(queue_id, state, next_attempt)

    def load(self, entries: Iterable[tuple[str, EntryState, float]]) -> None:
        """Add many entries at once, as a store's recovery finds them."""
        for queue_id, state, next_attempt in entries:
            if queue_id in self._slots:
                raise ValueError(f"duplicate queue id {queue_id}")
            self._slots[queue_id] = _Slot(state, next_attempt)
            if state is EntryState.INCOMING:
                self._incoming.append(queue_id)
            elif state in _CLAIMABLE:
                self._due.append((next_attempt, queue_id))
        heapq.heapify(self._due)

    def state(self, queue_id: str) -> EntryState:
        """The entry's state, or raise :class:`NoSuchEntry`."""
        return self._slot(queue_id).state

    def next_attempt(self, queue_id: str) -> float:
        return self._slot(queue_id).next_attempt

    def set(self, queue_id: str, state: EntryState, next_attempt: float | None = None) -> None:
        """Move an entry to *state*, due at *next_attempt* if given; ends its lease."""
        slot = self._slot(queue_id)
        slot.state = state
        slot.lease_until = None
        if next_attempt is not None:
            slot.next_attempt = next_attempt
        self._schedule(queue_id, state, slot.next_attempt)

    def remove(self, queue_id: str) -> None:
        if self._slots.pop(queue_id, None) is None:
            raise NoSuchEntry(queue_id)

    def claim(self, now: float, limit: int, lease: float) -> list[tuple[str, EntryState]]:
        """
        Lease up to *limit* entries, from ``incoming`` and from the due ones
        in turn, and make them ``active``. The turns go on from one claim
        to the next, so that claims of one entry each alternate too. The
        cost is in the number of entries looked at, whatever the queue's
        size.

        :return: the ids taken, each with the state it was in.
        """
        taken: list[tuple[str, EntryState]] = []
        while len(taken) < limit:
            if self._incoming_first:
                queue_id = self._next_incoming()
                from_incoming = queue_id is not None
                if queue_id is None:
                    queue_id = self._next_due(now)
            else:
                queue_id = self._next_due(now)
                from_incoming = queue_id is None
                if queue_id is None:
                    queue_id = self._next_incoming()
            if queue_id is None:
                break
            self._incoming_first = not from_incoming
            slot = self._slots[queue_id]
            taken.append((queue_id, slot.state))
            slot.state = EntryState.ACTIVE
            slot.lease_until = now + lease
            heapq.heappush(self._due, (slot.lease_until, queue_id))
        return taken

    def renew(self, queue_id: str, now: float, lease: float) -> None:
        """
        Extend a lease to at least *now* + *lease*.

        :raises LeaseLost: if the entry is not leased at *now*.
        """
        slot = self._slot(queue_id)
        if slot.lease_until is None or slot.lease_until <= now:
            raise LeaseLost(queue_id)
        if now + lease > slot.lease_until:
            slot.lease_until = now + lease
            # The entry comes due when the new lease ends: the item of the
            # old one is skipped when it comes up.
            heapq.heappush(self._due, (slot.lease_until, queue_id))

    def leased(self, queue_id: str, now: float) -> bool:
        """Whether a runner holds a lease on the entry at *now*."""
        slot = self._slots.get(queue_id)
        return slot is not None and slot.lease_until is not None and slot.lease_until > now

    def recover(self, now: float) -> list[str]:
        """
        After a restart no lease is held: active entries, which may have
        been under delivery, become deferred and due now. Returns their ids.
        """
        recovered = []
        for queue_id, slot in self._slots.items():
            slot.lease_until = None
            if slot.state is EntryState.ACTIVE:
                slot.state = EntryState.DEFERRED
                slot.next_attempt = min(slot.next_attempt, now)
                heapq.heappush(self._due, (slot.next_attempt, queue_id))
                recovered.append(queue_id)
        return recovered

    def resync(
        self,
        found: Iterable[tuple[str, EntryState, float]],
        now: float,
        keep: Container[str] = frozenset(),
    ) -> None:
        """
        Make the index what *found* says, as a store sees it after another
        process changed it. Entries leased at *now* stay as they are, since
        whoever delivers them will find out, and so do those in *keep*: the
        store is changing them itself, and *found* may be older than that.

        Only the due time of a deferred entry is compared, and an entry
        found ``active`` that no lease here covers is due at once, as if
        its lease had just run out.
        """
        seen = set()
        for queue_id, state, next_attempt in found:
            seen.add(queue_id)
            if queue_id in keep or self.leased(queue_id, now):
                continue
            slot = self._slots.get(queue_id)
            if state is EntryState.ACTIVE:
                if slot is not None and slot.state is state and slot.lease_until is not None:
                    continue  # its lease ran out, and it is due already
                if slot is None:
                    slot = self._slots[queue_id] = _Slot(state, next_attempt)
                slot.state, slot.lease_until = state, now
                heapq.heappush(self._due, (now, queue_id))
            elif slot is None:
                self.add(queue_id, state, next_attempt)
            elif slot.state is not state or (
                state is EntryState.DEFERRED and abs(slot.next_attempt - next_attempt) > _SAME_TIME
            ):
                self.set(queue_id, state, next_attempt)
        for queue_id in [q for q in self._slots if q not in seen and q not in keep]:
            if not self.leased(queue_id, now):
                del self._slots[queue_id]

    def deferred(self) -> list[str]:
        """The ids of the deferred entries."""
        return [q for q, slot in self._slots.items() if slot.state is EntryState.DEFERRED]

    def counts(self) -> dict[EntryState, int]:
        counts = dict.fromkeys(EntryState, 0)
        for slot in self._slots.values():
            counts[slot.state] += 1
        return counts

    def _slot(self, queue_id: str) -> _Slot:
        slot = self._slots.get(queue_id)
        if slot is None:
            raise NoSuchEntry(queue_id)
        return slot

    def _schedule(self, queue_id: str, state: EntryState, next_attempt: float) -> None:
        if state is EntryState.INCOMING:
            self._incoming.append(queue_id)
        elif state in _CLAIMABLE:
            heapq.heappush(self._due, (next_attempt, queue_id))

    def _next_incoming(self) -> str | None:
        while self._incoming:
            queue_id = self._incoming.popleft()
            slot = self._slots.get(queue_id)
            if slot is not None and slot.state is EntryState.INCOMING:
                return queue_id
        return None

    def _next_due(self, now: float) -> str | None:
        due = self._due
        while due and due[0][0] <= now:
            _, queue_id = heapq.heappop(due)
            slot = self._slots.get(queue_id)
            if slot is None:
                continue
            if slot.state is EntryState.DEFERRED and slot.next_attempt <= now:
                return queue_id
            if (
                slot.state is EntryState.ACTIVE
                and slot.lease_until is not None
                and slot.lease_until <= now
            ):
                return queue_id
        return None

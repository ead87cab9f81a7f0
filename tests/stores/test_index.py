"""Tests for the queue index's due-time heap."""

from __future__ import annotations

from mailframe.envelope import EntryState, QueueEntry, RecipientState
from mailframe.stores._index import QueueIndex
from mailframe.testing import envelope


def entry(queue_id: str, due: float) -> QueueEntry:
    env = envelope("a@example.org", "b@example.com")
    return QueueEntry(queue_id, env, EntryState.ACTIVE,
                      ((env.recipients[0], RecipientState.PENDING),), next_attempt=due)


def ids(entries: list[QueueEntry]) -> list[str]:
    return [e.queue_id for e in entries]


def test_claims_follow_every_change_of_due_time() -> None:
    index = QueueIndex()
    index.add(entry("A", 0))
    index.add(entry("B", 50))
    assert ids(index.claim(10, 10, lease=100)) == ["A"]
    assert index.claim(20, 10, lease=100) == []
    # A is leased until 110; B comes due at 50.
    assert ids(index.claim(60, 10, lease=100)) == ["B"]
    index.reschedule("B", 500, "later")
    assert ids(index.claim(111, 10, lease=100)) == ["A"]  # A's lease ran out
    index.hold("A", "operator")
    assert index.claim(400, 10, lease=100) == []
    index.release("A", 450)
    assert ids(index.claim(450, 10, lease=1000)) == ["A"]
    assert ids(index.claim(500, 10, lease=10)) == ["B"]
    index.remove("A")
    # B's lease from 500 ran out at 510; A is gone, though its lease was on.
    assert ids(index.claim(1000, 10, lease=10)) == ["B"]


def test_many_deferred_entries_are_not_claimed_early() -> None:
    index = QueueIndex()
    for number in range(5000):
        index.add(entry(f"F{number:05}", 0))
        index.reschedule(f"F{number:05}", 10_000 + number, "deferred")
    index.add(entry("NOW", 5))
    assert ids(index.claim(6, 100, lease=100_000)) == ["NOW"]
    assert ids(index.claim(10_002, 100, lease=60)) == ["F00000", "F00001", "F00002"]
    index.flush(10_003)
    assert len(index.claim(10_003, 10_000, lease=60)) == 4997

"""
The scheduling index that both stores share: states, due times, leases,
and the order of claims (incoming first in, first out; deferred by due
time; the two in turn).
"""

from __future__ import annotations

import time

import pytest

from mailframe.envelope import EntryState
from mailframe.stores import LeaseLost, NoSuchEntry
from mailframe.stores._index import QueueIndex

INCOMING = EntryState.INCOMING
ACTIVE = EntryState.ACTIVE
DEFERRED = EntryState.DEFERRED
HOLD = EntryState.HOLD
CORRUPT = EntryState.CORRUPT


def ids(taken: list[tuple[str, EntryState]]) -> list[str]:
    return [queue_id for queue_id, _ in taken]


def claim_all(index: QueueIndex, now: float, lease: float = 60) -> list[str]:
    return ids(index.claim(now, 1_000_000, lease))


def test_add_and_look_up() -> None:
    index = QueueIndex()
    index.add("A", INCOMING, 10)
    index.add("B", DEFERRED, 20)
    assert len(index) == 2
    assert "A" in index and "C" not in index
    assert sorted(index) == ["A", "B"]
    assert (index.state("A"), index.next_attempt("A")) == (INCOMING, 10)
    assert (index.state("B"), index.next_attempt("B")) == (DEFERRED, 20)
    with pytest.raises(ValueError):
        index.add("A", HOLD, 0)
    for call in (index.state, index.next_attempt, index.remove):
        with pytest.raises(NoSuchEntry):
            call("C")
    with pytest.raises(NoSuchEntry):
        index.set("C", HOLD)
    with pytest.raises(NoSuchEntry):
        index.renew("C", 0, 60)
    assert not index.leased("C", 0)


def test_claim_says_where_each_entry_was() -> None:
    index = QueueIndex()
    index.add("NEW", INCOMING, 0)
    index.add("OLD", DEFERRED, 5)
    assert sorted(index.claim(10, 10, 60)) == [("NEW", INCOMING), ("OLD", DEFERRED)]
    assert index.state("NEW") is ACTIVE and index.leased("NEW", 10)
    # A lease that ran out is taken again, from active.
    assert index.claim(71, 10, 60) == [("NEW", ACTIVE), ("OLD", ACTIVE)]


def test_incoming_is_first_in_first_out() -> None:
    index = QueueIndex()
    names = [f"I{n:03}" for n in range(50)]
    # Incoming entries are due when they come, whatever their time says.
    for n, queue_id in enumerate(reversed(names)):
        index.add(queue_id, INCOMING, 1000 - n)
    assert [ids(index.claim(0, 1, 60))[0] for _ in names] == list(reversed(names))


def test_deferred_by_due_time() -> None:
    index = QueueIndex()
    for queue_id, due in [("C", 30), ("A", 10), ("D", 40), ("B", 20)]:
        index.add(queue_id, DEFERRED, due)
    assert index.claim(5, 10, 60) == []
    assert claim_all(index, 25) == ["A", "B"]
    assert claim_all(index, 40) == ["C", "D"]


def test_incoming_and_deferred_take_turns() -> None:
    index = QueueIndex()
    for n in range(4):
        index.add(f"D{n}", DEFERRED, n)
        index.add(f"I{n}", INCOMING, 100)
    assert claim_all(index, 100) == ["I0", "D0", "I1", "D1", "I2", "D2", "I3", "D3"]


def test_turns_go_on_from_one_claim_to_the_next() -> None:
    """A runner that claims one entry at a time alternates too."""
    index = QueueIndex()
    for n in range(3):
        index.add(f"D{n}", DEFERRED, n)
        index.add(f"I{n}", INCOMING, 100)
    assert [ids(index.claim(100, 1, 60)) for _ in range(7)] == [
        ["I0"], ["D0"], ["I1"], ["D1"], ["I2"], ["D2"], [],
    ]


def test_when_one_side_is_empty_the_other_gives_everything() -> None:
    index = QueueIndex()
    for n in range(3):
        index.add(f"I{n}", INCOMING, 0)
    assert ids(index.claim(0, 2, 60)) == ["I0", "I1"]
    index.add("D", DEFERRED, 0)
    index.add("I3", INCOMING, 0)
    # The last claim ended on incoming: the deferred entry goes first.
    assert ids(index.claim(0, 10, 60)) == ["D", "I2", "I3"]


def test_a_deferred_backlog_does_not_starve_new_mail() -> None:
    index = QueueIndex()
    backlog = 100_000
    index.load((f"D{n:06}", DEFERRED, float(n % 100)) for n in range(backlog))
    for n in range(10):
        index.add(f"NEW{n}", INCOMING, 1000)
    started = time.monotonic()
    taken = ids(index.claim(1000, 20, 60))
    # Half of every claim goes to new mail, and a claim costs what it
    # takes, not the size of the backlog.
    assert [q for q in taken if q.startswith("NEW")] == [f"NEW{n}" for n in range(10)]
    assert len([q for q in taken if q.startswith("D")]) == 10
    assert time.monotonic() - started < 1.0
    # One at a time, new mail still gets every other claim.
    for n in range(10, 20):
        index.add(f"NEW{n}", INCOMING, 1000)
    single = [ids(index.claim(1000, 1, 60))[0] for _ in range(20)]
    assert single[::2] == [f"NEW{n}" for n in range(10, 20)]
    assert all(q.startswith("D") for q in single[1::2])


def test_new_mail_does_not_starve_a_deferred_backlog() -> None:
    index = QueueIndex()
    for n in range(5):
        index.add(f"D{n}", DEFERRED, 0)
    taken = []
    for n in range(10):
        # New mail keeps coming, one message per claim of one entry.
        index.add(f"NEW{n}", INCOMING, 0)
        taken += ids(index.claim(0, 1, 60))
    assert sorted(q for q in taken if q.startswith("D")) == [f"D{n}" for n in range(5)]


def test_future_entries_are_not_claimed_early() -> None:
    index = QueueIndex()
    for n in range(5000):
        index.add(f"F{n:05}", DEFERRED, 10_000 + n)
    index.add("NOW", DEFERRED, 5)
    assert claim_all(index, 6, 100_000) == ["NOW"]
    assert claim_all(index, 10_002) == ["F00000", "F00001", "F00002"]
    for queue_id in index.deferred():
        index.set(queue_id, DEFERRED, 10_003)
    assert len(claim_all(index, 10_003)) == 4997


def test_lease() -> None:
    index = QueueIndex()
    index.add("A", INCOMING, 0)
    assert not index.leased("A", 0)
    assert claim_all(index, 0, lease=60) == ["A"]
    assert index.leased("A", 59.9)
    assert not index.leased("A", 60)
    assert claim_all(index, 59) == []
    assert index.claim(60, 10, 60) == [("A", ACTIVE)]


def test_renew() -> None:
    index = QueueIndex()
    index.add("A", INCOMING, 0)
    with pytest.raises(LeaseLost):
        index.renew("A", 0, 60)
    index.claim(0, 10, 60)
    index.renew("A", 50, 60)
    # The old lease would have ended at 60: the entry is not due then...
    assert claim_all(index, 60) == []
    assert claim_all(index, 109) == []
    # ...but when the renewed one ends, at 110.
    assert claim_all(index, 110) == ["A"]
    # A shorter renewal does not shorten the lease.
    index.renew("A", 120, 1)
    assert index.leased("A", 169)
    with pytest.raises(LeaseLost):
        index.renew("A", 170, 60)


def test_set_moves_an_entry_and_ends_its_lease() -> None:
    index = QueueIndex()
    index.add("A", INCOMING, 0)
    index.claim(0, 10, 600)
    index.set("A", DEFERRED, 50)
    assert not index.leased("A", 10)
    assert claim_all(index, 49) == []
    assert claim_all(index, 50) == ["A"]
    for state in (HOLD, CORRUPT):
        index.set("A", state)
        assert index.state("A") is state
        assert claim_all(index, 10_000) == []
    # Without a time, the entry keeps its own.
    index.set("A", DEFERRED)
    assert index.next_attempt("A") == 50
    assert claim_all(index, 50) == ["A"]
    index.set("A", INCOMING)
    assert claim_all(index, 0) == ["A"]


def test_removed_entries_are_skipped() -> None:
    index = QueueIndex()
    index.add("I", INCOMING, 0)
    index.add("D", DEFERRED, 0)
    index.add("L", INCOMING, 0)
    index.claim(0, 1, 60)
    index.remove("I")
    index.remove("D")
    index.remove("L")
    assert len(index) == 0
    assert claim_all(index, 1000) == []
    # An id may come back, as a new entry.
    index.add("D", INCOMING, 0)
    assert claim_all(index, 1000) == ["D"]


def test_load() -> None:
    index = QueueIndex()
    index.load([("I2", INCOMING, 0), ("D1", DEFERRED, 30), ("H", HOLD, 0),
                ("I1", INCOMING, 0), ("D0", DEFERRED, 20), ("C", CORRUPT, 0)])
    assert len(index) == 6
    assert index.counts() == {INCOMING: 2, ACTIVE: 0, DEFERRED: 2, HOLD: 1, CORRUPT: 1}
    # Incoming in the order given; deferred by due time.
    assert claim_all(index, 100) == ["I2", "D0", "I1", "D1"]
    with pytest.raises(ValueError):
        index.load([("H", INCOMING, 0)])


def test_recover() -> None:
    index = QueueIndex()
    index.add("A", INCOMING, 0)
    index.add("B", DEFERRED, 500)
    index.add("C", HOLD, 0)
    index.claim(600, 10, 3600)
    assert sorted(index.recover(700)) == ["A", "B"]
    for queue_id in ("A", "B"):
        assert index.state(queue_id) is DEFERRED
        assert not index.leased(queue_id, 700)
    assert index.next_attempt("B") == 500
    assert sorted(claim_all(index, 700)) == ["A", "B"]
    assert index.state("C") is HOLD


def test_deferred_and_counts() -> None:
    index = QueueIndex()
    index.add("A", DEFERRED, 10)
    index.add("B", DEFERRED, 20)
    index.add("C", INCOMING, 0)
    index.add("D", HOLD, 0)
    assert sorted(index.deferred()) == ["A", "B"]
    index.claim(10, 1, 60)
    assert index.counts() == {INCOMING: 0, ACTIVE: 1, DEFERRED: 2, HOLD: 1, CORRUPT: 0}


class TestResync:
    """What a store does when another process changed its directories."""

    def test_follows_what_was_found(self) -> None:
        index = QueueIndex()
        index.add("GONE", INCOMING, 0)
        index.add("HELD", DEFERRED, 500)
        index.add("DUE", DEFERRED, 500)
        index.add("SAME", DEFERRED, 500)
        index.resync([("HELD", HOLD, 0), ("DUE", DEFERRED, 100), ("SAME", DEFERRED, 500),
                      ("NEW", DEFERRED, 50), ("FRESH", INCOMING, 0)], now=200)
        assert sorted(index) == ["DUE", "FRESH", "HELD", "NEW", "SAME"]
        assert index.state("HELD") is HOLD
        assert index.next_attempt("DUE") == 100
        assert claim_all(index, 200) == ["FRESH", "NEW", "DUE"]

    def test_leaves_leased_entries_alone(self) -> None:
        index = QueueIndex()
        index.add("A", INCOMING, 0)
        index.claim(0, 10, 60)
        # Still in incoming/ to a scan that ran before the claim's rename,
        # or gone to one that ran after an operator deleted it.
        index.resync([("A", INCOMING, 0)], now=10)
        assert index.state("A") is ACTIVE and index.leased("A", 10)
        index.resync([], now=10)
        assert "A" in index and index.leased("A", 10)
        assert claim_all(index, 30) == []
        # Once the lease has run out, the scan counts.
        index.resync([], now=61)
        assert "A" not in index

    def test_leaves_kept_entries_alone(self) -> None:
        index = QueueIndex()
        index.add("COMMITTED", INCOMING, 0)
        index.add("RESCHEDULED", DEFERRED, 900)
        index.resync([("RESCHEDULED", ACTIVE, 0), ("WRITING", INCOMING, 0)], now=10,
                     keep={"COMMITTED", "RESCHEDULED", "WRITING"})
        assert sorted(index) == ["COMMITTED", "RESCHEDULED"]
        assert (index.state("RESCHEDULED"), index.next_attempt("RESCHEDULED")) == (DEFERRED, 900)
        assert claim_all(index, 900) == ["COMMITTED", "RESCHEDULED"]

    def test_active_without_a_lease_is_due(self) -> None:
        """An entry in active/ that no lease covers is taken again, not lost."""
        index = QueueIndex()
        index.add("KNOWN", DEFERRED, 900)
        index.resync([("KNOWN", ACTIVE, 5), ("STRAY", ACTIVE, 5)], now=10)
        assert index.counts()[ACTIVE] == 2
        assert not index.leased("KNOWN", 10)
        assert sorted(index.claim(10, 10, 60)) == [("KNOWN", ACTIVE), ("STRAY", ACTIVE)]
        # A lease that ran out stays due, and is not scheduled twice.
        index.resync([("KNOWN", ACTIVE, 80), ("STRAY", ACTIVE, 80)], now=80)
        assert sorted(claim_all(index, 80)) == ["KNOWN", "STRAY"]
        assert claim_all(index, 80) == []

    def test_repeated_scans_change_nothing(self) -> None:
        """
        Times that went through a file's modification time come back
        rounded, and an incoming entry's time is the scan's: neither is a
        change, nor grows the index's schedules.
        """
        index = QueueIndex()
        index.load([(f"I{n}", INCOMING, 0) for n in range(100)]
                   + [(f"D{n}", DEFERRED, 1e9 + n + 0.1) for n in range(100)])
        sizes = len(index._incoming), len(index._due)
        for scan in range(50):
            index.resync([(f"I{n}", INCOMING, 100.0 + scan) for n in range(100)]
                         + [(f"D{n}", DEFERRED, 1e9 + n + 0.1 + 1e-7) for n in range(100)],
                         now=100.0 + scan)
        assert (len(index._incoming), len(index._due)) == sizes
        assert claim_all(index, 0) == [f"I{n}" for n in range(100)]
        assert index.next_attempt("D0") == 1e9 + 0.1

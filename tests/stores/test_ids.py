"""Queue ids: filename-safe, sorted by time, random within a millisecond."""

from __future__ import annotations

import random
import re

from hypothesis import given
from hypothesis import strategies as st

from mailframe.stores import QUEUE_ID_LENGTH, new_queue_id

ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{18}\Z")


@given(st.floats(0, 2**40), st.integers(0, 2**32))
def test_shape(now: float, seed: int) -> None:
    queue_id = new_queue_id(random.Random(seed), now)
    assert len(queue_id) == QUEUE_ID_LENGTH == 18
    assert ID.match(queue_id)


@given(st.floats(0, 2**40), st.floats(0, 2**40), st.integers(0, 2**32))
def test_sorted_by_time(a: float, b: float, seed: int) -> None:
    rng = random.Random(seed)
    first, second = new_queue_id(rng, a), new_queue_id(rng, b)
    if int(a * 1000) < int(b * 1000):
        assert first < second
    elif int(a * 1000) > int(b * 1000):
        assert first > second


def test_random_within_a_millisecond() -> None:
    rng = random.Random(7)
    ids = {new_queue_id(rng, 1_700_000_000.0) for _ in range(1000)}
    assert len(ids) == 1000
    assert len({i[:10] for i in ids}) == 1


def test_deterministic_with_a_seeded_source() -> None:
    assert new_queue_id(random.Random(1), 5.0) == new_queue_id(random.Random(1), 5.0)

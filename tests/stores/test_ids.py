"""Queue ids: filename-safe, sorted by time, random within a millisecond."""

from __future__ import annotations

import random
import re

from hypothesis import given
from hypothesis import strategies as st

from mailframe.stores import QUEUE_ID_LENGTH, new_queue_id
from mailframe.stores._ids import id_source

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


class CountingSource:
    """A system-like source that counts how often it is read."""

    def __init__(self) -> None:
        self.reads = 0
        self._source = random.Random(3)

    def getrandbits(self, k: int, /) -> int:
        self.reads += 1
        return self._source.getrandbits(k)


def test_id_source_reads_its_seed_once() -> None:
    source = CountingSource()
    ids = id_source(source)
    made = {new_queue_id(ids, 1_700_000_000.0) for _ in range(1000)}
    assert len(made) == 1000
    assert source.reads == 1
    # Two sources seeded from different bits give different ids.
    other = id_source(random.Random(4))
    assert new_queue_id(other, 1_700_000_000.0) not in made
    # A context without a source: the system's seeds the generator.
    assert new_queue_id(id_source(None), 1_700_000_000.0) not in made


def test_store_makers_seed_their_own_source() -> None:
    """The built-in stores' makers read the context's source once, not per id."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from mailframe.stores.discard import _build as build_discard
    from mailframe.stores.memory import _build_memory
    from mailframe.stores.spool import _build_spool

    for build, settings in ((build_discard, {}), (_build_memory, {}),
                            (_build_spool, {"min_free": 0, "sync": "file"})):
        source = CountingSource()
        context = SimpleNamespace(reactor=Clock(), random=source,
                                  config=SimpleNamespace(queue_dir="/nonexistent"))
        store = build(settings, context)
        assert source.reads == 1, build
        assert isinstance(store._random, random.Random), build  # type: ignore[attr-defined]
        assert not isinstance(store._random, random.SystemRandom), build  # type: ignore[attr-defined]


@given(st.floats(0, 2**40), st.integers(0, 2**32))
def test_the_id_is_the_time_then_the_random_bits_in_crockford_base32(
    now: float, seed: int
) -> None:
    """Each character is five bits of the value, most significant first."""
    queue_id = new_queue_id(random.Random(seed), now)
    value = 0
    for char in queue_id:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    millis = int(now * 1000) % (1 << 50)
    assert value == (millis << 40) | random.Random(seed).getrandbits(40)

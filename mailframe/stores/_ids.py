"""
Queue ids: short, filename-safe, and sorted roughly by the time they were made.
"""

from __future__ import annotations

import random as _random
from typing import Protocol

__all__ = ["QUEUE_ID_LENGTH", "RandomSource", "id_source", "new_queue_id", "queue_id_time"]

# Crockford's base32: digits and upper-case letters without I, L, O and U.
# Its characters sort in the same order as the values they encode, so ids
# sort by time.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: 10 characters of milliseconds (50 bits: good for 35,000 years) and 8 of
#: randomness (40 bits), like a shortened ULID.
_TIME_CHARS = 10
_RANDOM_CHARS = 8
_RANDOM_BITS = 5 * _RANDOM_CHARS
QUEUE_ID_LENGTH = _TIME_CHARS + _RANDOM_CHARS


class RandomSource(Protocol):
    """What a store needs of a :class:`random.Random`."""

    def getrandbits(self, k: int, /) -> int: ...


def id_source(seed_from: RandomSource | None) -> _random.Random:
    """
    A fast source of the random bits of queue ids, seeded once with 128
    bits of *seed_from*, such as the :class:`random.SystemRandom` that
    components are given; with ``None``, from the system's source.

    Queue ids need to be unique, not secret: the stores check them for
    collisions. Reading the system's source for every id costs a system
    call, and the interpreter's lock is given up and taken back around it
    while the store's threads wait for that lock; a Mersenne Twister seeded
    from it costs neither.
    """
    if seed_from is None:
        return _random.Random()
    return _random.Random(seed_from.getrandbits(128))


def new_queue_id(random: RandomSource, now: float) -> str:
    """
    A new queue id for an entry made at *now*.

    The id is 18 characters of Crockford base32: the time in milliseconds,
    then 40 random bits. Ids made in different milliseconds sort in the
    order they were made; within one millisecond a collision has odds of
    about one in a trillion per pair, and stores check for them anyway.

    :param random: the source of the random bits, such as
        :class:`random.SystemRandom`.
    :param now: POSIX time, from the store's clock.
    """
    millis = int(now * 1000) % (1 << (5 * _TIME_CHARS))
    value = (millis << _RANDOM_BITS) | random.getrandbits(_RANDOM_BITS)
    chars = []
    for _ in range(QUEUE_ID_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def queue_id_time(queue_id: str) -> float | None:
    """
    The POSIX time at which :func:`new_queue_id` made *queue_id*, to the
    millisecond, or ``None`` if it is not such an id.
    """
    if len(queue_id) != QUEUE_ID_LENGTH:
        return None
    millis = 0
    for char in queue_id[:_TIME_CHARS]:
        digit = _ALPHABET.find(char)
        if digit < 0:
            return None
        millis = millis * 32 + digit
    return millis / 1000

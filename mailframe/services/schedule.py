"""
The retry schedule, defined once: a list of intervals whose last one
repeats, each with ±10 % jitter; and how long a message may stay queued
before it expires, and how long before its sender is warned of the delay.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

import attrs

from mailframe.components import parse_duration

__all__ = [
    "DEFAULT_DELAY_WARNING",
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_SCHEDULE",
    "RetrySchedule",
    "parse_duration",
]


def _intervals(value: Sequence[float]) -> tuple[float, ...]:
    result = tuple(float(v) for v in value)
    if not result or any(v <= 0 for v in result):
        raise ValueError("a retry schedule needs at least one positive interval")
    return result


@attrs.frozen
class RetrySchedule:
    """
    :ivar intervals: seconds to wait after the first, second, ... attempt;
        the last repeats.
    :ivar jitter: the fraction by which each interval is varied at random.
    """

    intervals: tuple[float, ...] = attrs.field(converter=_intervals)
    jitter: float = 0.1

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        """Parse a comma-separated list of durations, such as ``5m,10m,20m``."""
        return cls(tuple(parse_duration(part) for part in text.split(",")))

    def delay(self, attempts: int, random: _random.Random) -> float:
        """Seconds to wait after *attempts* attempts (1 for the first)."""
        base = self.intervals[min(max(attempts, 1), len(self.intervals)) - 1]
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def next_attempt(
        self, now: float, attempts: int, random: _random.Random, deadline: float | None = None
    ) -> float:
        """
        When to try again at *now* after *attempts* attempts: after
        :meth:`delay`, but no later than *deadline* (when the message
        expires), so that a message expires on time rather than up to one
        interval late.
        """
        when = now + self.delay(attempts, random)
        return when if deadline is None else max(now, min(when, deadline))


#: Close to Postfix's practice (RFC 5321 §4.5.4.1 asks for 30 minutes; the
#: short first steps deliver sooner after brief outages).
DEFAULT_SCHEDULE = RetrySchedule((300, 600, 1200, 2400, 4020))

#: Seconds a message may wait in the queue before its pending recipients
#: fail: five days. RFC 5321 §4.5.4.1 says the give-up time generally
#: needs to be at least 4-5 days; Postfix's ``maximal_queue_lifetime`` is 5d.
DEFAULT_MAX_LIFETIME = 5 * 86400.0

#: Seconds a message waits before its sender gets one "delayed" notification
#: (RFC 3464 §2.3.3): four hours, Sendmail's ``Timeout.queuewarn``. Zero
#: turns the warning off.
DEFAULT_DELAY_WARNING = 4 * 3600.0

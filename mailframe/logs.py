"""
Log observers for ``twistd --logger``.

Twisted's text observer formats the time of every event from scratch, and
every field of an event's format through :class:`string.Formatter`; on a
busy server that is a noticeable share of each message's CPU.
:func:`format_classic` writes the same text as
:func:`twisted.logger.formatEventAsClassicLogText` for the events a server
logs: the time is formatted once a second, and a format's plain fields
(``{name}``) are looked up directly, its parse made once per format. Any
other event (one with a failure, a flattened event, a format with
attributes, indexes, calls, conversions or specs, or a field that is
missing) goes to Twisted's own formatter, so the text is the same either
way::

    twistd -n --logger mailframe.logs.text_observer mailframe

writes what ``twistd -n mailframe`` writes, on standard output.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from string import Formatter
from typing import Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
)

__all__ = ["format_classic", "text_observer"]

_PARSER = Formatter()
# The literal text before a field, and the field's name: an identifier,
# with no attribute, index or call in it (None after the last field).
_Piece = tuple[str, str | None]


@lru_cache(maxsize=512)
def _pieces(log_format: str) -> tuple[_Piece, ...] | None:
    """
    The literal text and the plain field name of each part of
    *log_format*; ``None`` when it has anything else.
    """
    pieces: list[_Piece] = []
    try:
        for literal, name, spec, conversion in _PARSER.parse(log_format):
            if name is not None and (spec or conversion or not name.isidentifier()):
                return None
            pieces.append((literal, name))
    except ValueError:
        return None
    return tuple(pieces)


class _Stamps:
    """
    The formatted time of the last whole second asked for. Events may come
    from threads: the second and its text are replaced together.
    """

    def __init__(self) -> None:
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if round((when - second) * 1e6) >= 1_000_000:
            # A time within half a microsecond of the next second: datetime
            # rounds it to that second, and so does Twisted's own text.
            second += 1
        last = self.last
        if second != last[0]:
            last = self.last = (second, formatTime(second))
        return last[1]


def _system(event: LogEvent) -> str | None:
    system = event.get("log_system")
    if system is not None:
        return system if isinstance(system, str) else None
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"


_stamp = _Stamps()


def format_classic(event: LogEvent) -> str | None:
    """
    *event* as :func:`twisted.logger.formatEventAsClassicLogText` writes
    it, ``"{time} [{system}] {text}\\n"``, with less work for the common
    events.
    """
    log_format = event.get("log_format")
    if (
        type(log_format) is not str
        or "log_failure" in event
        or "log_flattened" in event
    ):
        return formatEventAsClassicLogText(event, _stamp)
    pieces = _pieces(log_format)
    system = _system(event)
    if pieces is None or system is None:
        return formatEventAsClassicLogText(event, _stamp)
    parts: list[str] = []
    try:
        for literal, name in pieces:
            parts.append(literal)
            if name is not None:
                parts.append(format(event[name]))
    except Exception:
        # Twisted writes what it can of an event it cannot format.
        return formatEventAsClassicLogText(event, _stamp)
    text = "".join(parts)
    if not text:
        return None
    line = f"{_stamp(event.get('log_time'))} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def text_observer(out: Any = None) -> ILogObserver:
    """
    An observer writing :func:`format_classic` text to *out* (standard
    output by default): for ``twistd --logger mailframe.logs.text_observer``.
    """
    return FileLogObserver(sys.stdout if out is None else out, format_classic)

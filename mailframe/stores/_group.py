"""
Group commit: one durable operation for every request that came while the
last one ran.

The spool shares its ``syncfs`` calls, its directory ``fsync`` calls and
its removals this way, and the ``maildir`` transport its deliveries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Group", "Outcomes"]

_I = TypeVar("_I")

#: What one operation made of its items, in their order: for each, an
#: exception (that item failed on its own) or its result.
Outcomes = Sequence[object]


@attrs.define(eq=False)
class Group(Generic[_I]):
    """
    Requests :meth:`join` with an item and wait. If no operation is
    running, one starts at once with that item; the requests that arrive
    while it runs wait for the next one, which starts when it ends and
    takes them all.

    *run* makes one operation of a list of items. Its Deferred fires with
    ``None`` when every item succeeded with nothing to tell, or with the
    :data:`Outcomes` of the items; a failure fails them all.
    """

    _run: Callable[[list[_I]], Deferred[Any]]
    _waiting: list[tuple[_I, Deferred[Any]]] = attrs.Factory(list)
    _running: bool = False

    def join(self, item: _I) -> Deferred[Any]:
        """A Deferred of *item*'s outcome, once an operation has taken it."""
        d: Deferred[Any] = Deferred()
        self._waiting.append((item, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True

        def finished(result: Outcomes | Failure | None) -> None:
            self._running = False
            for index, (_, d) in enumerate(batch):
                if isinstance(result, Failure):
                    d.errback(result)
                elif result is None:
                    d.callback(None)
                elif isinstance(result[index], BaseException):
                    d.errback(Failure(result[index]))
                else:
                    d.callback(result[index])
            if self._waiting and not self._running:
                self._start()

        self._run([item for item, _ in batch]).addBoth(finished)

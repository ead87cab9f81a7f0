"""In-memory reference implementations of the contracts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from zope.interface import implementer

from mailframe.address import Mailbox, ReversePath, parse_reverse_path
from mailframe.envelope import (
    DeliveryStatus,
    Envelope,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.interfaces import (
    IComponentMaker,
    IDeliveryTransport,
    IPolicy,
    IResolver,
    IRouter,
)
from mailframe.reply import Reply
from mailframe.verdict import Verdict

__all__ = [
    "FakeComponentMaker",
    "MemoryResolver",
    "RecordingPolicy",
    "RecordingTransport",
    "StaticRouter",
    "envelope",
]


def envelope(sender: str = "sender@example.com", *recipients: str, **fields: Any) -> Envelope:
    """A quick :class:`~mailframe.envelope.Envelope`: ``envelope("a@b", "c@d")``."""
    path: ReversePath = parse_reverse_path(f"<{sender}>")
    rcpts = tuple(Mailbox.parse(r) for r in (recipients or ("rcpt@example.com",)))
    return Envelope(path, rcpts, **fields)


@implementer(IPolicy)
class RecordingPolicy:
    """
    A policy that records every call as ``(hook, args)`` in :attr:`calls` and
    answers from *verdicts*: a mapping of hook name to a
    :class:`~mailframe.verdict.Verdict`, a Deferred, or a callable taking the
    hook's arguments. Hooks not named continue.
    """

    def __init__(self, verdicts: Mapping[str, Any] | None = None) -> None:
        self.verdicts = dict(verdicts or {})
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _answer(self, hook: str, *args: Any) -> Any:
        self.calls.append((hook, args))
        answer = self.verdicts.get(hook, Verdict())
        return answer(*args) if callable(answer) else answer

    def connect(self, client: Any) -> Any:
        return self._answer("connect", client)

    def helo(self, client: Any, name: str) -> Any:
        return self._answer("helo", client, name)

    def mail(self, client: Any, sender: Any, parameters: Any) -> Any:
        return self._answer("mail", client, sender, parameters)

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
        return self._answer("rcpt", client, sender, recipient, parameters)

    def end_of_data(self, envelope: Any, headers: bytes, message: Any) -> Any:
        return self._answer("end_of_data", envelope, headers, message)


@implementer(IRouter)
class StaticRouter:
    """
    Routes by domain (in any case) from *routes*; other domains get
    *default*.
    """

    def __init__(self, routes: Mapping[str, Route], default: Route | None = None) -> None:
        self.routes = {d.lower(): r for d, r in routes.items()}
        self.default = default if default is not None else Route("smtp")

    def route(
        self, envelope: Any, recipient: Mailbox
    ) -> Deferred[list[tuple[Mailbox, Mailbox, Route]]]:
        route = self.routes.get(recipient.domain.lower(), self.default)
        return succeed([(recipient, recipient, route)])


@implementer(IDeliveryTransport)
class RecordingTransport:
    """
    A transport that records each delivery as ``(entry, recipients, route)``
    in :attr:`deliveries` and reports every recipient delivered, unless
    *outcome* (a callable from recipient to
    :class:`~mailframe.envelope.RecipientResult` or Deferred) says otherwise.
    """

    def __init__(self, outcome: Callable[[Mailbox], Any] | None = None) -> None:
        self.outcome = outcome
        self.deliveries: list[tuple[QueueEntry, list[tuple[Mailbox, Mailbox]], Route]] = []

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        self.deliveries.append((entry, list(recipients), route))
        results = []
        for recipient, original in recipients:
            if self.outcome is not None:
                results.append(maybeDeferred(self.outcome, recipient))
            else:
                results.append(succeed(RecipientResult(
                    recipient, DeliveryStatus.DELIVERED, Reply(250, "2.0.0", "OK"),
                    original=original)))
        return gatherResults(results)


@implementer(IResolver)
class MemoryResolver:
    """DNS answers from dictionaries; unknown names give empty lists."""

    def __init__(
        self,
        mx: Mapping[str, list[tuple[int, str]]] | None = None,
        addresses: Mapping[str, list[str]] | None = None,
        txt: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.mx = {k.lower(): v for k, v in (mx or {}).items()}
        self.addresses = {k.lower(): v for k, v in (addresses or {}).items()}
        self.txt = {k.lower(): v for k, v in (txt or {}).items()}

    def lookup_mx(self, domain: str) -> Deferred[list[tuple[int, str]]]:
        return succeed(list(self.mx.get(domain.lower(), [])))

    def lookup_address(self, host: str) -> Deferred[list[str]]:
        return succeed(list(self.addresses.get(host.lower(), [])))

    def lookup_txt(self, name: str) -> Deferred[list[str]]:
        return succeed(list(self.txt.get(name.lower(), [])))


@implementer(IComponentMaker)
@attrs.frozen
class FakeComponentMaker:
    """
    A component maker from a plain callable: ``build`` checks the settings'
    keys against *schema* and calls ``factory(settings, context)``.
    """

    kind: str
    name: str
    description: str
    factory: Callable[[Mapping[str, Any], Any], Any]
    schema: Mapping[str, tuple[type, Any, str]] = attrs.field(factory=dict)

    def build(self, settings: Mapping[str, Any], context: Any) -> Any:
        unknown = set(settings) - set(self.schema)
        if unknown:
            raise ValueError(f"unknown settings for {self.name}: {', '.join(sorted(unknown))}")
        return self.factory(settings, context)

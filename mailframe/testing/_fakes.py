"""In-memory reference implementations of the contracts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from zope.interface import implementer

from mailframe.address import Mailbox, ReversePath, parse_reverse_path
from mailframe.components import ComponentMaker, Setting
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
from mailframe.routing._dnserrors import (
    MAX_CNAME_CHAIN,
    DNSNameNotFound,
    DNSTemporaryError,
    ascii_name,
)
from mailframe.verdict import Verdict

__all__ = [
    "FakeComponentMaker",
    "MemoryResolver",
    "RecordingPolicy",
    "RecordingTransport",
    "StaticRouter",
    "envelope",
]

_T = TypeVar("_T")


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
    """
    DNS answers from dictionaries, failures included.

    Names are compared as :class:`~mailframe.interfaces.IResolver` says: in
    any case, with or without the trailing dot, non-ASCII labels by their
    A-labels. Each table may be changed after the resolver is made.

    :param mx: name to its ``(preference, host)`` records.
    :param addresses: name to its addresses (IPv6 then IPv4, as text).
    :param txt: name to its TXT strings.
    :param cnames: alias to target; every lookup follows the chain, as a
        resolver follows CNAME records, for at most
        :data:`MAX_CNAME_CHAIN` links.
    :param nxdomain: names that do not exist: every lookup of them, or of an
        alias leading to them, fails with
        :class:`~mailframe.routing._dnserrors.DNSNameNotFound`.
    :param failing: names, or ``(name, kind)`` pairs with *kind* one of
        ``"mx"``, ``"address"`` and ``"txt"``, whose lookups fail with
        :class:`~mailframe.routing._dnserrors.DNSTemporaryError`, as on
        SERVFAIL or a timeout.
    :param strict: what a name in none of the tables gives: ``[]`` by
        default (as if it existed without records of that type); with
        *strict*, :class:`~mailframe.routing._dnserrors.DNSNameNotFound`,
        as in the DNS.

    :ivar queries: every lookup as ``(kind, name)``, in the order made, with
        the name as it was compared (lower case, A-labels).
    """

    def __init__(
        self,
        mx: Mapping[str, Sequence[tuple[int, str]]] | None = None,
        addresses: Mapping[str, Sequence[str]] | None = None,
        txt: Mapping[str, Sequence[str]] | None = None,
        *,
        cnames: Mapping[str, str] | None = None,
        nxdomain: Iterable[str] = (),
        failing: Iterable[str | tuple[str, str]] = (),
        strict: bool = False,
    ) -> None:
        self.mx = {_name_key(k): list(v) for k, v in (mx or {}).items()}
        self.addresses = {_name_key(k): list(v) for k, v in (addresses or {}).items()}
        self.txt = {_name_key(k): list(v) for k, v in (txt or {}).items()}
        self.cnames = {_name_key(k): _name_key(v) for k, v in (cnames or {}).items()}
        self.nxdomain = {_name_key(name) for name in nxdomain}
        self.failing: set[str | tuple[str, str]] = {
            _name_key(item) if isinstance(item, str) else (_name_key(item[0]), item[1])
            for item in failing
        }
        self.strict = strict
        self.queries: list[tuple[str, str]] = []

    def lookup_mx(self, domain: str) -> Deferred[list[tuple[int, str]]]:
        return self._lookup("mx", self.mx, domain)

    def lookup_address(self, host: str) -> Deferred[list[str]]:
        return self._lookup("address", self.addresses, host)

    def lookup_txt(self, name: str) -> Deferred[list[str]]:
        return self._lookup("txt", self.txt, name)

    def _lookup(self, kind: str, table: Mapping[str, list[_T]], name: str) -> Deferred[list[_T]]:
        try:
            key = ascii_name(name)
        except ValueError:
            self.queries.append((kind, name))
            return fail(DNSNameNotFound(name))
        self.queries.append((kind, key))
        for _ in range(MAX_CNAME_CHAIN + 1):
            if key in self.failing or (key, kind) in self.failing:
                return fail(DNSTemporaryError(name, "SERVFAIL (scripted)"))
            if key in self.nxdomain:
                return fail(DNSNameNotFound(name))
            if key in table:
                return succeed(list(table[key]))
            if key not in self.cnames:
                break
            key = self.cnames[key]
        else:
            return fail(DNSTemporaryError(name, "CNAME chain too long"))
        if self.strict and not self._exists(key):
            return fail(DNSNameNotFound(name))
        return succeed([])

    def _exists(self, key: str) -> bool:
        return any(key in table for table in (self.mx, self.addresses, self.txt, self.cnames))


def _name_key(name: str) -> str:
    try:
        return ascii_name(name)
    except ValueError:
        return name.lower()


#: The setting type of each Python type that a ``(type, default,
#: description)`` schema entry of :class:`FakeComponentMaker` may name.
_SETTING_TYPES: Mapping[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "strings",
    tuple: "strings",
    dict: "table",
}


def _setting(value: Setting | tuple[Any, ...]) -> Setting:
    if isinstance(value, Setting):
        return value
    kind, default, description = value
    if kind not in _SETTING_TYPES:
        raise ValueError(f"no setting type for {kind!r}; give a Setting instead")
    return Setting(_SETTING_TYPES[kind], default, description)


def _schema(schema: Mapping[str, Setting | tuple[Any, ...]]) -> Mapping[str, Setting]:
    return {key: _setting(value) for key, value in schema.items()}


@implementer(IComponentMaker)
@attrs.frozen
class FakeComponentMaker:
    """
    A component maker from a plain callable, for tests: it builds as a
    :class:`~mailframe.components.ComponentMaker` of the same fields does,
    so ``build`` checks the settings against *schema* (an unknown key, a
    missing required one or a value of the wrong type is a
    :class:`~mailframe.components.SettingError`), fills in the defaults,
    and calls ``factory(settings, context)``.

    :ivar schema: setting name to a :class:`~mailframe.components.Setting`,
        or, for short, to a ``(type, default, description)`` tuple whose
        type is ``str``, ``int``, ``float``, ``bool``, ``list`` (of
        strings) or ``dict``.
    """

    kind: str
    name: str
    description: str
    factory: Callable[[Mapping[str, Any], Any], Any]
    schema: Mapping[str, Setting] = attrs.field(factory=dict, converter=_schema)
    durable: bool = True
    #: The :class:`~mailframe.components.ComponentMaker` that builds; made
    #: with the maker, so that a bad kind or name fails at once.
    maker: ComponentMaker = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        maker = ComponentMaker(self.kind, self.name, self.description, self.factory,
                               self.schema, self.durable)
        object.__setattr__(self, "maker", maker)

    def check(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The checked settings, with the defaults of those not given."""
        return self.maker.check(settings)

    def build(self, settings: Mapping[str, Any], context: Any) -> Any:
        """Check *settings* and call the factory with them and *context*."""
        return self.maker.build(settings, context)

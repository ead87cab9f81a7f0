"""
The ``table`` router: a static map from addresses and domains to routes, as
Postfix's transport(5) and virtual(5) maps are.

.. rubric:: Keys

``user@example.com``
    one address. The local part is compared in any case (folded with
    ``str.lower``), as local mailboxes are.
``example.com``
    every address of that domain, and not of its subdomains.
``.example.com``
    every address of any subdomain of ``example.com`` (``a.example.com``,
    ``b.a.example.com``), and not of ``example.com`` itself.
``*``
    every address that no other key matches.

Domains are compared in any case, a U-label by its A-label. The first key
that matches decides, in this order: the address, its domain, the
wildcards of its parent domains from the nearest (``.a.example.com``
before ``.example.com``), then ``*``. An address that no key matches is
not decided by the table: :meth:`TableRouter.route` answers an empty list,
and a :class:`~mailframe.routing.chain.ChainRouter` asks its next router.
So is ``<postmaster>`` written without a domain (RFC 5321 §4.1.1.3).

.. rubric:: Route specs

``smtp`` (or ``smtp:``)
    over SMTP to the MX hosts of the recipient's domain:
    ``Route("smtp", {"domain": domain})``.
``smtp:host``, ``smtp:host:port``, ``smtp:[host]:port``
    over SMTP to that next hop, port 25 by default:
    ``Route("smtp", {"nexthop": "host:port"})``. Unlike Postfix, no MX
    lookup is made for a next hop with or without brackets.
``lmtp:ENDPOINT``
    over LMTP to a Twisted client endpoint such as
    ``unix:path=/run/dovecot/lmtp``: ``Route("lmtp", {"endpoint": ENDPOINT})``.
``maildir:DIRECTORY``
    into a Maildir: ``Route("maildir", {"directory": ...})``. For an address
    key the directory is the Maildir; for any other key, one Maildir per
    local part is under it, ``DIRECTORY/<local-part>``, with the local part
    folded and checked by :func:`~mailframe.policies.users.local_mailbox_name`
    (a local part that cannot name a directory is refused with
    ``550 5.1.1``).
``pipe:COMMAND``
    to a command: ``Route("pipe", {"command": COMMAND})``.
``reject``, ``reject:CODE [STATUS] [TEXT]``
    refused, with ``550 5.1.1`` by default, or with the 5xx reply given
    (status ``5.0.0`` when none is given). Refused at RCPT, since the table
    is an :class:`~mailframe.interfaces.IRecipientValidator`.
``alias:ADDRESS,ADDRESS...``
    to other addresses, each routed through the table again (see Aliases).
``NAME:ARGS``
    any other name is a third-party delivery transport:
    ``Route(NAME, {"args": ARGS})``.

.. rubric:: Aliases

An alias is expanded recursively; every address it ends in is delivered
with the envelope's recipient kept as the original, for delivery status
notifications (RFC 3461 ORCPT). An address that the expansion reaches
twice by different branches (in any case of its local part) is delivered
once.

- An alias that names the address being expanded (``alice@example.com
  alias:alice@example.com,bob@example.org``, "keep a copy") routes it by
  the keys after the one that expanded it: for an address key, by its
  domain, wildcards or ``*``.
- An alias that comes back to any other address of its own branch is a
  routing loop: that address is refused with ``550 5.4.6``.
- Expansion deeper than :data:`MAX_ALIAS_DEPTH` is refused with
  ``550 5.4.6``; an expansion producing more than
  :data:`MAX_ALIAS_ADDRESSES` addresses refuses the recipient with
  ``550 5.5.3``.
- An alias target that no key of the table matches goes to the *fallback*
  router (such as ``local``) when there is one; otherwise it is refused
  with ``550 5.4.4``.

At RCPT, a recipient is refused when any address of its expansion would
be refused, with that address's reply: by the table, or by the fallback's
own :class:`~mailframe.interfaces.IRecipientValidator`. Nothing a table
could refuse is accepted and bounced later.

.. rubric:: The file

One entry a line: the key, white space, and the route spec, which runs to
the end of the line (so a command may hold spaces). Blank lines and lines
whose first non-blank character is ``#`` are skipped. The file is UTF-8.
A key given twice, in the file or in the file and the ``map`` setting,
is an error. Errors name the file and the line.

Every route or validation checks, at most once every
:data:`RELOAD_CHECK_INTERVAL` seconds, whether the file changed, and
reads it again if so; :meth:`TableRouter.reload` reads it again at once
(on SIGHUP). When the new file has an error, the error is logged and the
table in use stays as it was.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import AddressError, Mailbox, is_domain
from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.envelope import Route
from mailframe.interfaces import IRecipientValidator, IRouter
from mailframe.policies._domains import domain_key
from mailframe.policies.users import local_mailbox_name
from mailframe.reply import Reply
from mailframe.routing.chain import IPartialRouter, no_route
from mailframe.routing.routers import nexthop

__all__ = [
    "MAX_ALIAS_ADDRESSES",
    "MAX_ALIAS_DEPTH",
    "RELOAD_CHECK_INTERVAL",
    "RouteSpec",
    "TableError",
    "TableRouter",
    "parse_route_spec",
    "table_maker",
]

RouteTriple = tuple[Mailbox, Mailbox, Route]

#: How many aliases may follow one another in one expansion (an alias
#: whose target is an alias makes two); one more is refused as a loop is,
#: with ``550 5.4.6``. Sendmail's ``MaxAliasRecursion`` is 10 too.
MAX_ALIAS_DEPTH = 10

#: How many addresses the expansion of one recipient may produce, counted
#: at every level: Postfix's ``virtual_alias_expansion_limit``. It also
#: bounds the work of aliases that fan out at every level.
MAX_ALIAS_ADDRESSES = 1000

#: Seconds between two checks of whether the table's file changed.
RELOAD_CHECK_INTERVAL = 1.0

#: The transport name of refused routes; a refusal is never delivered.
REJECT = "reject"

_TRANSPORT_NAME = re.compile(r"\A[a-z0-9][a-z0-9_.-]*\Z")
# reject:CODE [STATUS] [TEXT]: a reply code (RFC 5321 §4.2), an enhanced
# status code (RFC 3463 §2) and text.
_REJECT_REPLY = re.compile(
    r"\A([0-9]{3})(?:\s+([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}))?(?:\s+(.*))?\Z")
_BUILT_IN = ("smtp", "lmtp", "maildir", "pipe", "reject", "alias")


class TableError(ValueError):
    """
    The table's settings or file have an error.

    :ivar setting: ``"map"`` or ``"file"``: the setting whose value is
        wrong.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


@attrs.frozen
class RouteSpec:
    """
    One route spec of a table, parsed.

    :ivar text: the spec as written.
    :ivar transport: the transport to route to; ``None`` for ``reject`` and
        ``alias``.
    :ivar args: the route's arguments; for ``smtp`` without a next hop,
        empty (the recipient's domain is added).
    :ivar per_local_part: for ``maildir``: the directory holds one Maildir
        per local part when the key is not an address.
    :ivar reject: for ``reject``: the reply, or ``None`` for the default.
    :ivar targets: for ``alias``: the addresses.
    """

    text: str
    transport: str | None
    args: tuple[tuple[str, str], ...] = ()
    per_local_part: bool = False
    reject: Reply | None = None
    targets: tuple[Mailbox, ...] = ()

    @property
    def is_alias(self) -> bool:
        """``True`` for an ``alias:`` spec."""
        return bool(self.targets)

    def route_for(self, recipient: Mailbox, by_address: bool) -> Route:
        """
        The route of *recipient*; not for aliases.

        :param by_address: whether an address key matched it, rather than a
            domain, a wildcard or ``*``.
        """
        if self.transport is None:
            reply = self.reject or Reply(
                550, "5.1.1", f"<{recipient}>: Recipient address rejected")
            return Route(REJECT, reject=reply)
        if self.transport == "smtp" and not self.args:
            return Route("smtp", {"domain": domain_key(recipient.domain)})
        if self.per_local_part and not by_address:
            name = local_mailbox_name(recipient.local_part)
            if name is None:
                reply = Reply(550, "5.1.1", f"<{recipient}>: bad mailbox name")
                return Route(REJECT, reject=reply)
            directory = os.path.join(dict(self.args)["directory"], name)
            return Route("maildir", {"directory": directory})
        return Route(self.transport, self.args)


def parse_route_spec(text: str) -> RouteSpec:
    """
    Parse one route spec; see the module's description.

    :raises ValueError: saying what is wrong.
    """
    spec = text.strip()
    name, colon, rest = spec.partition(":")
    name = name.lower()
    rest = rest.strip()
    if name == "smtp":
        if not rest:
            return RouteSpec(spec, "smtp")
        return RouteSpec(spec, "smtp", (("nexthop", nexthop(rest)),))
    if name == "reject":
        if not rest:
            return RouteSpec(spec, None)
        return RouteSpec(spec, None, reject=_reject_reply(rest))
    if not colon:
        known = ", ".join(_BUILT_IN)
        raise ValueError(f"{spec!r} is not a route spec: one of {known}, or NAME:ARGS for a"
                         " third-party transport")
    if name == "alias":
        return RouteSpec(spec, None, targets=_targets(rest))
    if not rest and name in ("lmtp", "maildir", "pipe"):
        what = {"lmtp": "an endpoint", "maildir": "a directory", "pipe": "a command"}[name]
        raise ValueError(f"{spec!r} needs {what} after {name}:")
    if name == "lmtp":
        return RouteSpec(spec, "lmtp", (("endpoint", rest),))
    if name == "maildir":
        return RouteSpec(spec, "maildir", (("directory", rest),), per_local_part=True)
    if name == "pipe":
        return RouteSpec(spec, "pipe", (("command", rest),))
    if not _TRANSPORT_NAME.match(name):
        raise ValueError(f"{name!r} is not a transport name: lower-case letters, digits,"
                         " '-', '_' and '.'")
    return RouteSpec(spec, name, (("args", rest),))


def _reject_reply(text: str) -> Reply:
    match = _REJECT_REPLY.match(text)
    if match is None or not match.group(1).startswith("5"):
        raise ValueError(f"reject:{text} is not reject:CODE [STATUS] [TEXT] with a 5xx code")
    code, status, words = match.groups()
    if status is not None and not status.startswith("5."):
        raise ValueError(f"reject:{text}: the status of a 5xx reply is 5.x.x")
    return Reply(int(code), status or "5.0.0", words or "Recipient address rejected")


def _targets(text: str) -> tuple[Mailbox, ...]:
    targets: list[Mailbox] = []
    seen: set[Mailbox] = set()
    for item in text.split(","):
        address = item.strip()
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        if not address:
            raise ValueError(f"alias:{text} has an empty address")
        try:
            mailbox = Mailbox.parse(address, utf8=True)
        except AddressError as error:
            raise ValueError(f"alias target {address!r}: {error}") from None
        if not mailbox.domain:
            raise ValueError(f"alias target {address!r} needs a domain")
        if mailbox not in seen:
            seen.add(mailbox)
            targets.append(mailbox)
    return tuple(targets)


@attrs.frozen
class _Key:
    """A parsed key: its kind and its folded form."""

    kind: str  # "address", "domain", "wildcard" or "default"
    folded: str


def _parse_key(text: str) -> _Key:
    if text == "*":
        return _Key("default", "*")
    if text.startswith("."):
        domain = text[1:]
        if not is_domain(domain, utf8=True):
            raise ValueError(f"{text!r}: a wildcard is a dot and a domain, such as .example.com")
        return _Key("wildcard", _domain(domain))
    if "@" in text:
        local, _, domain = text.rpartition("@")
        if domain.startswith("[") or "[" in local:
            local, _, domain = text.partition("@[")
            domain = "[" + domain
        # The local part is checked on a one-label domain, and the domain,
        # which many keys share, once.
        try:
            mailbox = Mailbox.parse(f"{local}@x", utf8=True)
        except AddressError as error:
            raise ValueError(f"{text!r} is not an address: {error}") from None
        if not _is_domain(domain):
            raise ValueError(f"{text!r} is not an address: bad domain")
        return _Key("address", f"{mailbox.local_part.lower()}@{_domain(domain)}")
    if not _is_domain(text):
        raise ValueError(f"{text!r} is not a key: an address, a domain, .domain or *")
    return _Key("domain", _domain(text))


@functools.lru_cache(maxsize=4096)
def _is_domain(text: str) -> bool:
    """A domain or an address literal, as a mailbox may have."""
    try:
        return bool(Mailbox.parse(f"x@{text}", utf8=True).domain)
    except AddressError:
        return False


@functools.lru_cache(maxsize=4096)
def _domain(text: str) -> str:
    return domain_key(text)


def _fold(mailbox: Mailbox) -> str:
    return f"{mailbox.local_part.lower()}@{_domain(mailbox.domain)}"


@attrs.frozen
class _Entry:
    """One entry, with where it was written, for errors."""

    key: _Key
    spec: RouteSpec
    setting: str  # "map" or "file"
    origin: str


class _Table:
    """The entries of a table, by kind, and the lookup in precedence order."""

    def __init__(self, entries: Iterable[_Entry]) -> None:
        self.entries: dict[_Key, _Entry] = {}
        for entry in entries:
            first = self.entries.get(entry.key)
            if first is not None:
                raise TableError(
                    entry.setting,
                    f"{entry.origin}: key {entry.key.folded!r} is also in {first.origin}")
            self.entries[entry.key] = entry

    def candidates(self, recipient: Mailbox) -> list[_Key]:
        """The keys that could match *recipient*, in precedence order."""
        domain = domain_key(recipient.domain)
        keys = [_Key("address", _fold(recipient)), _Key("domain", domain)]
        if not domain.startswith("["):
            labels = domain.split(".")
            keys.extend(_Key("wildcard", ".".join(labels[i:])) for i in range(1, len(labels)))
        keys.append(_Key("default", "*"))
        return keys

    def lookup(self, recipient: Mailbox, after: _Key | None = None) -> _Entry | None:
        """The entry that decides *recipient*, skipping keys up to *after*."""
        keys = self.candidates(recipient)
        if after is not None:
            keys = keys[keys.index(after) + 1 :] if after in keys else []
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None:
                return entry
        return None


class _TooMany(Exception):
    pass


_NEVER = object()


# A leaf of an expansion: an address and its route, or None when the table
# does not decide it (it goes to the fallback).
_Leaf = tuple[Mailbox, Route | None]


def _loop(address: Mailbox) -> Reply:
    # RFC 3463 §3.5: X.4.6 "Routing loop detected"; 550, since RCPT may
    # not answer 554 (RFC 5321 §4.3.2).
    return Reply(550, "5.4.6", f"<{address}>: Routing loop in alias expansion")


def _expand(table: _Table, recipient: Mailbox) -> list[_Leaf] | None:
    """
    The addresses *recipient* ends in, with their routes; ``None`` when the
    table does not decide it.
    """
    first = table.lookup(recipient)
    if first is None:
        return None
    leaves: list[_Leaf] = []
    produced = 0

    def visit(address: Mailbox, entry: _Entry, branch: frozenset[str], depth: int) -> None:
        nonlocal produced
        if not entry.spec.is_alias:
            by_address = entry.key.kind == "address"
            leaves.append((address, entry.spec.route_for(address, by_address)))
            return
        if depth >= MAX_ALIAS_DEPTH:
            reply = Reply(550, "5.4.6", f"<{address}>: Aliases nested too deeply"
                          f" (more than {MAX_ALIAS_DEPTH})")
            leaves.append((address, Route(REJECT, reject=reply)))
            return
        own = _fold(address)
        for target in entry.spec.targets:
            produced += 1
            if produced > MAX_ALIAS_ADDRESSES:
                raise _TooMany()
            folded = _fold(target)
            if folded == own:
                found = table.lookup(target, after=entry.key)
            elif folded in branch:
                leaves.append((target, Route(REJECT, reject=_loop(target))))
                continue
            else:
                found = table.lookup(target)
            if found is None:
                leaves.append((target, None))
                continue
            visit(target, found, branch | {folded}, depth + 1)

    try:
        visit(recipient, first, frozenset({_fold(recipient)}), 0)
    except _TooMany:
        reply = Reply(550, "5.5.3", f"<{recipient}>: Alias expands to more than"
                      f" {MAX_ALIAS_ADDRESSES} addresses")
        return [(recipient, Route(REJECT, reject=reply))]
    # Once each, in any case of the local part: the first spelling is kept.
    unique: dict[tuple[str, Route | None], _Leaf] = {}
    for address, route in leaves:
        unique.setdefault((_fold(address), route), (address, route))
    return list(unique.values())


def _read_file(path: str) -> list[_Entry]:
    """The entries of the file at *path*; :class:`TableError` names the line."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise TableError("file", f"{path}: {error.strerror or error}") from None
    entries = []
    for number, raw in enumerate(data.splitlines(), 1):
        origin = f"{path}, line {number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TableError("file", f"{origin}: not UTF-8") from None
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise TableError("file", f"{origin}: {line!r} has a key and no route spec")
        try:
            entries.append(
                _Entry(_parse_key(parts[0]), parse_route_spec(parts[1]), "file", origin))
        except ValueError as error:
            raise TableError("file", f"{origin}: {error}") from None
    return entries


def _map_entries(mapping: Mapping[str, Any]) -> list[_Entry]:
    entries = []
    for key, value in mapping.items():
        origin = f"map key {key!r}"
        if not isinstance(value, str):
            raise TableError("map", f"{origin}: a route spec is a string (quote a key that"
                             ' holds dots: "example.com" = "smtp")')
        try:
            entries.append(
                _Entry(_parse_key(key.strip()), parse_route_spec(value), "map", origin))
        except ValueError as error:
            raise TableError("map", f"{origin}: {error}") from None
    return entries


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


@implementer(IRouter, IRecipientValidator, IPartialRouter)
class TableRouter:
    """
    Routes the addresses and domains of a static table; see the module's
    description for the keys, the route specs and aliases.

    :param mapping: key to route spec, such as the ``map`` setting.
    :param path: a file of entries, read now and again when it changes.
    :param clock: what tells the time between two checks of the file.
    :param fallback: the router of alias targets that no key matches.
    :param log: where reload errors go.
    :raises TableError: naming the key, or the file and line, of an error.
    """

    def __init__(
        self,
        mapping: Mapping[str, Any] | None = None,
        path: str | None = None,
        *,
        clock: IReactorTime | None = None,
        fallback: Any = None,
        log: Logger | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.fallback = fallback
        self.log = log if log is not None else Logger()
        self._mapped = _map_entries(mapping or {})
        self._stamp = _stamp(path) if path is not None else None
        self._table = self._load()
        # The stamp of a file that failed to load, not tried again until
        # it changes.
        self._refused_stamp: object = _NEVER
        self._checked = clock.seconds() if clock is not None else 0.0

    def _load(self) -> _Table:
        entries = list(self._mapped)
        if self.path is not None:
            entries.extend(_read_file(self.path))
        return _Table(entries)

    def reload(self) -> bool:
        """
        Read the file again now. On an error, log it and keep the table in
        use.

        :return: whether the new table is in use.
        """
        if self.path is None:
            return True
        stamp = _stamp(self.path)
        try:
            table = self._load()
        except TableError as error:
            self._refused_stamp = stamp
            self.log.error("Routing table {path} not reloaded, the old one stays: {error}",
                           path=self.path, error=str(error))
            return False
        self._table, self._stamp, self._refused_stamp = table, stamp, _NEVER
        self.log.info("Routing table {path} reloaded: {count} entries",
                      path=self.path, count=len(table.entries))
        return True

    def _current(self) -> _Table:
        """The table, after reading the file again if it changed."""
        if self.path is not None and self.clock is not None:
            now = self.clock.seconds()
            if now - self._checked >= RELOAD_CHECK_INTERVAL or now < self._checked:
                self._checked = now
                stamp = _stamp(self.path)
                if stamp not in (self._stamp, self._refused_stamp):
                    self.reload()
        return self._table

    def decides(self, recipient: Mailbox) -> bool:
        """Whether a key of the table matches *recipient*."""
        return bool(recipient.domain) and self._current().lookup(recipient) is not None

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        return Deferred.fromCoroutine(self._route(envelope, recipient))

    async def _route(self, envelope: Any, recipient: Mailbox) -> list[RouteTriple]:
        if not recipient.domain:
            return []
        leaves = _expand(self._current(), recipient)
        if leaves is None:
            return []
        routed: list[RouteTriple] = []
        for address, route in leaves:
            if route is not None:
                routed.append((address, recipient, route))
                continue
            found: Sequence[RouteTriple] = []
            if self.fallback is not None:
                found = await maybeDeferred(self.fallback.route, envelope, address)
            if found:
                routed.extend((final, recipient, where) for final, _, where in found)
            else:
                routed.append((address, recipient, Route(REJECT, reject=no_route(address))))
        return routed

    def validate(self, recipient: Mailbox) -> Deferred[Reply | None]:
        """
        The refusal of *recipient*: the reply of the first address of its
        expansion that the table, or the fallback's validator, refuses;
        ``None`` when there is none, or the table does not decide it.
        """
        return Deferred.fromCoroutine(self._validate(recipient))

    async def _validate(self, recipient: Mailbox) -> Reply | None:
        if not recipient.domain:
            return None
        leaves = _expand(self._current(), recipient)
        for address, route in leaves or ():
            if route is not None:
                if route.reject is not None:
                    return route.reject
                continue
            reply = await self._validate_fallback(address)
            if reply is not None:
                return reply
        return None

    async def _validate_fallback(self, address: Mailbox) -> Reply | None:
        fallback = self.fallback
        if fallback is None:
            return no_route(address)
        if IPartialRouter.providedBy(fallback):
            decides: bool = await maybeDeferred(fallback.decides, address)
            if not decides:
                return no_route(address)
        if IRecipientValidator.providedBy(fallback):
            reply: Reply | None = await maybeDeferred(fallback.validate, address)
            return reply
        return None


def _build_table(settings: Mapping[str, Any], context: Any) -> TableRouter:
    if not settings["map"] and settings["file"] is None:
        raise SettingError("map", "give the entries in map, in a file, or both")
    fallback = None
    if settings["fallback"] is not None:
        fallback = context.component("router", settings["fallback"])
    try:
        return TableRouter(settings["map"], settings["file"], clock=context.reactor,
                           fallback=fallback, log=context.log)
    except TableError as error:
        raise SettingError(error.setting, str(error)) from None


#: The ``table`` router plugin: addresses and domains to routes, from the
#: ``map`` setting and a file.
table_maker = ComponentMaker(
    kind="router",
    name="table",
    description="Addresses and domains to routes, from a static map or a file (transport maps)",
    factory=_build_table,
    schema={
        "map": Setting(
            "table", {},
            'Key to route spec, such as "example.com" = "smtp:[relay.example]:587".',
        ),
        "file": Setting(
            "path", None,
            "A file of 'key route-spec' lines, read again when it changes or on SIGHUP.",
        ),
        "fallback": Setting(
            "string", None,
            'The router (a plugin name such as "local") of alias targets that no key'
            " matches; without one they are refused.",
        ),
    },
)

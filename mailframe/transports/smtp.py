"""
Delivery over SMTP: to the MX hosts of a domain (RFC 5321 §5.1), or to a
smarthost.

:class:`SMTPTransport` is the :class:`~mailframe.interfaces.IDeliveryTransport`
named by routes such as ``Route("smtp", {"domain": "example.org"})`` or
``Route("smtp", {"nexthop": "relay.example.net:587"})``. Each session is an
:class:`~mailframe.protocols.client.SMTPClientProtocol`; the transport finds
the hosts, tries their addresses in order, keeps connections for reuse and
limits how many it opens.

The route's arguments:

``nexthop``
    ``host:port``, ``host``, ``[address]:port`` or ``[address]``: a
    smarthost. No MX lookup is made; a host name is looked up for its
    addresses (IPv6, then IPv4). The port is 25 when none is given. A
    failed lookup of a smarthost is transient: a mistake in its name must
    not bounce mail. The credentials of the settings are sent to
    smarthosts only, never to MX hosts.
``domain``
    the domain whose MX hosts take the mail (:func:`~mailframe.routing.mx.resolve_mx`,
    at :attr:`SMTPTransportSettings.port`). An address literal such as
    ``[192.0.2.1]`` is connected to directly. Without ``nexthop`` or
    ``domain``, each recipient goes to the MX hosts of its own domain.
``tls``
    the TLS policy for this route (see
    :data:`~mailframe.protocols.client.TLS_POLICIES`), over the settings.

What a delivery does:

1. The destination's hosts are found. MX failures become results: a null
   MX (``556 5.1.10``), a routing loop (``554 5.4.6``), a domain without
   mail host (``550 5.4.4``) or that does not exist (``550 5.1.2``) are
   permanent; DNS failures (``451 4.4.3``) and MX hosts without usable
   address (``451 4.4.4``) are transient.
2. An idle connection to the destination is reused if there is one;
   otherwise, within the limit of connections per destination, a new one is
   opened: the addresses are tried in order until one accepts the
   connection and greets with ``220``. A refused connection, a ``4xx`` or
   ``5xx`` greeting, a failed session setup, or a timeout moves on to the
   next address; under the ``may`` policy a failed TLS handshake is first
   retried in plaintext on a new connection to the same address. When the
   limit is reached, the delivery waits for a connection, in order.
3. The recipients go in transactions of at most
   :attr:`SMTPTransportSettings.recipients_per_transaction`, one after the
   other on the connection.
4. The connection then waits, idle, for the next message to the same
   destination, for :attr:`SMTPTransportSettings.idle_timeout` seconds, and
   is closed with QUIT after that, or after
   :attr:`SMTPTransportSettings.messages_per_connection` transactions.

A destination, for reuse and for the connection limit, is the route's
next hop (the domain, or the smarthost and its port) with the TLS policy
and the credentials: two domains that share MX hosts use connections of
their own.

The message sent is the stored message, which starts with our own
``Received:`` field, with the fields that policies added
(:attr:`Envelope.added_headers <mailframe.envelope.Envelope.added_headers>`)
before it. No other header field is added or changed.

To a next hop that offers DSN, the envelope's DSN parameters go on
(RFC 3461 §5.2.2): ``RET`` and ``ENVID`` on MAIL, and on each RCPT the
``NOTIFY`` and ``ORCPT`` that the envelope's recipient gave. When it gave
no ORCPT and the router changed the address, ``ORCPT`` names the
envelope's recipient (RFC 3461 §5.2.1; see
:func:`~mailframe.address.original_recipient`). Delivered recipients are
:attr:`~mailframe.envelope.Handoff.PASSED_ON` then, and
:attr:`~mailframe.envelope.Handoff.RELAYED` to a next hop without DSN.

Call :meth:`SMTPTransport.stop` when the service stops: it closes the idle
connections at once, and the others once their transaction is done.
"""

from __future__ import annotations

import ipaddress
import random as _random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import attrs
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from mailframe.address import Mailbox, is_domain
from mailframe.components import ComponentMaker
from mailframe.core import ClientLimits
from mailframe.envelope import (
    DeliveryStatus,
    DSNOptions,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.errors import MailframeError, PermanentDeliveryError, TransientDeliveryError
from mailframe.interfaces import IDeliveryTransport, IQueueStore, IResolver
from mailframe.protocols.client import (
    TLS_POLICIES,
    ClientSettings,
    ConnectionUnusable,
    SessionFailed,
    SessionRejected,
    SMTPClientProtocol,
    TLSFailed,
    TLSPolicy,
    Transaction,
)
from mailframe.reply import Reply
from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError, ascii_name
from mailframe.routing.mx import DEFAULT_MAX_ADDRESSES, MXHost, resolve_mx
from mailframe.transports._outgoing import (
    BAD_ROUTE,
    SHUTTING_DOWN,
    OutgoingMessage,
    dsn_options,
    fail_all,
    open_outgoing,
    status_of,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "SMTPTransport",
    "SMTPTransportSettings",
    "load_trust_root",
]

#: The SMTP port that IANA assigned: that of MX hosts, and of a smarthost
#: whose port is not given.
SMTP_PORT = 25
#: Seconds an idle connection is kept for the next message to the same
#: destination. Long enough to carry the messages of one queue run and the
#: next poll (5 s) of the queue runner; short enough to hold few of the
#: remote server's resources, which must wait at least 5 minutes for a
#: command (RFC 5321 §4.5.3.2.7) and would otherwise keep the connection
#: open that long.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds to wait for a TCP connection to be accepted, as Postfix's
#: ``smtp_connect_timeout``.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Seconds early that an idle connection may be closed rather than its
#: timer scheduled again for what is left.
_TIMER_SLACK = 1e-6
#: The DSN options of a recipient that gave none.
_NO_DSN = DSNOptions()
#: Routes and domains whose destinations are remembered; past this many,
#: the memory is cleared and fills again.
_DESTINATION_CACHE = 4096

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((key.lower().rstrip("."), policy) for key, policy in items))


def _check_policies(
    instance: object, attribute: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    for key, policy in value:
        if policy not in TLS_POLICIES:
            raise ValueError(f"TLS policy {policy!r} for {key} is not one of"
                             f" {', '.join(TLS_POLICIES)}")


def _check_policy(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in TLS_POLICIES:
        raise ValueError(f"TLS policy {value!r} is not one of {', '.join(TLS_POLICIES)}")


def _check_address(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        ipaddress.ip_address(value)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _check_helo(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    ClientSettings(helo=value)


@attrs.frozen
class SMTPTransportSettings:
    """
    The settings of :class:`SMTPTransport`.

    :ivar helo_name: our host name, said in EHLO/HELO; also one of our
        names for the MX rule of RFC 5321 §5.1.
    :ivar source_address: the local address that connections to addresses
        of its family are made from; ``None`` for the system's choice.
    :ivar source_address6: the local IPv6 address, when
        :attr:`source_address` is an IPv4 one.
    :ivar port: the port of MX hosts (RFC 5321 §5.1 says 25; tests use
        others).
    :ivar tls: the TLS policy of destinations that
        :attr:`tls_policies` does not name: ``"none"``, ``"may"``
        (opportunistic, RFC 7435), ``"encrypt"`` or ``"verify"``.
    :ivar tls_policies: TLS policies by destination: a domain (of MX
        delivery), or a smarthost as written in the route (``host:port``)
        or its host alone, in any case. A route's own ``tls`` argument
        comes first.
    :ivar trust_roots: PEM files of the certificate authorities that
        ``verify`` trusts; empty for the platform's.
    :ivar credentials: ``(username, password)`` for smarthosts (RFC 4954);
        never sent to MX hosts.
    :ivar auth_without_tls: send the credentials on connections without
        TLS.
    :ivar chunking: send with BDAT when the server offers CHUNKING
        (RFC 3030).
    :ivar recipients_per_transaction: recipients in one transaction, as
        Postfix's ``smtp_destination_recipient_limit``; RFC 5321 §4.5.3.1.8
        has servers take at least 100.
    :ivar connections_per_destination: connections open at once to one
        destination; more deliveries wait for one.
    :ivar messages_per_connection: transactions on one connection before
        it is closed.
    :ivar idle_timeout: seconds an idle connection is kept for reuse
        (:data:`DEFAULT_IDLE_TIMEOUT`); 0 closes each connection after its
        delivery.
    :ivar connect_timeout: seconds to wait for a TCP connection.
    :ivar our_names: more names of ours for the MX rule, beside
        :attr:`helo_name`.
    :ivar max_addresses: addresses tried in one delivery attempt
        (RFC 5321 §5.1 asks for a limit).
    :ivar limits: the client's limits and timeouts (RFC 5321 §4.5.3.2).
    """

    helo_name: str = attrs.field(validator=_check_helo)
    source_address: str | None = attrs.field(default=None, validator=_check_address)
    source_address6: str | None = attrs.field(default=None, validator=_check_address)
    port: int = attrs.field(default=SMTP_PORT, validator=[attrs.validators.ge(1),
                                                          attrs.validators.le(65535)])
    tls: TLSPolicy = attrs.field(default="may", validator=_check_policy)
    tls_policies: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs, validator=_check_policies
    )
    trust_roots: tuple[str, ...] = attrs.field(default=(), converter=_names)
    credentials: tuple[str, str] | None = attrs.field(default=None, repr=False)
    auth_without_tls: bool = False
    chunking: bool = False
    recipients_per_transaction: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    connections_per_destination: int = attrs.field(default=20,
                                                   validator=attrs.validators.ge(1))
    messages_per_connection: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    idle_timeout: float = attrs.field(default=DEFAULT_IDLE_TIMEOUT,
                                      validator=attrs.validators.ge(0))
    connect_timeout: float = attrs.field(default=DEFAULT_CONNECT_TIMEOUT,
                                         validator=attrs.validators.gt(0))
    our_names: tuple[str, ...] = attrs.field(default=(), converter=_names)
    max_addresses: int = attrs.field(default=DEFAULT_MAX_ADDRESSES,
                                     validator=attrs.validators.ge(1))
    limits: ClientLimits = attrs.Factory(ClientLimits)

    def __attrs_post_init__(self) -> None:
        if self.credentials is not None and (len(self.credentials) != 2
                                             or not self.credentials[0]):
            raise ValueError("credentials are a (username, password) pair with a username")


def load_trust_root(paths: Sequence[str]) -> Any:
    """
    A trust root of the certificates in the PEM files *paths*.

    :raises ValueError: when a file cannot be read or holds no certificate.
    """
    certificates: list[ssl.Certificate] = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
        found = _PEM_CERTIFICATE.findall(data)
        if not found:
            raise ValueError(f"{path} holds no PEM certificate")
        try:
            certificates.extend(ssl.Certificate.loadPEM(pem) for pem in found)
        except Exception as error:
            raise ValueError(f"{path} holds a certificate that cannot be read: {error}") from None
    return ssl.trustRootFromCertificates(certificates)


# -- destinations ------------------------------------------------------------------


@attrs.frozen
class _Destination:
    """Where connections go, and how: the key of reuse and of the limit."""

    kind: str  # "nexthop", "mx" or "literal"
    name: str
    port: int
    tls: TLSPolicy
    credentials: tuple[str, str] | None = attrs.field(repr=False)

    def __str__(self) -> str:
        return f"{self.name}:{self.port}" if self.kind == "nexthop" else self.name


class _BadRoute(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reply = Reply(451, BAD_ROUTE, f"Bad SMTP route: {reason}")


def _split_nexthop(text: str) -> tuple[str, int | None]:
    """``host:port``, ``[literal]:port`` or either without the port."""
    host, port = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _BadRoute(f"{text!r} has no closing bracket")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _BadRoute(f"{text!r} is not [address]:port")
        port = rest[1:]
        if host.lower().startswith("ipv6:"):
            host = host[5:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise _BadRoute(f"{text!r} names no host")
    if not port:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _BadRoute(f"{text!r} has a bad port")
    return host, int(port)


def _literal(domain: str) -> str | None:
    """The address of an address literal such as ``[192.0.2.1]``, or ``None``."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _host_name(name: str, text: str) -> str:
    """*name* in A-labels, or :class:`_BadRoute` when it is no domain."""
    try:
        ascii = ascii_name(name)
    except ValueError:
        ascii = ""
    if not is_domain(ascii):
        raise _BadRoute(f"{text!r} is not a domain name")
    return ascii


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    """Keep *value* for *key* in *cache*, which is cleared when it is full."""
    if len(cache) >= _DESTINATION_CACHE:
        cache.clear()
    cache[key] = value


# -- connections -------------------------------------------------------------------


class _Connection:
    """
    A session of the pool of a destination.

    :ivar idle_since: when it was last put back in its pool.
    :ivar idle_timer: checks, once :attr:`SMTPTransportSettings.idle_timeout`
        has passed, whether it has been idle that long. It is left
        scheduled while the connection is busy, rather than scheduled and
        cancelled for every message.
    """

    def __init__(self, protocol: SMTPClientProtocol, pool: _Pool) -> None:
        self.protocol = protocol
        self.pool = pool
        self.holds_slot = True
        self.idle_since = 0.0
        self.idle_timer: IDelayedCall | None = None

    def stop_timer(self) -> None:
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()


class _Pool:
    """The connections of one destination, and the deliveries waiting for one."""

    def __init__(self, destination: _Destination) -> None:
        self.destination = destination
        self.idle: list[_Connection] = []
        #: Connections open or being opened, each holding a slot.
        self.count = 0
        #: Each waiter gets a connection, or ``None``: a slot to open one.
        self.waiters: deque[Deferred[_Connection | None]] = deque()


@implementer(IDeliveryTransport)
class SMTPTransport:
    """
    Delivers over SMTP to MX hosts or smarthosts; see the module.

    :param store: where messages are read from.
    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``: the
        connections and the clock of every timeout.
    :param resolver: the :class:`~mailframe.interfaces.IResolver` of MX and
        address lookups.
    :param random: the random source of the order of equal MX hosts.
    :param settings: the :class:`SMTPTransportSettings`.
    :raises ValueError: when a trust root cannot be read.
    """

    log = Logger()

    def __init__(
        self,
        store: IQueueStore,
        reactor: Any,
        resolver: IResolver,
        random: _random.Random,
        settings: SMTPTransportSettings,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.resolver = resolver
        self.random = random
        self.settings = settings
        self._trust_root = load_trust_root(settings.trust_roots) if settings.trust_roots else None
        self._our_names = (settings.helo_name, *settings.our_names)
        self._pools: dict[_Destination, _Pool] = {}
        self._protocols: set[SMTPClientProtocol] = set()
        self._opening: set[SMTPClientProtocol] = set()
        self._connecting: set[Deferred[Any]] = set()
        self._stopping = False
        # What _destinations made of routes with a nexthop or a domain, of
        # the domains of routes without, and the hosts of destinations
        # that need no lookup: each is worked out once, not per message.
        self._route_destinations: dict[Route, _Destination] = {}
        self._domain_destinations: dict[tuple[str, TLSPolicy | None], _Destination] = {}
        self._static_hosts: dict[_Destination, list[tuple[str, str]]] = {}

    # -- IDeliveryTransport ------------------------------------------------------------

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        return Deferred.fromCoroutine(self._deliver(entry, list(recipients), route))

    def stop(self) -> Deferred[None]:
        """
        Stop delivering: later deliveries, and deliveries waiting for a
        connection, fail transiently; idle connections and connections
        being set up are closed now, busy ones once their transaction is
        done.

        :return: a Deferred that fires once every connection is closed.
        """
        self._stopping = True
        for pool in list(self._pools.values()):
            waiters, pool.waiters = pool.waiters, deque()
            for waiter in waiters:
                waiter.errback(SessionFailed(SHUTTING_DOWN))
            for connection in list(pool.idle):
                self._retire(connection)
        for d in list(self._connecting):
            d.cancel()
        for protocol in list(self._opening):
            protocol.abort()
        closing = [protocol.when_closed() for protocol in self._protocols]
        if not closing:
            return succeed(None)
        return DeferredList(closing).addCallback(lambda _: None)

    @property
    def open_connections(self) -> int:
        """Connections open now, busy or idle."""
        return len(self._protocols)

    # -- one delivery ---------------------------------------------------------------------

    async def _deliver(
        self, entry: QueueEntry, recipients: list[tuple[Mailbox, Mailbox]], route: Route
    ) -> list[RecipientResult]:
        results: list[RecipientResult | None] = [None] * len(recipients)

        def settle(indices: Sequence[int], outcome: list[RecipientResult]) -> None:
            for index, result in zip(indices, outcome, strict=True):
                results[index] = result

        message: OutgoingMessage | None = None
        if not recipients:
            return []
        try:
            if route.reject is not None:
                return fail_all(recipients, route.reject, DeliveryStatus.PERMANENT)
            if self._stopping:
                return fail_all(recipients, SHUTTING_DOWN, DeliveryStatus.TRANSIENT)
            try:
                groups = self._destinations(route, recipients)
            except _BadRoute as error:
                self.log.error("Bad SMTP route {route}: {reason}", route=route,
                               reason=str(error))
                return fail_all(recipients, error.reply, DeliveryStatus.TRANSIENT)
            for destination, indices in groups:
                items = [recipients[i] for i in indices]
                if message is None:
                    try:
                        message = await self._open_message(entry)
                    except Exception:
                        self.log.failure("Cannot read the message of {queue_id}",
                                         queue_id=entry.queue_id)
                        reply = Reply(451, "4.3.0", "Cannot read the queued message")
                        return [r if r is not None else RecipientResult(
                            recipients[i][0], DeliveryStatus.TRANSIENT, reply,
                            original=recipients[i][1]) for i, r in enumerate(results)]
                settle(indices, await self._deliver_to(destination, entry, message, items))
        except Exception:
            self.log.failure("SMTP delivery of {queue_id} failed", queue_id=entry.queue_id)
        finally:
            if message is not None:
                message.file.close()
        reply = Reply(451, "4.3.0", "Local error in the SMTP transport")
        return [r if r is not None else RecipientResult(
            recipients[i][0], DeliveryStatus.TRANSIENT, reply, original=recipients[i][1])
            for i, r in enumerate(results)]

    async def _open_message(self, entry: QueueEntry) -> OutgoingMessage:
        return await open_outgoing(self.store, entry)

    def _destinations(
        self, route: Route, recipients: list[tuple[Mailbox, Mailbox]]
    ) -> list[tuple[_Destination, list[int]]]:
        found = self._route_destinations.get(route)
        if found is not None:
            return [(found, list(range(len(recipients))))]
        groups = self._work_out_destinations(route, recipients)
        args = route.arguments
        if "nexthop" in args or "domain" in args:
            _remember(self._route_destinations, route, groups[0][0])
        return groups

    def _work_out_destinations(
        self, route: Route, recipients: list[tuple[Mailbox, Mailbox]]
    ) -> list[tuple[_Destination, list[int]]]:
        args = route.arguments
        text_policy = args.get("tls")
        if text_policy is not None and text_policy not in TLS_POLICIES:
            raise _BadRoute(f"TLS policy {text_policy!r} is not one of"
                            f" {', '.join(TLS_POLICIES)}")
        override: TLSPolicy | None = text_policy
        if "nexthop" in args and "domain" in args:
            raise _BadRoute("a route has a nexthop or a domain, not both")
        everyone = list(range(len(recipients)))
        if "nexthop" in args:
            text = args["nexthop"].strip()
            host, port = _split_nexthop(text)
            if not _is_address(host):
                host = _host_name(host, text)
            policy = override or self._policy(text.lower(), host.lower())
            destination = _Destination("nexthop", host, port or SMTP_PORT, policy,
                                       self.settings.credentials)
            return [(destination, everyone)]
        if "domain" in args:
            return [(self._mx_destination(args["domain"], override), everyone)]
        groups: dict[_Destination, list[int]] = {}
        for index, (recipient, _) in enumerate(recipients):
            if not recipient.domain:
                raise _BadRoute(f"<{recipient}> has no domain")
            groups.setdefault(self._mx_destination(recipient.domain, override), []).append(index)
        return list(groups.items())

    def _mx_destination(self, domain: str, override: TLSPolicy | None) -> _Destination:
        key = (domain, override)
        found = self._domain_destinations.get(key)
        if found is None:
            found = self._work_out_mx_destination(domain, override)
            _remember(self._domain_destinations, key, found)
        return found

    def _work_out_mx_destination(self, domain: str, override: TLSPolicy | None
                                 ) -> _Destination:
        address = _literal(domain)
        if address is not None:
            policy = override or self._policy(domain.lower())
            return _Destination("literal", address, self.settings.port, policy, None)
        name = _host_name(domain, domain)
        policy = override or self._policy(name)
        return _Destination("mx", name, self.settings.port, policy, None)

    def _policy(self, *keys: str) -> TLSPolicy:
        policies = dict(self.settings.tls_policies)
        for key in keys:
            found = policies.get(key.rstrip("."))
            if found is not None:
                return cast(TLSPolicy, found)
        return self.settings.tls

    async def _hosts(self, destination: _Destination) -> list[tuple[str, str]]:
        """``(host name, address)`` to try, in order."""
        static = self._static_hosts.get(destination)
        if static is not None:
            return list(static)
        if destination.kind == "literal" or (destination.kind == "nexthop"
                                             and _is_address(destination.name)):
            static = [(destination.name, destination.name)]
            _remember(self._static_hosts, destination, static)
            return list(static)
        if destination.kind == "mx":
            hosts: list[MXHost] = await resolve_mx(
                self.resolver, destination.name, self._our_names, self.random,
                self.settings.max_addresses)
            return [(mx.host, address) for mx in hosts for address in mx.addresses]
        try:
            addresses: list[str] = await self.resolver.lookup_address(destination.name)
        except DNSNameNotFound:
            # A smarthost that does not exist is a mistake of ours: wait.
            raise DNSTemporaryError(destination.name, "the smarthost does not exist") from None
        usable = [a for a in addresses if _is_address(a)][: self.settings.max_addresses]
        if not usable:
            raise DNSTemporaryError(destination.name, "the smarthost has no address")
        return [(destination.name, address) for address in usable]

    async def _deliver_to(
        self, destination: _Destination, entry: QueueEntry, message: OutgoingMessage,
        items: list[tuple[Mailbox, Mailbox]],
    ) -> list[RecipientResult]:
        """Deliver to one destination, in batches, over one connection at a time."""
        try:
            static = self._static_hosts.get(destination)
            hosts = list(static) if static is not None else await self._hosts(destination)
        except (PermanentDeliveryError, TransientDeliveryError) as error:
            self.log.info("{queue_id}: no hosts for {destination}: {reply}",
                          queue_id=entry.queue_id, destination=str(destination),
                          reply=str(error.reply))
            return fail_all(items, error.reply, status_of(error))
        envelope = entry.envelope
        size = self.settings.recipients_per_transaction
        out: list[RecipientResult] = []
        connection: _Connection | None = None
        failure: MailframeError | None = None
        try:
            for start in range(0, len(items), size):
                batch = items[start : start + size]
                if failure is None and self._stopping:
                    failure = SessionFailed(SHUTTING_DOWN)
                if failure is not None:
                    out.extend(fail_all(batch, failure.reply, status_of(failure)))
                    continue
                dsn = [dsn_options(envelope, r, o) for r, o in batch]
                transaction = Transaction(
                    envelope.sender, [r for r, _ in batch], message.file, message.size,
                    prefix=message.prefix, body=envelope.body, smtputf8=envelope.smtputf8,
                    utf8_headers=message.utf8_headers, auth=envelope.auth,
                    ret=envelope.ret, envid=envelope.envid,
                    dsn=dsn if any(o != _NO_DSN for o in dsn) else (),
                    checkpoint=message.renew,
                )
                retried = False
                while True:
                    if connection is not None and (
                            connection.protocol.transactions
                            >= self.settings.messages_per_connection):
                        self._retire(connection)
                        connection = None
                    if connection is None:
                        try:
                            connection = await self._acquire(destination, hosts)
                        except (SessionFailed, SessionRejected) as error:
                            failure = error
                            out.extend(fail_all(batch, error.reply, status_of(error)))
                            break
                    try:
                        results = await connection.protocol.deliver(transaction)
                    except ConnectionUnusable as error:
                        self._retire(connection)
                        connection = None
                        if retried:
                            out.extend(fail_all(batch, error.reply, DeliveryStatus.TRANSIENT))
                            break
                        retried = True
                        continue
                    out.extend(attrs.evolve(result, original=original)
                               for result, (_, original) in zip(results, batch, strict=True))
                    if not connection.protocol.usable:
                        self._retire(connection)
                        connection = None
                    break
        finally:
            if connection is not None:
                self._release(connection)
        return out

    # -- the pools -------------------------------------------------------------------------

    async def _acquire(self, destination: _Destination, hosts: list[tuple[str, str]]
                       ) -> _Connection:
        """An idle connection, or a new one, or one freed by another delivery."""
        pool = self._pools.get(destination)
        if pool is None:
            pool = self._pools[destination] = _Pool(destination)
        while pool.idle:
            connection = pool.idle.pop()
            if connection.protocol.usable:
                return connection
            self._retire(connection)
        if pool.count >= self.settings.connections_per_destination:
            waiter: Deferred[_Connection | None] = Deferred()
            pool.waiters.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed
            # A slot was handed over: pool.count already counts it.
        else:
            pool.count += 1
        try:
            return await self._open(pool, hosts)
        except BaseException:
            self._free_slot(pool)
            raise

    def _release(self, connection: _Connection) -> None:
        """A delivery is done with *connection*: hand it on, keep it idle, or close it."""
        pool = connection.pool
        protocol = connection.protocol
        if (self._stopping or not protocol.usable or self.settings.idle_timeout <= 0
                or protocol.transactions >= self.settings.messages_per_connection):
            self._retire(connection)
            return
        if pool.waiters:
            pool.waiters.popleft().callback(connection)
            return
        pool.idle.append(connection)
        connection.idle_since = self.reactor.seconds()
        timer = connection.idle_timer
        if timer is None or not timer.active():
            connection.idle_timer = self.reactor.callLater(
                self.settings.idle_timeout, self._idle_check, connection)

    def _idle_check(self, connection: _Connection) -> None:
        """Close *connection* if it has been idle for the idle timeout, else look again then."""
        connection.idle_timer = None
        if connection not in connection.pool.idle:
            # Busy: _release schedules the next look.
            return
        left = connection.idle_since + self.settings.idle_timeout - self.reactor.seconds()
        if left > _TIMER_SLACK:
            connection.idle_timer = self.reactor.callLater(left, self._idle_check, connection)
            return
        connection.pool.idle.remove(connection)
        self._retire(connection)

    def _retire(self, connection: _Connection) -> None:
        """Close *connection* (with QUIT when it can), and free its slot."""
        connection.stop_timer()
        if connection in connection.pool.idle:
            connection.pool.idle.remove(connection)
        if connection.holds_slot:
            connection.holds_slot = False
            self._free_slot(connection.pool)
        connection.protocol.quit()

    def _closed_callback(self, result: None, connection: _Connection) -> None:
        self._closed(connection)

    def _closed(self, connection: _Connection) -> None:
        """The connection closed, perhaps while idle (the server timed it out)."""
        self._protocols.discard(connection.protocol)
        if connection in connection.pool.idle:
            connection.pool.idle.remove(connection)
            connection.stop_timer()
            if connection.holds_slot:
                connection.holds_slot = False
                self._free_slot(connection.pool)

    def _free_slot(self, pool: _Pool) -> None:
        if pool.waiters:
            pool.waiters.popleft().callback(None)
            return
        pool.count -= 1
        if pool.count <= 0 and not pool.idle:
            self._pools.pop(pool.destination, None)

    async def _open(self, pool: _Pool, hosts: list[tuple[str, str]]) -> _Connection:
        """
        Try the addresses in order until one gives a session; under
        ``may``, a failed handshake is retried in plaintext first.
        """
        destination = pool.destination
        failure: SessionFailed | None = None
        for host, address in hosts:
            policies: list[TLSPolicy] = [destination.tls]
            if destination.tls == "may":
                policies.append("none")
            for policy in policies:
                if self._stopping:
                    raise SessionFailed(SHUTTING_DOWN)
                try:
                    protocol = await self._connect(destination, host, address, policy)
                except TLSFailed as error:
                    failure = error
                    if policy == "may":
                        self.log.info("TLS with {host}[{address}] failed; trying again in"
                                      " plaintext: {reply}", host=host, address=address,
                                      reply=str(error.reply))
                        continue
                    break
                except SessionFailed as error:
                    failure = error
                    self.log.info("No SMTP session with {host}[{address}]: {reply}",
                                  host=host, address=address, reply=str(error.reply),
                                  destination=str(destination))
                    break
                if self._stopping:
                    protocol.quit()
                    raise SessionFailed(SHUTTING_DOWN)
                connection = _Connection(protocol, pool)
                protocol.when_closed().addCallback(self._closed_callback, connection)
                return connection
        if failure is None:
            failure = SessionFailed(Reply(451, "4.4.4", f"No address to try for {destination}"))
        raise failure

    async def _connect(
        self, destination: _Destination, host: str, address: str, policy: TLSPolicy
    ) -> SMTPClientProtocol:
        """
        One session with *address*, set up.

        :raises SessionFailed: when it cannot be connected or set up.
        :raises SessionRejected: when the server refuses it with a 5xx.
        """
        settings = self.settings
        version = ipaddress.ip_address(address).version
        source = settings.source_address
        if source is not None and ipaddress.ip_address(source).version != version:
            source = settings.source_address6 if version == 6 else None
        bind = (source, 0) if source is not None else None
        endpoint_type: Callable[..., Any] = TCP6ClientEndpoint if version == 6 else (
            TCP4ClientEndpoint)
        endpoint = endpoint_type(self.reactor, address, destination.port,
                                 timeout=settings.connect_timeout, bindAddress=bind)
        client = ClientSettings(
            helo=settings.helo_name, tls=policy, trust_root=self._trust_root,
            credentials=destination.credentials, auth_without_tls=settings.auth_without_tls,
            chunking=settings.chunking, limits=settings.limits,
        )
        protocol = SMTPClientProtocol(client, self.reactor, host, address)
        connecting = connectProtocol(endpoint, protocol)
        self._connecting.add(connecting)
        try:
            await connecting
        except Exception as error:
            if self._stopping:
                raise SessionFailed(SHUTTING_DOWN) from None
            # RFC 3463 §3.5: X.4.1, no answer from host.
            raise SessionFailed(Reply(
                451, "4.4.1", f"Cannot connect to {host}[{address}]:{destination.port}:"
                f" {error}")) from None
        finally:
            self._connecting.discard(connecting)
        self._protocols.add(protocol)
        protocol.when_closed().addCallback(lambda _: self._protocols.discard(protocol))
        self._opening.add(protocol)
        try:
            await protocol.when_ready()
        finally:
            self._opening.discard(protocol)
        self.log.info("SMTP session with {host}[{address}]:{port} (TLS: {tls})",
                      host=host, address=address, port=destination.port,
                      tls="yes" if protocol.tls else "no", destination=str(destination))
        return protocol


def _build_smtp(settings: Any, context: Any) -> SMTPTransport:
    config = context.config
    credentials = None
    if config.smarthost_username is not None and config.smarthost_password is not None:
        credentials = (config.smarthost_username, config.smarthost_password)
    return SMTPTransport(context.store, context.reactor, context.resolver, context.random,
                         SMTPTransportSettings(
        helo_name=config.smtp_helo_name or config.hostname,
        source_address=config.smtp_source_address,
        source_address6=config.smtp_source_address6,
        trust_roots=config.smtp_trust_roots,
        our_names=(config.hostname,),
        port=config.smtp_port,
        tls=config.smtp_tls,
        tls_policies=config.tls_policy,
        credentials=credentials,
        chunking=config.smtp_chunking,
    ))


#: The ``smtp`` transport plugin, set up from the config's ``smtp_*``,
#: ``smarthost_*``, ``tls_policy`` and ``nameservers`` keys.
smtp_maker = ComponentMaker(
    kind="transport",
    name="smtp",
    description="Relays by SMTP to the MX hosts of a domain, or to a next hop",
    factory=_build_smtp,
)

"""
Rate limits per client: new connections, messages and recipients per time
unit, as Postfix's anvil(8) keeps them for ``smtpd_client_connection_rate_limit``,
``smtpd_client_message_rate_limit`` and ``smtpd_client_recipient_rate_limit``.

Each client has one window that opens at its first counted event and lasts
``rate_period`` seconds (anvil's ``anvil_rate_time_unit``); the three counts
start again at zero when it ends. Every attempt counts, whether or not it is
then refused, by this policy or another, so a client that keeps hammering
stays refused until it pauses. A client over a limit gets, as from Postfix:

- ``421 4.7.0 <hostname> Error: too many connections from <address>`` at
  connect, and the connection is closed;
- ``450 4.7.1 Error: too much mail from <address>`` at MAIL;
- ``450 4.7.1 Error: too many recipients from <address>`` at RCPT.

These are temporary: a legitimate client retries later. The limits are meant
to stop abuse, not to regulate ordinary mail.

Clients are counted by address, IPv6 ones by their first ``ipv6_prefix``
bits (Postfix 3.8's ``smtpd_client_ipv6_prefix_length``), since a single
host often holds a whole IPv6 network. The exempt networks, and clients
without an IP address, are never counted.

The counters live in a :class:`RateTable`. The policies that
:data:`limits_maker` builds for the listeners of one server (one
:class:`~mailframe.config.Config`) share one table, so a client is counted
across all listeners, as the server counts concurrent connections; Postfix
counts each ``master.cf`` service apart. A new config (a reload) starts with
an empty table.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.envelope import ClientInfo
from mailframe.policies._base import CONTINUE, PolicyBase
from mailframe.policies.relay import LOOPBACK, Network
from mailframe.verdict import Verdict

__all__ = [
    "MAX_CLIENTS",
    "ClientRates",
    "RateLimitPolicy",
    "RateLimits",
    "RateTable",
    "limits_maker",
    "shared_table",
]

_log = Logger(namespace="mailframe.policies.limits")

#: The most clients a :class:`RateTable` keeps counts for. Clients idle for
#: a whole period are dropped first; past this many active ones, the least
#: recently seen is forgotten (and so counted afresh if it comes back). At
#: about 250 octets a client, the table stays under some 25 MB however many
#: addresses a flood comes from.
MAX_CLIENTS = 100_000

#: The default prefix lengths by which clients are counted, as Postfix 3.8's
#: ``smtpd_client_ipv4_prefix_length`` and ``smtpd_client_ipv6_prefix_length``.
IPV4_PREFIX = 32
IPV6_PREFIX = 84


@attrs.frozen
class RateLimits:
    """
    How many events one client may cause in one period; ``0`` is no limit.

    :ivar connections: new connections.
    :ivar messages: MAIL commands.
    :ivar recipients: RCPT commands.
    :ivar period: the length of a client's window, in seconds.
    """

    connections: int = 0
    messages: int = 0
    recipients: int = 0
    period: float = 60.0

    def __attrs_post_init__(self) -> None:
        if min(self.connections, self.messages, self.recipients) < 0:
            raise ValueError("a rate limit cannot be negative")
        if not self.period > 0:
            raise ValueError("the rate period must be longer than zero")


class ClientRates:
    """The counts of one client in its current window."""

    __slots__ = ("connections", "last", "messages", "recipients", "start")

    def __init__(self, now: float) -> None:
        #: When the window opened.
        self.start = now
        #: When the client was last counted.
        self.last = now
        self.connections = 0
        self.messages = 0
        self.recipients = 0


class RateTable:
    """
    Event counts per client key, in bounded memory.

    Clients are kept in the order they were last counted. Each count first
    drops the clients not counted for a whole period (their windows have
    ended, so they would start from zero anyway), then, past *max_clients*,
    the least recently counted one.

    :param clock: the clock, an :class:`~twisted.internet.interfaces.IReactorTime`.
    :param max_clients: the most clients kept; by default :data:`MAX_CLIENTS`.
    """

    def __init__(self, clock: IReactorTime, max_clients: int = MAX_CLIENTS) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.clock = clock
        self.max_clients = max_clients
        self._clients: OrderedDict[str, ClientRates] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, key: object) -> bool:
        return key in self._clients

    def count(self, key: str, period: float) -> ClientRates:
        """
        The counts of *key* in its window of *period* seconds, opening a new
        window when there is none or the last has ended; the caller adds the
        event to the count it concerns.
        """
        now = self.clock.seconds()
        clients = self._clients
        while clients:
            oldest = next(iter(clients.values()))
            if oldest.last > now - period:
                break
            clients.popitem(last=False)
        rates = clients.get(key)
        if rates is None or now >= rates.start + period:
            rates = ClientRates(now)
            clients[key] = rates
        rates.last = now
        clients.move_to_end(key)
        while len(clients) > self.max_clients:
            clients.popitem(last=False)
        return rates


class RateLimitPolicy(PolicyBase):
    """
    Refuses clients over their rate limits; see the module's description.

    :param limits: the limits.
    :param table: where the counts are kept; policies that share one count
        each client once for all.
    :param exempt: the networks never counted.
    :param hostname: the server's name, for the ``421`` reply.
    :param ipv4_prefix: the prefix length by which IPv4 clients are counted.
    :param ipv6_prefix: the prefix length by which IPv6 clients are counted.
    """

    def __init__(
        self,
        limits: RateLimits,
        table: RateTable,
        exempt: Iterable[Network] = LOOPBACK,
        hostname: str = "",
        ipv4_prefix: int = IPV4_PREFIX,
        ipv6_prefix: int = IPV6_PREFIX,
        log: Logger | None = None,
    ) -> None:
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError("a prefix length is 0-32 for IPv4 and 0-128 for IPv6")
        self.limits = limits
        self.table = table
        self.exempt = tuple(exempt)
        self.hostname = hostname
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.log = log if log is not None else _log

    def key(self, client: ClientInfo) -> str | None:
        """
        What *client* is counted as: its address, or the network of its
        prefix length; ``None`` when it is exempt or has no IP address.
        """
        try:
            address = ipaddress.ip_address(client.address)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.exempt):
            return None
        if isinstance(address, ipaddress.IPv4Address):
            prefix = self.ipv4_prefix
        else:
            prefix = self.ipv6_prefix
        if prefix == address.max_prefixlen:
            return str(address)
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    def connect(self, client: Any) -> Verdict:
        limit = self.limits.connections
        key = self.key(client) if limit else None
        if key is None:
            return CONTINUE
        rates = self.table.count(key, self.limits.period)
        rates.connections += 1
        if rates.connections <= limit:
            return CONTINUE
        self.log.warn(
            "Connection rate limit exceeded: {rate} from {address} for listener {listener}",
            rate=rates.connections,
            address=client.address,
            listener=client.listener,
        )
        name = f"{self.hostname} " if self.hostname else ""
        return Verdict.tempfail(
            421, "4.7.0", f"{name}Error: too many connections from {client.address}"
        )

    def mail(self, client: Any, sender: Any, parameters: Any) -> Verdict:
        limit = self.limits.messages
        key = self.key(client) if limit else None
        if key is None:
            return CONTINUE
        rates = self.table.count(key, self.limits.period)
        rates.messages += 1
        if rates.messages <= limit:
            return CONTINUE
        self.log.warn(
            "Message delivery request rate limit exceeded: {rate} from {address}"
            " for listener {listener}",
            rate=rates.messages,
            address=client.address,
            listener=client.listener,
        )
        return Verdict.tempfail(450, "4.7.1", f"Error: too much mail from {client.address}")

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Verdict:
        limit = self.limits.recipients
        key = self.key(client) if limit else None
        if key is None:
            return CONTINUE
        rates = self.table.count(key, self.limits.period)
        rates.recipients += 1
        if rates.recipients <= limit:
            return CONTINUE
        self.log.warn(
            "Recipient address rate limit exceeded: {rate} from {address} for listener {listener}",
            rate=rates.recipients,
            address=client.address,
            listener=client.listener,
        )
        return Verdict.tempfail(450, "4.7.1", f"Error: too many recipients from {client.address}")


# The tables of the servers running now, by the id of their Config; an entry
# goes when its Config does.
_TABLES: dict[int, tuple[weakref.ref[Any], RateTable]] = {}


def shared_table(config: Any, clock: IReactorTime) -> RateTable:
    """
    The one :class:`RateTable` of the server that *config* describes,
    made on first use; a new table when *config* is ``None``.
    """
    if config is None:
        return RateTable(clock)
    key = id(config)
    found = _TABLES.get(key)
    if found is not None and found[0]() is config:
        return found[1]
    table = RateTable(clock)

    def forget(ref: weakref.ref[Any]) -> None:
        if _TABLES.get(key, (None,))[0] is ref:
            del _TABLES[key]

    try:
        ref = weakref.ref(config, forget)
    except TypeError:
        return table  # a config that cannot be referred to weakly shares nothing
    _TABLES[key] = (ref, table)
    return table


def _build(settings: Mapping[str, Any], context: Any) -> RateLimitPolicy:
    for name, width in (("ipv4_prefix", 32), ("ipv6_prefix", 128)):
        if settings[name] > width:
            raise SettingError(name, f"must be at most {width}")
    config = getattr(context, "config", None)
    exempt = settings["exempt"]
    if exempt is None:
        exempt = getattr(config, "connection_limit_exemptions", LOOPBACK)
    return RateLimitPolicy(
        RateLimits(
            connections=settings["connection_rate"],
            messages=settings["message_rate"],
            recipients=settings["recipient_rate"],
            period=settings["rate_period"],
        ),
        shared_table(config, context.reactor),
        exempt=exempt,
        hostname=getattr(config, "hostname", ""),
        ipv4_prefix=settings["ipv4_prefix"],
        ipv6_prefix=settings["ipv6_prefix"],
        log=getattr(context, "log", None),
    )


#: The ``limits`` policy plugin.
limits_maker = ComponentMaker(
    kind="policy",
    name="limits",
    description="Rate limits per client: connections, messages and recipients",
    factory=_build,
    schema={
        "connection_rate": Setting(
            "integer",
            60,
            "New connections one client may open per period; more get 421 4.7.0. 0 sets no limit.",
            minimum=0,
        ),
        "message_rate": Setting(
            "integer",
            100,
            "MAIL commands one client may give per period; more get 450 4.7.1. 0 sets no limit.",
            minimum=0,
        ),
        "recipient_rate": Setting(
            "integer",
            500,
            "RCPT commands one client may give per period; more get 450 4.7.1. 0 sets no limit.",
            minimum=0,
        ),
        "rate_period": Setting(
            "duration",
            60.0,
            "The time unit of the rates: a client's counts start again this long"
            " after its first counted event.",
            minimum=1,
        ),
        "exempt": Setting(
            "networks",
            None,
            "Client networks never counted; by default the server's"
            " connection_limit_exemptions (loopback).",
        ),
        "ipv4_prefix": Setting(
            "integer",
            IPV4_PREFIX,
            "IPv4 clients in one network of this prefix length are counted as one.",
            minimum=0,
        ),
        "ipv6_prefix": Setting(
            "integer",
            IPV6_PREFIX,
            "IPv6 clients in one network of this prefix length are counted as one.",
            minimum=0,
        ),
    },
)

"""
The DNS resolver: the only module of mailframe that imports dnspython.

dnspython builds and parses the messages; Twisted carries them, over UDP,
and over TCP when an answer comes back truncated. Nothing blocks the
reactor, no thread is used, and every reactor works.

:class:`DNSResolver` asks recursive nameservers (the system's, or those it
is given) and keeps what they answer for as long as the answer's TTL allows,
within limits. Answers are accepted only when they match the query as
RFC 5452 asks: a random query id, a fresh random source port for every
query, and the answer's id, question and source address all checked.
"""

from __future__ import annotations

import ipaddress
import math
import random as _random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.interfaces import IResolver
from mailframe.routing._dnserrors import (
    MAX_CNAME_CHAIN,
    DNSNameNotFound,
    DNSTemporaryError,
    ascii_name,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DNS_PORT",
    "EDNS_PAYLOAD",
    "MAX_NEGATIVE_TTL",
    "DNSReactor",
    "DNSResolver",
]

_log = Logger(namespace="mailframe.routing.resolver")

#: The port nameservers listen on (RFC 1035 §4.2).
DNS_PORT = 53

#: The UDP payload size advertised with EDNS0 (RFC 6891 §6.2.5 asks for one
#: that avoids fragmentation): 1232 octets, the value of DNS Flag Day 2020,
#: fits the IPv6 minimum MTU of 1280 octets (RFC 8200 §5) less its headers.
EDNS_PAYLOAD = 1232

#: The longest a negative answer is kept: RFC 2308 §5 finds "values of one to
#: three hours" to work well, whatever the SOA says.
MAX_NEGATIVE_TTL = 3 * 3600

#: How many answers the cache holds; the oldest go first when it is full.
DEFAULT_CACHE_SIZE = 10_000

# RFC 1035 §4.2.2: a message over TCP carries a two-octet length, so no
# message is longer than 65535 octets; a UDP datagram is no longer either.
_MAX_MESSAGE = 0xFFFF

# RFC 2308 §7.1: a server failure "MUST NOT be cached for longer than five
# minutes".
_MAX_FAILURE_TTL = 5 * 60

_IN = dns.rdataclass.IN
_Key = tuple[dns.name.Name, dns.rdatatype.RdataType]
_ANSWERED = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


class DNSReactor(Protocol):
    """What the resolver needs of a reactor: a clock, UDP and TCP."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> IListeningPort: ...

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector: ...


@attrs.frozen
class _Server:
    """One nameserver: an IP address and a port."""

    host: str
    port: int

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.host).version == 6

    def sent(self, address: Any) -> bool:
        """Whether a datagram from *address* came from this server (RFC 5452 §9.1)."""
        try:
            host, port = address[0], address[1]
            return bool(ipaddress.ip_address(host) == ipaddress.ip_address(self.host)) and (
                port == self.port
            )
        except (TypeError, ValueError, IndexError):
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"


@attrs.frozen
class _Answer:
    """
    What one name and type resolved to, after the CNAME chain.

    :ivar exists: ``False`` for NXDOMAIN.
    :ivar records: the records of the type asked, at the end of the chain;
        empty for NODATA and NXDOMAIN.
    :ivar ttl: how long it may be kept, in seconds.
    """

    exists: bool
    records: tuple[dns.rdata.Rdata, ...]
    ttl: float


@attrs.frozen
class _Entry:
    """A cached answer, or a cached failure (its reason), until *expires*."""

    expires: float
    answer: _Answer | None
    reason: str = ""


class _NoAnswer(Exception):
    """One query to one server brought no usable answer; try the next."""


class _Truncated(Exception):
    """The UDP answer had TC set: ask again over TCP (RFC 7766 §5)."""


class _Broken(Exception):
    """The answers are unusable: a CNAME loop or a chain too long."""


@attrs.frozen
class _Reading:
    """
    What one response says about one name, after its CNAMEs.

    :ivar owner: the end of the chain.
    :ivar ttl: how long what it says of *owner* may be kept.
    :ivar chain_ttl: the least TTL of the CNAME records followed.
    :ivar links: how many CNAME records were followed.
    :ivar complete: ``False`` when the chain ends without data and without a
        negative answer for its end, which must be asked again.
    """

    owner: dns.name.Name
    exists: bool
    records: tuple[dns.rdata.Rdata, ...]
    ttl: float
    chain_ttl: float
    links: int
    complete: bool


@implementer(IResolver)
class DNSResolver:
    """
    A stub resolver over Twisted, asking recursive nameservers.

    Every query has the RD flag, EDNS0 with a payload of
    :data:`EDNS_PAYLOAD`, a query id drawn from *random* and its own UDP
    port, chosen at random by the system (``listenUDP(0)``). An answer is
    taken only when it comes from the server's address and port and has the
    query's id and question (RFC 5452 §4.1, §9.1); anything else is ignored,
    and the query waits on until its timeout. A truncated answer is asked
    again over TCP, with the two-octet length of RFC 1035 §4.2.2.

    The nameservers are asked in turn, *attempts* times over, each for
    *timeout* seconds: a lookup that no server answers fails after at most
    ``attempts * len(nameservers) * timeout`` seconds (twice that when TCP is
    needed). An answer other than NOERROR or NXDOMAIN (SERVFAIL, REFUSED,
    ...) moves on to the next server.

    CNAME records are followed within an answer. A chain that ends in the
    answer without data, and without the SOA that marks a NODATA answer
    (RFC 2308 §2.2), is asked again at its end; at most
    :data:`~mailframe.routing._dnserrors.MAX_CNAME_CHAIN` links are followed
    in all, and a loop is a temporary failure. Names are absolute: no search
    domain is ever appended.

    The cache keeps:

    - answers with records, for their TTL (the least along the CNAME chain),
      at most *max_ttl* seconds;
    - NXDOMAIN and NODATA answers for the TTL of RFC 2308 §5 (the lesser of
      the SOA's TTL and its MINIMUM field), at most *max_ttl* and
      :data:`MAX_NEGATIVE_TTL` seconds; a negative answer without an SOA is
      not kept (RFC 2308 §5);
    - failures (SERVFAIL, timeouts, malformed answers) for *failure_ttl*
      seconds, at most five minutes (RFC 2308 §7.1).

    Concurrent lookups of one name and type share one query.

    :param reactor: the reactor: clock, UDP and TCP.
    :param nameservers: ``(address, port)`` pairs of recursive nameservers;
        by default those of the system (``/etc/resolv.conf``), read once,
        now, at port 53.
    :param random: the source of query ids; by default
        :class:`random.SystemRandom`.
    :param timeout: seconds to wait for one answer from one server.
    :param attempts: how many times each server is asked.
    :param max_ttl: the longest any answer is kept, in seconds.
    :param failure_ttl: how long a failure is kept, in seconds; ``0`` keeps
        none.
    :param cache_size: how many answers the cache holds.
    :raises ValueError: when there is no nameserver, or an argument is out
        of range.

    :ivar nameservers: the ``(address, port)`` pairs asked, in order.
    """

    def __init__(
        self,
        reactor: DNSReactor,
        nameservers: Sequence[tuple[str, int]] | None = None,
        random: _random.Random | None = None,
        timeout: float = 2.0,
        attempts: int = 2,
        max_ttl: float = 86400,
        failure_ttl: float = 5.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if timeout <= 0 or attempts < 1 or max_ttl < 0 or failure_ttl < 0 or cache_size < 1:
            raise ValueError("timeout, attempts, max_ttl, failure_ttl or cache_size out of range")
        self._reactor = reactor
        self._random = random if random is not None else _random.SystemRandom()
        self._timeout = timeout
        self._attempts = attempts
        self._max_ttl = max_ttl
        self._failure_ttl = min(failure_ttl, _MAX_FAILURE_TTL)
        self._cache_size = cache_size
        servers = _system_nameservers() if nameservers is None else list(nameservers)
        self.nameservers: tuple[tuple[str, int], ...] = tuple(
            (str(ipaddress.ip_address(host)), int(port)) for host, port in servers
        )
        if not self.nameservers:
            raise ValueError("no nameserver to ask")
        self._servers = tuple(_Server(host, port) for host, port in self.nameservers)
        self._cache: dict[_Key, _Entry] = {}
        self._inflight: dict[_Key, list[Deferred[_Answer]]] = {}

    # -- IResolver -------------------------------------------------------

    def lookup_mx(self, domain: str) -> Deferred[list[tuple[int, str]]]:
        def values(records: tuple[dns.rdata.Rdata, ...]) -> list[tuple[int, str]]:
            mxs = cast(tuple[dns.rdtypes.ANY.MX.MX, ...], records)
            return [(mx.preference, _host_text(mx.exchange)) for mx in mxs]

        return self._records(domain, dns.rdatatype.MX).addCallback(values)

    def lookup_txt(self, name: str) -> Deferred[list[str]]:
        def values(records: tuple[dns.rdata.Rdata, ...]) -> list[str]:
            txts = cast(tuple[dns.rdtypes.ANY.TXT.TXT, ...], records)
            # RFC 7208 §3.3: the character-strings of one record are joined
            # with nothing between them.
            return [b"".join(txt.strings).decode("utf-8", "replace") for txt in txts]

        return self._records(name, dns.rdatatype.TXT).addCallback(values)

    def lookup_address(self, host: str) -> Deferred[list[str]]:
        lookups = [
            self._records(host, dns.rdatatype.AAAA),
            self._records(host, dns.rdatatype.A),
        ]

        def combine(results: list[tuple[bool, Any]]) -> list[str]:
            addresses: list[str] = []
            failures: list[Failure] = []
            for ok, value in results:
                if ok:
                    addresses.extend(_address_text(record) for record in value)
                else:
                    failures.append(value)
            if addresses:
                return addresses
            # A name that does not exist does not, whatever the type asked.
            for kind in (DNSNameNotFound, DNSTemporaryError):
                for failure in failures:
                    if failure.check(kind):
                        failure.raiseException()
            for failure in failures:
                failure.raiseException()
            return []

        return DeferredList(lookups, consumeErrors=True).addCallback(combine)

    # -- lookups -------------------------------------------------------

    def _records(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> Deferred[tuple[dns.rdata.Rdata, ...]]:
        """The records of *rdtype* at *name*, or a DNSNameNotFound."""
        try:
            qname = dns.name.from_text(ascii_name(name), origin=dns.name.root)
        except (ValueError, dns.exception.DNSException):
            return fail(DNSNameNotFound(name))

        def records(answer: _Answer) -> tuple[dns.rdata.Rdata, ...]:
            if not answer.exists:
                raise DNSNameNotFound(name)
            return answer.records

        return self._lookup(qname, rdtype).addCallback(records)

    def _lookup(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Deferred[_Answer]:
        """The answer for *qname* and *rdtype*: cached, shared, or asked."""
        key = (qname, rdtype)
        entry = self._cached(key)
        if entry is not None:
            if entry.answer is None:
                return fail(DNSTemporaryError(_text(qname), entry.reason))
            return succeed(entry.answer)
        waiting = self._inflight.get(key)
        mine: Deferred[_Answer] = Deferred()
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._inflight[key] = [mine]
        fetched = Deferred.fromCoroutine(self._fetch(qname, rdtype))
        fetched.addBoth(self._settle, key)
        return mine

    def _settle(
        self,
        result: _Answer | Failure,
        key: _Key,
    ) -> None:
        """Cache what a fetch found and tell everyone who waited for it."""
        qname = key[0]
        waiting = self._inflight.pop(key, [])
        if isinstance(result, _Answer):
            self._store(key, _Entry(self._reactor.seconds() + result.ttl, result))
        else:
            if result.check(DNSTemporaryError):
                reason = cast(DNSTemporaryError, result.value).reason
            else:
                _log.failure("DNS lookup of {name} failed unexpectedly", result, name=qname)
                reason = "internal error"
            _log.info(
                "DNS lookup of {name} {rdtype} failed: {reason}",
                name=_text(qname),
                rdtype=dns.rdatatype.to_text(key[1]),
                reason=reason,
            )
            self._store(key, _Entry(self._reactor.seconds() + self._failure_ttl, None, reason))
        for waiter in waiting:
            if waiter.called:
                continue  # cancelled by its caller
            if isinstance(result, _Answer):
                waiter.callback(result)
            else:
                waiter.errback(DNSTemporaryError(_text(qname), reason))

    async def _fetch(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Answer:
        """
        Ask for *qname*, and follow a CNAME chain that the answer leaves
        unfinished by asking for its end (RFC 1034 §3.6.2, §5.3.3).
        """
        owner = qname
        chain_ttl = math.inf
        seen = {qname}
        links = 0
        for _ in range(MAX_CNAME_CHAIN + 1):
            if owner != qname:
                entry = self._cached((owner, rdtype))
                if entry is not None:
                    if entry.answer is None:
                        raise DNSTemporaryError(_text(qname), entry.reason)
                    remaining = entry.expires - self._reactor.seconds()
                    return _Answer(
                        entry.answer.exists, entry.answer.records, min(chain_ttl, remaining)
                    )
            response = await self._exchange(qname, owner, rdtype)
            try:
                reading = _read(response, owner, rdtype, seen, MAX_CNAME_CHAIN - links)
            except _Broken as broken:
                raise DNSTemporaryError(_text(qname), str(broken)) from None
            links += reading.links
            chain_ttl = min(chain_ttl, reading.chain_ttl)
            if reading.complete:
                if owner != qname:
                    # The name asked again has an answer of its own: keep it.
                    own = _Answer(
                        reading.exists, reading.records, min(reading.chain_ttl, reading.ttl)
                    )
                    self._store((owner, rdtype), _Entry(self._reactor.seconds() + own.ttl, own))
                return _Answer(reading.exists, reading.records, min(chain_ttl, reading.ttl))
            owner = reading.owner
        raise DNSTemporaryError(_text(qname), "CNAME chain too long")

    async def _exchange(
        self, qname: dns.name.Name, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        """
        One question, asked of each server in turn, *attempts* times over,
        until one answers NOERROR or NXDOMAIN.
        """
        reason = "no nameserver answered"
        for _ in range(self._attempts):
            for server in self._servers:
                # RFC 5452 §9.2: the 16-bit id is random; so is the port.
                query = dns.message.make_query(
                    owner,
                    rdtype,
                    use_edns=0,
                    payload=EDNS_PAYLOAD,
                    id=self._random.getrandbits(16),
                    flags=dns.flags.RD,
                )
                try:
                    try:
                        response = await self._udp(query, server)
                    except _Truncated:
                        response = await self._tcp(query, server)
                except _NoAnswer as error:
                    reason = f"{server}: {error}"
                    continue
                rcode = response.rcode()
                if rcode in _ANSWERED:
                    return response
                reason = f"{server} answered {dns.rcode.to_text(rcode)}"
        raise DNSTemporaryError(_text(qname), reason)

    def _udp(self, query: dns.message.Message, server: _Server) -> Deferred[dns.message.Message]:
        done: Deferred[dns.message.Message] = Deferred(lambda d: exchange.abort())
        exchange = _UDPExchange(self._reactor, query, server, self._timeout, done)
        try:
            self._reactor.listenUDP(
                0, exchange, interface="::" if server.ipv6 else "", maxPacketSize=_MAX_MESSAGE
            )
        except CannotListenError as error:
            return fail(_NoAnswer(f"cannot open a UDP port: {error}"))
        exchange.send()
        return done

    def _tcp(self, query: dns.message.Message, server: _Server) -> Deferred[dns.message.Message]:
        done: Deferred[dns.message.Message] = Deferred(lambda d: exchange.abort())
        exchange = _TCPExchange(self._reactor, query, self._timeout, done)
        endpoint_type = TCP6ClientEndpoint if server.ipv6 else TCP4ClientEndpoint
        endpoint = endpoint_type(
            cast(IReactorTCP, self._reactor), server.host, server.port, timeout=self._timeout
        )
        exchange.start(connectProtocol(endpoint, exchange))
        return done

    # -- cache ---------------------------------------------------------

    def _cached(self, key: _Key) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= self._reactor.seconds():
            del self._cache[key]
            return None
        return entry

    def _store(self, key: _Key, entry: _Entry) -> None:
        now = self._reactor.seconds()
        expires = min(entry.expires, now + self._max_ttl)
        self._cache.pop(key, None)
        if expires <= now:
            return
        if len(self._cache) >= self._cache_size:
            for old in [k for k, e in self._cache.items() if e.expires <= now]:
                del self._cache[old]
            while len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = attrs.evolve(entry, expires=expires)


def _system_nameservers() -> list[tuple[str, int]]:
    """The nameservers of the system's configuration, at port 53."""
    try:
        configured = dns.resolver.Resolver(configure=True).nameservers
    except dns.exception.DNSException as error:
        raise ValueError(f"no system nameservers: {error}") from error
    servers = []
    for server in configured:
        try:
            servers.append((str(ipaddress.ip_address(str(server))), DNS_PORT))
        except ValueError:
            continue  # a DNS-over-HTTPS URL or the like
    return servers


def _read(
    response: dns.message.Message,
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    seen: set[dns.name.Name],
    budget: int,
) -> _Reading:
    """
    What *response* says of *qname*: follow its CNAMEs through the answer
    section (RFC 1034 §4.3.2 step 3.a) to the records of *rdtype*.

    The RCODE applies to the end of the chain (RFC 6604 §3). NXDOMAIN and
    NODATA are kept for the TTL of RFC 2308 §5. A chain that ends without
    data, without NXDOMAIN and without the SOA of a NODATA answer (RFC 2308
    §2.2) is incomplete: its end is asked again.
    """
    owner = qname
    chain_ttl = math.inf
    links = 0
    while True:
        data = response.get_rrset(response.answer, owner, _IN, rdtype)
        if data is not None and len(data) > 0:
            return _Reading(owner, True, tuple(data), data.ttl, chain_ttl, links, True)
        cname = response.get_rrset(response.answer, owner, _IN, dns.rdatatype.CNAME)
        if cname is None or len(cname) == 0:
            break
        if links >= budget:
            raise _Broken("CNAME chain too long")
        target = cast(dns.rdtypes.ANY.CNAME.CNAME, cname[0]).target
        if target in seen:
            raise _Broken(f"CNAME loop at {_text(target)}")
        seen.add(target)
        links += 1
        chain_ttl = min(chain_ttl, cname.ttl)
        owner = target
    negative = _negative_ttl(response, owner)
    if response.rcode() == dns.rcode.NXDOMAIN:
        return _Reading(owner, False, (), negative or 0.0, chain_ttl, links, True)
    if links and negative is None:
        return _Reading(owner, True, (), 0.0, chain_ttl, links, False)
    return _Reading(owner, True, (), negative or 0.0, chain_ttl, links, True)


def _negative_ttl(response: dns.message.Message, owner: dns.name.Name) -> float | None:
    """
    RFC 2308 §5: a negative answer lives for the lesser of the TTL of the SOA
    in its authority section and the SOA's MINIMUM field. ``None`` when
    there is no SOA of a zone holding *owner*: then it is not kept.
    """
    for rrset in response.authority:
        if (
            rrset.rdtype == dns.rdatatype.SOA
            and rrset.rdclass == _IN
            and len(rrset) > 0
            and owner.is_subdomain(rrset.name)
        ):
            soa = cast(dns.rdtypes.ANY.SOA.SOA, rrset[0])
            return float(min(rrset.ttl, soa.minimum, MAX_NEGATIVE_TTL))
    return None


def _match(data: bytes, query: dns.message.Message) -> dns.message.Message | None:
    """
    *data* parsed, when it answers *query* (RFC 5452 §9.1: same id, same
    question); ``None`` when it does not, and must be ignored.

    :raises _Truncated: it answers, with the TC flag.
    :raises _NoAnswer: it answers, but cannot be read.
    """
    try:
        head = dns.message.from_wire(data, question_only=True)
    except Exception:
        return None  # not even a header and question: not an answer at all
    question = query.question[0]
    if (
        head.id != query.id
        or not head.flags & dns.flags.QR
        or dns.opcode.from_flags(head.flags) != dns.opcode.QUERY
        or len(head.question) != 1
        or head.question[0].name != question.name
        or head.question[0].rdtype != question.rdtype
        or head.question[0].rdclass != question.rdclass
    ):
        return None
    if head.flags & dns.flags.TC:
        raise _Truncated()
    try:
        return dns.message.from_wire(data)
    except Exception as error:
        raise _NoAnswer(f"malformed answer ({type(error).__name__})") from None


class _UDPExchange(DatagramProtocol):
    """One query over UDP, on a port of its own, waiting for its answer."""

    noisy = False

    def __init__(
        self,
        clock: DNSReactor,
        query: dns.message.Message,
        server: _Server,
        timeout: float,
        done: Deferred[dns.message.Message],
    ) -> None:
        self._clock = clock
        self._query = query
        self._server = server
        self._timeout = timeout
        self._done = done
        self._timer: IDelayedCall | None = None
        self._finished = False

    def send(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._expired)
        if self.transport is None:
            self._finish(_NoAnswer("no UDP port"))
            return
        try:
            self.transport.write(self._query.to_wire(), (self._server.host, self._server.port))
        except OSError as error:
            self._finish(_NoAnswer(f"cannot send: {error}"))

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._finished or not self._server.sent(addr):
            return  # RFC 5452 §9.1: not from the server's address and port
        try:
            response = _match(datagram, self._query)
        except (_Truncated, _NoAnswer) as error:
            self._finish(error)
            return
        if response is not None:
            self._finish(response)

    def abort(self) -> None:
        """The caller gave up: stop waiting, quietly."""
        self._close()

    def _expired(self) -> None:
        self._timer = None
        self._finish(_NoAnswer(f"no answer in {self._timeout:g} s"))

    def _close(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.stopListening()

    def _finish(self, outcome: dns.message.Message | Exception) -> None:
        if self._finished:
            return
        self._close()
        if isinstance(outcome, Exception):
            self._done.errback(outcome)
        else:
            self._done.callback(outcome)


class _TCPExchange(Int16StringReceiver):
    """One query over TCP, with the two-octet length of RFC 1035 §4.2.2."""

    MAX_LENGTH = _MAX_MESSAGE

    def __init__(
        self,
        clock: DNSReactor,
        query: dns.message.Message,
        timeout: float,
        done: Deferred[dns.message.Message],
    ) -> None:
        self._clock = clock
        self._query = query
        self._timeout = timeout
        self._done = done
        self._connecting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._finished = False

    def start(self, connecting: Deferred[Any]) -> None:
        if self._finished:
            connecting.cancel()
            return
        self._connecting = connecting
        self._timer = self._clock.callLater(self._timeout, self._expired)
        connecting.addErrback(self._not_connected)

    def _not_connected(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._finish(_NoAnswer(f"TCP connection failed: {failure.getErrorMessage()}"))

    def connectionMade(self) -> None:
        self.sendString(self._query.to_wire())

    def stringReceived(self, string: bytes) -> None:
        try:
            response = _match(string, self._query)
        except _Truncated:
            self._finish(_NoAnswer("truncated answer over TCP"))
            return
        except _NoAnswer as error:
            self._finish(error)
            return
        if response is None:
            self._finish(_NoAnswer("answer over TCP does not match the query"))
        else:
            self._finish(response)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish(_NoAnswer("connection closed before the answer"))

    def abort(self) -> None:
        """The caller gave up: stop waiting, quietly."""
        self._close()

    def _expired(self) -> None:
        self._timer = None
        self._finish(_NoAnswer(f"no answer over TCP in {self._timeout:g} s"))

    def _close(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _finish(self, outcome: dns.message.Message | Exception) -> None:
        if self._finished:
            return
        self._close()
        if isinstance(outcome, Exception):
            self._done.errback(outcome)
        else:
            self._done.callback(outcome)


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _host_text(name: dns.name.Name) -> str:
    """A host name as IResolver writes it: no trailing dot; the root is ``"."``."""
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True)


def _address_text(record: dns.rdata.Rdata) -> str:
    return str(cast(dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA, record).address)

"""
Listeners behind a load balancer that speaks the PROXY protocol.

A ``haproxy:`` listener waits for the PROXY header (version 1 or 2, see
:class:`mailframe.core.ProxyHeaderParser`) before anything else happens on a
connection. Only once the header is whole is the SMTP session built, and the
transport it is given reports the addresses of the header: relay control,
connection limits, policies, ``Received:`` and the logs all see the client
that the proxy accepted, never the proxy. A header that is malformed or does
not arrive within :data:`HEADER_TIMEOUT` closes the connection before any
greeting is sent. Connections that wait for their header count toward
the listener's ``max_connections`` with the sessions: one over the limit is
closed at once.

Twisted's own ``haproxy:`` endpoint (:mod:`twisted.protocols.haproxy`)
starts the wrapped protocol before the header arrives, so a session would
see the proxy's address at connect. mailframe therefore takes the
``haproxy:`` prefix off itself (:func:`split_proxy`) and listens on the
endpoint that remains through a :class:`ProxyHeaderEndpoint`, or wraps a
factory with a :class:`ProxyHeaderFactory` where it has a port of its own.
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from mailframe import core

__all__ = [
    "HEADER_TIMEOUT",
    "PROXY_PREFIX",
    "ProxyHeaderEndpoint",
    "ProxyHeaderFactory",
    "ProxyHeaderProtocol",
    "UnnamedClient",
    "split_proxy",
]

#: The endpoint prefix of a listener behind a PROXY protocol load balancer.
PROXY_PREFIX = "haproxy:"
#: Seconds to wait for the whole PROXY header: Postfix's
#: ``smtpd_upstream_proxy_timeout``. The proxy sends it at once (§2 of
#: HAProxy's ``proxy-protocol.txt``), so a slow one is a broken one.
HEADER_TIMEOUT = 5.0


def split_proxy(description: str) -> tuple[bool, str]:
    """
    Take the ``haproxy:`` prefix (in any case) off a server endpoint string.

    ``"haproxy:tcp:25:interface=10.0.0.5"`` gives
    ``(True, "tcp:25:interface=10.0.0.5")``; a string without the prefix
    is returned as it is, with ``False``.
    """
    if description[: len(PROXY_PREFIX)].lower() == PROXY_PREFIX:
        return True, description[len(PROXY_PREFIX) :]
    return False, description


@implementer(interfaces.IAddress)
@attrs.frozen
class UnnamedClient:
    """
    The peer of a connection whose PROXY header named no client: a version
    2 ``LOCAL`` command (the proxy's own health check), a version 1
    ``UNKNOWN`` line, or a family other than TCP over IPv4 or IPv6.

    It is not an IP address, so the session has no client address: relay
    control refuses to relay for it, and no per-client limit counts it.
    The proxy's own address is kept for the logs only; nothing is ever
    decided on it.

    :ivar proxy: the address the connection really came from.
    """

    proxy: Any


class _ProxiedTransport:
    """
    The transport the wrapped protocol sees: the real one, except that
    ``getPeer`` and ``getHost`` report the addresses of the PROXY header.
    """

    def __init__(self, transport: Any, peer: Any, host: Any) -> None:
        self._transport = transport
        self._peer = peer
        self._host = host
        # Whatever the real transport provides (ITCPTransport, ITLSTransport,
        # IPushProducer...), this one does too, through __getattr__.
        directlyProvides(self, providedBy(transport))

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _address(address: core.ProxyAddress) -> IPv4Address | IPv6Address:
    if address.ipv6:
        return IPv6Address("TCP", address.host, address.port)
    return IPv4Address("TCP", address.host, address.port)


@implementer(interfaces.IHandshakeListener)
class ProxyHeaderProtocol(Protocol):
    """
    Reads the PROXY header of one connection, then hands the connection to
    a protocol of the wrapped factory, with the trailing bytes.

    Until the header is whole nothing is written to the connection. TLS
    started later by the wrapped protocol (STARTTLS) runs on the real
    transport; its completed handshake is passed on.
    """

    log = Logger()

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        self.factory = factory
        self.wrapped: interfaces.IProtocol | None = None
        self._parser = core.ProxyHeaderParser()
        self._timer: interfaces.IDelayedCall | None = None
        self._failed = False
        self._waiting = False

    def connectionMade(self) -> None:
        factory = self.factory
        limit = factory.max_connections
        if limit is not None and factory.waiting + factory.connected() >= limit:
            self._drop("Too many connections: closed the one from {proxy} before its"
                       " PROXY header (max_connections {limit})", limit=limit)
            return
        factory.waiting += 1
        self._waiting = True
        self._timer = factory.clock.callLater(factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self._failed:
            return
        try:
            result = self._parser.receive_data(data)
        except core.ProxyHeaderError as error:
            self._drop("Bad PROXY header from {proxy}: {error}", error=str(error))
            return
        if isinstance(result, core.HeaderReceived):
            self._start(result)

    def _start(self, received: core.HeaderReceived) -> None:
        assert self.transport is not None
        self._stop_timer()
        self._settle()
        header = received.header
        if header.source is None:
            peer: Any = UnnamedClient(self.transport.getPeer())
            self.log.info("PROXY header from {proxy} names no client (version {version})",
                          proxy=self.transport.getPeer(), version=header.version)
        else:
            peer = _address(header.source)
        host = (self.transport.getHost() if header.destination is None
                else _address(header.destination))
        wrapped = self.factory.wrapped_factory.buildProtocol(peer)
        if wrapped is None:
            self.transport.loseConnection()
            return
        self.wrapped = wrapped
        wrapped.makeConnection(_ProxiedTransport(self.transport, peer, host))
        if received.trailing and not getattr(self.transport, "disconnecting", False):
            wrapped.dataReceived(received.trailing)

    def _timed_out(self) -> None:
        self._timer = None
        self._drop("No PROXY header from {proxy} within {timeout} s",
                   timeout=self.factory.timeout)

    def _drop(self, format: str, **fields: Any) -> None:
        """Log why, and close the connection: nothing is ever written to it."""
        assert self.transport is not None
        self._failed = True
        self._stop_timer()
        self._settle()
        self.log.info(format, proxy=self.transport.getPeer(), **fields)
        self.transport.loseConnection()

    def _settle(self) -> None:
        """The connection no longer waits for its header."""
        if self._waiting:
            self._waiting = False
            self.factory.waiting -= 1

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def handshakeCompleted(self) -> None:
        wrapped = self.wrapped
        if interfaces.IHandshakeListener.providedBy(wrapped):
            cast(interfaces.IHandshakeListener, wrapped).handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        self._settle()
        wrapped, self.wrapped = self.wrapped, None
        if wrapped is not None:
            wrapped.connectionLost(reason)


class ProxyHeaderFactory(Factory):
    """
    Wraps *wrapped_factory* so that each of its protocols starts only after
    a valid PROXY header, and sees the addresses the header names.

    :param wrapped_factory: the factory of the protocol behind the header,
        such as an :class:`~mailframe.protocols.SMTPServerFactory`. Its
        ``buildProtocol`` is given the client address of the header.
    :param clock: the clock for the header timeout.
    :param timeout: seconds to wait for the whole header.
    :param max_connections: the most connections at once, counting those
        that wait for their header with the wrapped factory's ``connected``
        ones (if it counts them); ``None`` for no limit.
    :ivar waiting: the connections waiting for their header now.
    """

    protocol = ProxyHeaderProtocol

    def __init__(self, wrapped_factory: interfaces.IProtocolFactory,
                 clock: interfaces.IReactorTime,
                 timeout: float = HEADER_TIMEOUT,
                 max_connections: int | None = None) -> None:
        self.wrapped_factory = wrapped_factory
        self.clock = clock
        self.timeout = timeout
        self.max_connections = max_connections
        self.waiting = 0

    def connected(self) -> int:
        """The wrapped factory's connections, for those that count them."""
        count = getattr(self.wrapped_factory, "connected", None)
        return int(count) if count is not None else 0

    def buildProtocol(self, addr: Any) -> ProxyHeaderProtocol:
        return ProxyHeaderProtocol(self)

    def doStart(self) -> None:
        self.wrapped_factory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.wrapped_factory.doStop()
        super().doStop()


@implementer(interfaces.IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    A server endpoint that listens on *endpoint* with each factory wrapped
    in a :class:`ProxyHeaderFactory`, so that whoever listens on it (a
    :class:`~mailframe.services.listener.ListeningService`) keeps the
    factory it gave, and can shut it down.
    """

    def __init__(self, endpoint: interfaces.IStreamServerEndpoint,
                 clock: interfaces.IReactorTime, timeout: float = HEADER_TIMEOUT,
                 max_connections: int | None = None) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.timeout = timeout
        self.max_connections = max_connections

    def listen(
        self, protocolFactory: interfaces.IProtocolFactory
    ) -> Deferred[interfaces.IListeningPort]:
        return self.endpoint.listen(
            ProxyHeaderFactory(protocolFactory, self.clock, self.timeout,
                               self.max_connections))

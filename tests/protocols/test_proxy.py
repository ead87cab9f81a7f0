"""
The PROXY header wrapper on fake transports and a fake clock: the SMTP
session starts only after a whole, valid header, and sees the client the
header names, in relay control, limits, ``Received:`` and logs.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.core._proxy import V2_SIGNATURE
from mailframe.policies import LocalRecipients, RelayControl
from mailframe.policies.relay import LOOPBACK
from mailframe.protocols.proxy import (
    HEADER_TIMEOUT,
    ProxyHeaderEndpoint,
    ProxyHeaderFactory,
    ProxyHeaderProtocol,
    UnnamedClient,
    split_proxy,
)
from mailframe.protocols.server import SMTPServerFactory, SMTPServerProtocol
from tests.protocols.test_server import LOCAL, SESSION, make_factory, take

#: Where the proxy itself connects from: loopback, a relay network by default.
PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 51000)
PROXY_HOST = IPv4Address("TCP", "127.0.0.1", 2525)


def v1(source: str = "192.0.2.10", port: int = 40001, family: str = "TCP4") -> bytes:
    destination = "2001:db8::25" if family == "TCP6" else "198.51.100.1"
    return f"PROXY {family} {source} {destination} {port} 25\r\n".encode()


def v2(source: str = "192.0.2.10", port: int = 40001, command: int = 1) -> bytes:
    ip = ipaddress.ip_address(source)
    destination = ipaddress.ip_address("2001:db8::25" if ip.version == 6 else "198.51.100.1")
    family = 0x21 if ip.version == 6 else 0x11
    block = ip.packed + destination.packed + struct.pack("!HH", port, 25)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


#: A version 2 LOCAL header: the proxy's health check.
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


def wrap(
    smtp: SMTPServerFactory, clock: MemoryReactorClock, events: list[dict[str, Any]] | None = None
) -> tuple[ProxyHeaderProtocol, StringTransport]:
    """Connect a wrapper from the proxy's own address."""
    protocol = ProxyHeaderFactory(smtp, clock).buildProtocol(PROXY_PEER)
    if events is not None:
        protocol.log = Logger(observer=events.append)
    transport = StringTransport(hostAddress=PROXY_HOST, peerAddress=PROXY_PEER)
    protocol.makeConnection(transport)
    return protocol, transport


def session(protocol: ProxyHeaderProtocol) -> SMTPServerProtocol:
    assert isinstance(protocol.wrapped, SMTPServerProtocol)
    return protocol.wrapped


class HeaderTests(SynchronousTestCase):
    def test_session_starts_after_the_header_and_sees_its_addresses(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(factory.sessions, frozenset())
        protocol.dataReceived(v2())
        self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])
        smtp = session(protocol)
        self.assertEqual(smtp.client.address, "192.0.2.10")
        self.assertEqual(smtp.client.port, 40001)
        assert smtp.transport is not None
        self.assertEqual(smtp.transport.getPeer(), IPv4Address("TCP", "192.0.2.10", 40001))
        self.assertEqual(smtp.transport.getHost(), IPv4Address("TCP", "198.51.100.1", 25))
        self.assertEqual(factory.sessions, frozenset({smtp}))

    def test_ipv6_client(self) -> None:
        factory, _, clock = make_factory()
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(v1("2001:db8::7", 1234, "TCP6"))
        smtp = session(protocol)
        self.assertEqual(smtp.client.address, "2001:db8::7")
        assert smtp.transport is not None
        self.assertEqual(smtp.transport.getPeer(), IPv6Address("TCP", "2001:db8::7", 1234))

    def test_short_reads(self) -> None:
        for header in (v1(), v2()):
            factory, _, clock = make_factory()
            protocol, transport = wrap(factory, clock)
            for index in range(len(header) - 1):
                protocol.dataReceived(header[index : index + 1])
                clock.advance(HEADER_TIMEOUT / (2 * len(header)))
            self.assertIsNone(protocol.wrapped)
            self.assertEqual(transport.value(), b"")
            protocol.dataReceived(header[-1:])
            self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])
            self.assertEqual(session(protocol).client.address, "192.0.2.10")

    def test_smtp_in_the_same_read_as_the_header(self) -> None:
        factory, store, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v2() + SESSION)
        lines = take(transport)
        self.assertEqual(lines[0], "220 mx.example.com ESMTP mailframe")
        self.assertEqual(lines[-1], "221 2.0.0 Bye")
        [queued] = [line for line in lines if "queued as" in line]
        message = self.successResultOf(store.open_message(queued.rsplit(" ", 1)[1])).read()
        self.assertTrue(message.startswith(
            b"Received: from client.example (unknown [192.0.2.10])\r\n"), message[:80])
        entry = self.successResultOf(store.get(queued.rsplit(" ", 1)[1]))
        self.assertEqual(entry.envelope.client.address, "192.0.2.10")

    def test_later_reads_reach_the_session(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v1())
        take(transport)
        protocol.dataReceived(b"EHLO client.example\r\n")
        self.assertEqual(take(transport)[0], "250-mx.example.com")
        self.assertEqual(session(protocol).client.helo, "client.example")

    def test_session_idle_timeout_still_holds(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v1())
        take(transport)
        clock.advance(HEADER_TIMEOUT * 2)
        self.assertFalse(transport.disconnecting)
        clock.advance(300)
        self.assertEqual(take(transport), ["421 4.4.2 Error: timeout exceeded"])

    def test_connection_lost_reaches_the_session(self) -> None:
        factory, _, clock = make_factory()
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(v2())
        self.assertEqual(len(factory.sessions), 1)
        protocol.connectionLost()
        self.assertEqual(factory.sessions, frozenset())
        self.assertIsNone(protocol.wrapped)

    def test_tls_handshake_reaches_the_session(self) -> None:
        factory, _, clock = make_factory()
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(v2())
        smtp = session(protocol)
        self.assertIsNone(smtp.client.tls)
        protocol.handshakeCompleted()
        self.assertEqual(smtp.client.tls, "TLS")

    def test_session_transport_is_the_real_one_but_for_addresses(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v2())
        smtp = session(protocol)
        assert smtp.transport is not None
        self.assertEqual(smtp.transport.getPeer(), IPv4Address("TCP", "192.0.2.10", 40001))
        # Everything else is the real transport's.
        self.assertIs(smtp.transport.write.__self__, transport)  # type: ignore[attr-defined]
        smtp.transport.pauseProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "paused")


class RefusedHeaderTests(SynchronousTestCase):
    def assertDropped(self, data: bytes, why: str) -> None:
        factory, _, clock = make_factory()
        events: list[dict[str, Any]] = []
        protocol, transport = wrap(factory, clock, events)
        protocol.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(protocol.wrapped)
        self.assertEqual(factory.sessions, frozenset())
        [event] = events
        self.assertEqual(event["proxy"], PROXY_PEER)
        self.assertIn(why, event["error"])
        # Whatever follows is ignored: no greeting, ever.
        protocol.dataReceived(b"EHLO client.example\r\n")
        self.assertEqual(transport.value(), b"")

    def test_smtp_without_a_header(self) -> None:
        self.assertDropped(b"EHLO client.example\r\n", "not a PROXY header")

    def test_malformed_v1(self) -> None:
        self.assertDropped(b"PROXY TCP4 192.0.2.010 198.51.100.1 1 25\r\n", "192.0.2.010")
        self.assertDropped(b"PROXY TCP4 192.0.2.10 198.51.100.1 1 25\n", "CRLF")
        self.assertDropped(b"PROXY UNKNOWN " + b"x" * 200, "no CRLF")

    def test_malformed_v2(self) -> None:
        self.assertDropped(V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "version 3")
        self.assertDropped(V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "too short")
        self.assertDropped(V2_SIGNATURE + b"\x21\x11\xff\xff", "longer than")

    def test_timeout(self) -> None:
        factory, _, clock = make_factory()
        events: list[dict[str, Any]] = []
        protocol, transport = wrap(factory, clock, events)
        protocol.dataReceived(v2()[:10])
        clock.advance(HEADER_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(protocol.wrapped)
        [event] = events
        self.assertEqual((event["proxy"], event["timeout"]), (PROXY_PEER, HEADER_TIMEOUT))
        protocol.dataReceived(v2()[10:])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(factory.sessions, frozenset())

    def test_timeout_is_cancelled_by_the_header(self) -> None:
        factory, _, clock = make_factory()
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(v2())
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 300.0)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_timeout_is_cancelled_when_the_connection_goes(self) -> None:
        factory, _, clock = make_factory()
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(b"PROXY")
        protocol.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])


class RelayTests(SynchronousTestCase):
    """The proxy is on loopback, a relay network; its clients are not."""

    def relay_reply(self, header: bytes, networks: Any = LOOPBACK) -> str:
        factory, _, clock = make_factory([RelayControl(LOCAL, networks), LocalRecipients(LOCAL)])
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(header + b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n"
                              b"RCPT TO:<someone@elsewhere.example>\r\n")
        return take(transport)[-1]

    def test_client_outside_the_relay_networks_is_refused(self) -> None:
        self.assertTrue(self.relay_reply(v2()).startswith("554 5.7.1 "))
        self.assertTrue(self.relay_reply(v1()).startswith("554 5.7.1 "))

    def test_client_inside_the_relay_networks_may_relay(self) -> None:
        networks = (ipaddress.ip_network("192.0.2.0/24"),)
        self.assertEqual(self.relay_reply(v2(), networks), "250 2.1.5 OK")
        # And the proxy's own address no longer helps.
        networks = (ipaddress.ip_network("198.51.100.0/24"),)
        self.assertTrue(self.relay_reply(v2(), networks).startswith("554 5.7.1 "))

    def test_header_naming_no_client_never_relays(self) -> None:
        for header in (V2_LOCAL, b"PROXY UNKNOWN\r\n",
                       b"PROXY UNKNOWN 127.0.0.1 127.0.0.1 1 25\r\n"):
            self.assertTrue(self.relay_reply(header).startswith("554 5.7.1 "), header)
        # Even when every address may relay.
        everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
        self.assertTrue(self.relay_reply(V2_LOCAL, everything).startswith("554 5.7.1 "))

    def test_header_naming_no_client_gives_no_address(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(V2_LOCAL)
        smtp = session(protocol)
        self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])
        self.assertEqual(smtp.client.address, "")
        assert smtp.transport is not None
        self.assertEqual(smtp.transport.getPeer(), UnnamedClient(PROXY_PEER))
        self.assertEqual(smtp.transport.getHost(), PROXY_HOST)

    def test_local_mail_is_still_accepted_from_no_client(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(V2_LOCAL + SESSION)
        lines = take(transport)
        self.assertTrue(any("queued as" in line for line in lines), lines)


class LimitTests(SynchronousTestCase):
    def test_per_client_limit_counts_the_header_address(self) -> None:
        factory, _, clock = make_factory(max_per_client=1)
        # Two clients through one proxy address: each has its own count.
        for source in ("192.0.2.10", "192.0.2.11"):
            protocol, transport = wrap(factory, clock)
            protocol.dataReceived(v2(source))
            self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v2("192.0.2.10", 40002))
        self.assertEqual(take(transport), [
            "421 4.7.0 mx.example.com Error: too many connections from 192.0.2.10"])
        self.assertTrue(transport.disconnecting)

    def test_health_checks_are_not_one_client(self) -> None:
        factory, _, clock = make_factory(max_per_client=1)
        for _ in range(3):
            protocol, transport = wrap(factory, clock)
            protocol.dataReceived(V2_LOCAL)
            self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])

    def test_total_limit_counts_sessions_behind_the_proxy(self) -> None:
        factory, _, clock = make_factory(max_connections=1)
        protocol, _ = wrap(factory, clock)
        protocol.dataReceived(v2("192.0.2.10"))
        protocol, transport = wrap(factory, clock)
        protocol.dataReceived(v2("192.0.2.11"))
        self.assertEqual(take(transport), ["421 4.7.0 mx.example.com Error: too many connections"])


class WaitingLimitTests(SynchronousTestCase):
    """Connections waiting for their header count toward max_connections."""

    def setUp(self) -> None:
        self.smtp, _, self.clock = make_factory(max_connections=3)
        self.proxy = ProxyHeaderFactory(self.smtp, self.clock, max_connections=3)
        self.events: list[dict[str, Any]] = []

    def connect(self) -> tuple[ProxyHeaderProtocol, StringTransport]:
        protocol = self.proxy.buildProtocol(PROXY_PEER)
        protocol.log = Logger(observer=self.events.append)
        transport = StringTransport(hostAddress=PROXY_PEER, peerAddress=PROXY_PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_waiting_and_connected_together(self) -> None:
        first, _ = self.connect()
        self.connect()
        first.dataReceived(v2("192.0.2.10"))
        self.assertEqual((self.proxy.waiting, self.smtp.connected), (1, 1))
        self.connect()
        self.assertEqual(self.proxy.waiting, 2)
        # Two waiting and one session: the next is closed before its header.
        over, transport = self.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.proxy.waiting, 2)
        self.assertEqual(self.events[-1]["limit"], 3)
        self.assertIn("before its PROXY header", self.events[-1]["log_format"])
        over.connectionLost()
        self.assertEqual(self.proxy.waiting, 2)
        # Each way out of waiting frees its place: a timeout, a bad header, a
        # lost connection.
        self.clock.advance(HEADER_TIMEOUT)
        self.assertEqual(self.proxy.waiting, 0)
        fourth, _ = self.connect()
        fourth.dataReceived(b"GET / HTTP/1.0\r\n")
        fifth, _ = self.connect()
        fifth.connectionLost()
        self.assertEqual(self.proxy.waiting, 0)
        sixth, transport = self.connect()
        sixth.dataReceived(v2("192.0.2.11"))
        self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])
        self.assertEqual((self.proxy.waiting, self.smtp.connected), (0, 2))

    def test_no_limit_by_default(self) -> None:
        proxy = ProxyHeaderFactory(self.smtp, self.clock)
        for _ in range(10):
            protocol = proxy.buildProtocol(PROXY_PEER)
            protocol.makeConnection(StringTransport(peerAddress=PROXY_PEER))
        self.assertEqual(proxy.waiting, 10)

    def test_the_endpoint_passes_the_limit_on(self) -> None:
        inner = RecordingEndpoint()
        ProxyHeaderEndpoint(inner, self.clock, max_connections=7).listen(self.smtp)
        self.assertEqual(inner.factories[0].max_connections, 7)


class SplitTests(SynchronousTestCase):
    def test_split_proxy(self) -> None:
        self.assertEqual(split_proxy("haproxy:tcp:25:interface=10.0.0.5"),
                         (True, "tcp:25:interface=10.0.0.5"))
        self.assertEqual(split_proxy("HAProxy:tcp6:25"), (True, "tcp6:25"))
        self.assertEqual(split_proxy("haproxy:"), (True, ""))
        self.assertEqual(split_proxy("tcp:25"), (False, "tcp:25"))
        self.assertEqual(split_proxy("unix:/run/haproxy:x"), (False, "unix:/run/haproxy:x"))
        self.assertEqual(split_proxy("haproxy"), (False, "haproxy"))


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    def __init__(self) -> None:
        self.factories: list[Factory] = []

    def listen(self, factory: Factory) -> Any:
        self.factories.append(factory)
        return succeed("port")


class EndpointTests(SynchronousTestCase):
    def test_endpoint_listens_with_the_wrapper(self) -> None:
        smtp, _, clock = make_factory()
        inner = RecordingEndpoint()
        endpoint = ProxyHeaderEndpoint(inner, clock, timeout=2.0)
        verifyObject(IStreamServerEndpoint, endpoint)
        self.assertEqual(self.successResultOf(endpoint.listen(smtp)), "port")
        [wrapper] = inner.factories
        assert isinstance(wrapper, ProxyHeaderFactory)
        self.assertIs(wrapper.wrapped_factory, smtp)
        self.assertEqual((wrapper.clock, wrapper.timeout), (clock, 2.0))

    def test_factory_starts_and_stops_the_wrapped_one(self) -> None:
        started: list[str] = []

        class Recording(Factory):
            def startFactory(self) -> None:
                started.append("start")

            def stopFactory(self) -> None:
                started.append("stop")

        wrapper = ProxyHeaderFactory(Recording(), MemoryReactorClock())
        wrapper.doStart()
        wrapper.doStop()
        self.assertEqual(started, ["start", "stop"])

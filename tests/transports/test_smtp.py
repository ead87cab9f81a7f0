"""
Tests for the SMTP transport on a fake network: a MemoryReactorClock whose
TCP connections are joined with :mod:`twisted.test.iosim` to mailframe's
own SMTP server (or to a scripted peer), on fake time.
"""

from __future__ import annotations

import pathlib
import random
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.envelope import (
    BodyType,
    DeliveryStatus,
    DSNOptions,
    Envelope,
    Handoff,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.protocols._tls import ServerTLS
from mailframe.protocols.server import ServerSettings, SMTPServerFactory
from mailframe.reply import Reply
from mailframe.testing import (
    MemoryQueueStore,
    MemoryResolver,
    RecordingPolicy,
    TransportContract,
)
from mailframe.transports import SMTPTransport, SMTPTransportSettings
from mailframe.verdict import Action, Verdict
from tests.certs import make_certificates

RECEIVED = (b"Received: from client.example (unknown [192.0.2.7])\r\n"
            b"\tby relay.example (mailframe) with ESMTP id Q1; Thu, 1 Jan 2026 00:00:00 +0000\r\n")
BODY = (b"From: sender@example.com\r\nSubject: test\r\n\r\n"
        b".a line with a dot\r\n.\r\n" + b"x" * 1500 + b"\r\nlast\r\n")
MESSAGE = RECEIVED + BODY


class ClientSide(iosim.FakeTransport):
    """A client transport whose TLS handshake succeeds, or fails when told."""

    def __init__(self, protocol: Any, network: Network, address: str) -> None:
        super().__init__(protocol, isServer=False)
        self.network = network
        self.address = address

    def startTLS(self, options: Any, normal: bool = True) -> None:
        self.network.handshakes.append((self.address, options))
        if self.address in self.network.tls_fails:
            self.disconnectReason = ConnectionLost("sslv3 alert handshake failure")
            self.loseConnection()
        else:
            self.network.reactor.callLater(0, self.protocol.handshakeCompleted)


class ServerSide(iosim.FakeTransport):
    """A server transport whose STARTTLS just goes on (the client's side decides)."""

    def startTLS(self, options: Any, normal: bool = True) -> None:
        self.tls_options = options
        self.protocol.handshakeCompleted()


class Network:
    """TCP on a MemoryReactorClock: each connectTCP reaches a listener or is refused."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.listeners: dict[tuple[str, int], Callable[[], Protocol]] = {}
        self.pumps: list[iosim.IOPump] = []
        self.connects: list[tuple[str, int, Any]] = []
        self.handshakes: list[tuple[str, Any]] = []
        self.tls_fails: set[str] = set()
        self.servers: list[ServerSide] = []

    def listen(self, address: str, port: int, make: Callable[[], Protocol]) -> None:
        self.listeners[(address, port)] = make

    def run(self, rounds: int = 1000) -> None:
        """Connect, and move bytes, until nothing moves."""
        for _ in range(rounds):
            moved = self._connect()
            for pump in list(self.pumps):
                if pump.flush():
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            self.reactor.advance(0)
            if not moved and not self.reactor.tcpClients:
                return
        raise AssertionError("the network did not settle")

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.run()

    def _connect(self) -> bool:
        moved = False
        while self.reactor.tcpClients:
            host, port, factory, _, bind = self.reactor.tcpClients.pop(0)
            connector = self.reactor.connectors.pop(0)
            self.connects.append((host, port, bind))
            moved = True
            make = self.listeners.get((host, port))
            if make is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            kind = IPv6Address if ":" in host else IPv4Address
            client = factory.buildProtocol(kind("TCP", host, port))
            server = make()
            client_io = ClientSide(client, self, host)
            server_io = ServerSide(server, isServer=True,
                                   peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
            self.servers.append(server_io)
            self.pumps.append(iosim.connect(server, server_io, client, client_io,
                                            greet=False, clock=self.reactor))
        return moved

    @property
    def open(self) -> int:
        return len(self.pumps)


class MailServer:
    """A mailframe SMTP server on the fake network, with a memory queue."""

    def __init__(self, network: Network, address: str, port: int = 25,
                 policies: list[Any] | None = None, **settings: Any) -> None:
        self.store = MemoryQueueStore(network.reactor)
        settings.setdefault("hostname", "mx.example.org")
        self.factory = SMTPServerFactory(ServerSettings(**settings), self.store,
                                         policies or [], network.reactor)
        self.sessions = 0
        network.listen(address, port, self._build)

    def _build(self) -> Protocol:
        self.sessions += 1
        return self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))

    def messages(self) -> list[tuple[Any, bytes]]:
        """Each queued message: its envelope and its octets."""
        out = []
        for entry in self._sync(self.store.list()):
            out.append((entry.envelope, self._sync(self.store.open_message(entry.queue_id))
                        .read()))
        return out

    @staticmethod
    def _sync(d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        return results[0]


def without_received(message: bytes) -> bytes:
    """*message* without the Received: field that the receiving server added."""
    assert message.startswith(b"Received: ")
    lines = message.split(b"\r\n")
    end = 1
    while lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\r\n".join(lines[end:])


class Harness:
    def __init__(self, test: SynchronousTestCase, **settings: Any) -> None:
        self.test = test
        self.network = Network()
        self.resolver = MemoryResolver(
            mx={"example.org": [(10, "mx1.example.org"), (20, "mx2.example.org")]},
            addresses={"mx1.example.org": ["192.0.2.1"], "mx2.example.org": ["192.0.2.2"],
                       "relay.example.net": ["2001:db8::25", "192.0.2.25"]},
        )
        self.store = MemoryQueueStore(Clock())
        settings.setdefault("helo_name", "relay.example")
        self.settings = SMTPTransportSettings(**settings)
        self.transport = SMTPTransport(self.store, self.network.reactor, self.resolver,
                                       random.Random(5), self.settings)

    def queue(self, *recipients: str, message: bytes = MESSAGE, **fields: Any) -> QueueEntry:
        writer = self.store.open_writer()
        writer.write(message)
        rcpts = tuple(Mailbox.parse(r, utf8=True) for r in recipients or ("bob@example.org",))
        env = Envelope(Mailbox("sender", "example.com"), rcpts, **fields)
        queue_id = self.test.successResultOf(writer.commit(env))
        entry = self.test.successResultOf(self.store.get(queue_id))
        assert entry is not None
        return entry

    def start(self, entry: QueueEntry, route: Route,
              recipients: list[Mailbox] | None = None) -> Deferred[list[RecipientResult]]:
        rcpts = entry.envelope.recipients if recipients is None else recipients
        return self.transport.deliver(entry, [(r, r) for r in rcpts], route)

    def deliver(self, entry: QueueEntry, route: Route,
                recipients: list[Mailbox] | None = None) -> list[RecipientResult]:
        d = self.start(entry, route, recipients)
        self.network.run()
        results: list[RecipientResult] = self.test.successResultOf(d)
        return results


MX = Route("smtp", {"domain": "example.org"})


def codes(results: list[RecipientResult]) -> list[tuple[str, int]]:
    return [(r.status.value, r.reply.code) for r in results]


class ContractTests(TransportContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness(self, tls="none")
        MailServer(self.harness.network, "192.0.2.1")

    def make_transport(self) -> SMTPTransport:
        return self.harness.transport

    def sample_delivery(self) -> tuple[QueueEntry, list[tuple[Mailbox, Mailbox]], Route]:
        entry = self.harness.queue("bob@example.org", "carol@example.org")
        return entry, [(r, r) for r in entry.envelope.recipients], MX

    def wait(self, d: Any) -> Any:
        self.harness.network.run()
        return self.successResultOf(d)


class DeliveryTests(SynchronousTestCase):
    def test_mx_delivery_byte_for_byte(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        entry = harness.queue("bob@example.org", "carol@example.org",
                              added_headers=("X-Spam: no", "X-Checked: yes"))
        results = harness.deliver(entry, MX)
        self.assertEqual(codes(results), [("delivered", 250)] * 2)
        self.assertEqual({r.remote for r in results}, {"mx1.example.org"})
        self.assertEqual([r.original for r in results], list(entry.envelope.recipients))
        [(env, message)] = server.messages()
        self.assertEqual([str(r) for r in env.recipients],
                         ["bob@example.org", "carol@example.org"])
        self.assertEqual(str(env.sender), "sender@example.com")
        self.assertEqual(without_received(message),
                         b"X-Spam: no\r\nX-Checked: yes\r\n" + MESSAGE)
        self.assertEqual(harness.network.connects, [("192.0.2.1", 25, None)])

    def test_smarthost_by_name_ipv6_first(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "2001:db8::25", 587)
        entry = harness.queue("bob@elsewhere.example")
        results = harness.deliver(entry, Route("smtp", {"nexthop": "relay.example.net:587"}))
        self.assertEqual(codes(results), [("delivered", 250)])
        self.assertEqual(results[0].remote, "relay.example.net")
        self.assertEqual(len(server.messages()), 1)
        # No MX lookup for a smarthost.
        self.assertNotIn(("mx", "relay.example.net"), harness.resolver.queries)

    def test_smarthost_literals(self) -> None:
        harness = Harness(self, tls="none")
        MailServer(harness.network, "192.0.2.9", 2525)
        MailServer(harness.network, "::1", 2526)
        for nexthop in ("192.0.2.9:2525", "[192.0.2.9]:2525", "[::1]:2526", "[IPv6:::1]:2526"):
            entry = harness.queue("bob@elsewhere.example")
            results = harness.deliver(entry, Route("smtp", {"nexthop": nexthop}))
            self.assertEqual(codes(results), [("delivered", 250)], nexthop)
        self.assertEqual(harness.resolver.queries, [])

    def test_smarthost_without_port_is_25(self) -> None:
        harness = Harness(self, tls="none", port=2525)
        MailServer(harness.network, "192.0.2.9")
        results = harness.deliver(harness.queue(), Route("smtp", {"nexthop": "192.0.2.9"}))
        self.assertEqual(codes(results), [("delivered", 250)])

    def test_route_without_arguments_goes_by_recipient_domain(self) -> None:
        harness = Harness(self, tls="none")
        harness.resolver.mx["example.net"] = [(5, "mx.example.net")]
        harness.resolver.addresses["mx.example.net"] = ["192.0.2.50"]
        first = MailServer(harness.network, "192.0.2.1")
        second = MailServer(harness.network, "192.0.2.50")
        entry = harness.queue("bob@example.org", "dave@example.net", "carol@example.org")
        results = harness.deliver(entry, Route("smtp"))
        self.assertEqual(codes(results), [("delivered", 250)] * 3)
        self.assertEqual([r.remote for r in results],
                         ["mx1.example.org", "mx.example.net", "mx1.example.org"])
        self.assertEqual(len(first.messages()), 1)
        self.assertEqual(len(second.messages()), 1)

    def test_address_literal_domain(self) -> None:
        harness = Harness(self, tls="none")
        MailServer(harness.network, "192.0.2.77")
        entry = harness.queue("bob@[192.0.2.77]")
        self.assertEqual(codes(harness.deliver(entry, Route("smtp"))), [("delivered", 250)])

    def test_per_recipient_results(self) -> None:
        harness = Harness(self, tls="none")

        def rcpt(client: Any, sender: Any, recipient: Mailbox, parameters: Any) -> Verdict:
            if recipient.local_part == "gone":
                return Verdict.reject(550, "5.1.1", "No such user")
            if recipient.local_part == "busy":
                return Verdict(Action.TEMPFAIL, Reply(450, "4.2.1", "Busy"))
            return Verdict()

        MailServer(harness.network, "192.0.2.1", policies=[RecordingPolicy({"rcpt": rcpt})])
        entry = harness.queue("gone@example.org", "bob@example.org", "busy@example.org")
        results = harness.deliver(entry, MX)
        self.assertEqual(codes(results), [("permanent", 550), ("delivered", 250),
                                          ("transient", 450)])
        self.assertEqual(results[0].reply, Reply(550, "5.1.1", "No such user"))

    def test_batches_of_fifty(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        recipients = [f"user{i}@example.org" for i in range(120)]
        entry = harness.queue(*recipients)
        results = harness.deliver(entry, MX)
        self.assertEqual(codes(results), [("delivered", 250)] * 120)
        self.assertEqual([str(r.recipient) for r in results], recipients)
        messages = server.messages()
        self.assertEqual(sorted(len(env.recipients) for env, _ in messages), [20, 50, 50])
        self.assertEqual(server.sessions, 1)

    def test_size_and_8bitmime_rules(self) -> None:
        harness = Harness(self, tls="none")
        from mailframe.core import Limits

        MailServer(harness.network, "192.0.2.1", limits=Limits(max_message_size=100))
        results = harness.deliver(harness.queue(), MX)
        self.assertEqual([(r.status, r.reply.status) for r in results],
                         [(DeliveryStatus.PERMANENT, "5.3.4")])

    def test_smtputf8_message_goes_with_smtputf8(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        message = RECEIVED + "Subject: gr\u00fc\u00dfe\r\n\r\nhi\r\n".encode()
        entry = harness.queue("j\u00f6rg@example.org", message=message, smtputf8=True)
        self.assertEqual(codes(harness.deliver(entry, MX)), [("delivered", 250)])
        [(env, delivered)] = server.messages()
        self.assertTrue(env.smtputf8)
        self.assertEqual(without_received(delivered), message)

    def test_smtputf8_flag_on_an_ascii_message(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1", smtputf8=False)
        entry = harness.queue(smtputf8=True, body=BodyType.EIGHT_BIT_MIME)
        self.assertEqual(codes(harness.deliver(entry, MX)), [("delivered", 250)])
        [(env, _)] = server.messages()
        self.assertFalse(env.smtputf8)
        self.assertIs(env.body, BodyType.EIGHT_BIT_MIME)
        entry = harness.queue(smtputf8=True, message=RECEIVED + "Subject: \u00e9\r\n\r\n".encode())
        [result] = harness.deliver(entry, MX)
        self.assertEqual((result.status, result.reply.status),
                         (DeliveryStatus.PERMANENT, "5.6.9"))

    def test_source_address(self) -> None:
        harness = Harness(self, tls="none", source_address="192.0.2.200",
                          source_address6="2001:db8::200")
        MailServer(harness.network, "192.0.2.1")
        MailServer(harness.network, "2001:db8::25", 587)
        harness.deliver(harness.queue(), MX)
        harness.deliver(harness.queue(), Route("smtp", {"nexthop": "relay.example.net:587"}))
        self.assertEqual(harness.network.connects, [
            ("192.0.2.1", 25, ("192.0.2.200", 0)), ("2001:db8::25", 587, ("2001:db8::200", 0))])

    def test_unreadable_message(self) -> None:
        harness = Harness(self, tls="none")
        entry = harness.queue()
        self.successResultOf(harness.store.delete(entry.queue_id))
        [result] = harness.deliver(entry, MX)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.3.0"))
        self.flushLoggedErrors()

    def test_bad_routes(self) -> None:
        harness = Harness(self)
        for args in ({"nexthop": "[::1"}, {"nexthop": "relay:99999"}, {"tls": "maybe"},
                     {"nexthop": "a:1", "domain": "b"}, {"domain": "not a domain"}):
            [result] = harness.deliver(harness.queue(), Route("smtp", args))
            self.assertEqual((result.status, result.reply.status),
                             (DeliveryStatus.TRANSIENT, "4.3.5"), args)

    def test_rejecting_route(self) -> None:
        harness = Harness(self)
        route = Route("smtp", reject=Reply(550, "5.7.1", "No"))
        self.assertEqual(codes(harness.deliver(harness.queue(), route)), [("permanent", 550)])


class DSNTests(SynchronousTestCase):
    """RFC 3461 §5.2: the DSN parameters go on to a next hop that offers DSN."""

    BOB_OPTIONS = DSNOptions(frozenset({"SUCCESS", "FAILURE"}), "rfc822;Bob+1=x@example.org")

    def queue_with_dsn(self, harness: Harness) -> QueueEntry:
        bob = Mailbox("bob", "example.org")
        return harness.queue("bob@example.org", "carol@example.org", "dave@example.org",
                             ret="HDRS", envid="env id+1",
                             dsn=((bob, self.BOB_OPTIONS),
                                  (Mailbox("dave", "example.org"),
                                   DSNOptions(frozenset({"NEVER"})))))

    def test_parameters_are_passed_on(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        entry = self.queue_with_dsn(harness)
        results = harness.deliver(entry, MX)
        self.assertEqual(codes(results), [("delivered", 250)] * 3)
        self.assertEqual({r.handoff for r in results}, {Handoff.PASSED_ON})
        [(env, _)] = server.messages()
        # What the next hop received is what the envelope had.
        self.assertEqual((env.ret, env.envid), ("HDRS", "env id+1"))
        self.assertEqual(env.dsn, entry.envelope.dsn)

    def test_nothing_to_a_next_hop_without_dsn(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1", dsn=False)
        results = harness.deliver(self.queue_with_dsn(harness), MX)
        self.assertEqual(codes(results), [("delivered", 250)] * 3)
        self.assertEqual({r.handoff for r in results}, {Handoff.RELAYED})
        [(env, _)] = server.messages()
        self.assertEqual((env.ret, env.envid, env.dsn), (None, None, ()))

    def test_orcpt_names_the_original_when_the_router_changed_the_address(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        entry = self.queue_with_dsn(harness)
        bob, carol, dave = entry.envelope.recipients
        joerg = Mailbox("j\u00f6rg", "example.org")
        entry = attrs.evolve(entry, envelope=attrs.evolve(
            entry.envelope, recipients=(bob, carol, dave, joerg)))
        expanded = [Mailbox(name, "example.org") for name in ("b1", "c1", "d1", "j1")]
        pairs = [*zip(expanded, [bob, carol, dave, joerg], strict=True), (carol, carol)]
        d = harness.transport.deliver(entry, pairs, MX)
        harness.network.run()
        results = self.successResultOf(d)
        self.assertEqual(codes(results), [("delivered", 250)] * 5)
        self.assertEqual([r.original for r in results], [bob, carol, dave, joerg, carol])
        [(env, _)] = server.messages()
        self.assertEqual(env.dsn, (
            # ORCPT as the original recipient gave it.
            (expanded[0], self.BOB_OPTIONS),
            # None given: ORCPT names the envelope's recipient (RFC 3461
            # §5.2.1), in utf-8-addr-xtext when it is not ASCII (RFC 6533).
            (expanded[1], DSNOptions(orcpt="rfc822;carol@example.org")),
            (expanded[2], DSNOptions(frozenset({"NEVER"}), "rfc822;dave@example.org")),
            (expanded[3], DSNOptions(orcpt="utf-8;j\\x{F6}rg@example.org")),
            # Not changed by the router, and no options: nothing.
        ))
        self.assertFalse(env.smtputf8)


class HostTests(SynchronousTestCase):
    """MX errors, and moving from host to host."""

    def test_mx_errors(self) -> None:
        harness = Harness(self)
        resolver = harness.resolver
        resolver.mx.update({"null.example": [(0, ".")], "loop.example": [(10, "relay.example")],
                            "noaddr.example": [(10, "nowhere.example")]})
        resolver.nxdomain.add("nxdomain.example")
        resolver.failing.add("servfail.example")
        resolver.strict = True
        for domain, status, reply in [
            ("null.example", "permanent", "5.1.10"),
            ("loop.example", "permanent", "5.4.6"),
            ("nxdomain.example", "permanent", "5.1.2"),
            ("servfail.example", "transient", "4.4.3"),
            ("noaddr.example", "transient", "4.4.4"),
        ]:
            entry = harness.queue(f"bob@{domain}")
            [result] = harness.deliver(entry, Route("smtp", {"domain": domain}))
            self.assertEqual((result.status.value, result.reply.status), (status, reply), domain)
        resolver.strict = False
        [result] = harness.deliver(harness.queue("bob@nohost.example"),
                                   Route("smtp", {"domain": "nohost.example"}))
        self.assertEqual((result.status.value, result.reply.status), ("permanent", "5.4.4"))
        self.assertEqual(harness.network.connects, [])

    def test_smarthost_lookup_failures_are_transient(self) -> None:
        harness = Harness(self)
        harness.resolver.nxdomain.add("gone.example.net")
        [result] = harness.deliver(harness.queue(),
                                   Route("smtp", {"nexthop": "gone.example.net:25"}))
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.4.3"))

    def test_refused_connection_moves_on(self) -> None:
        harness = Harness(self, tls="none")
        MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.remote),
                         (DeliveryStatus.DELIVERED, "mx2.example.org"))
        self.assertEqual([c[0] for c in harness.network.connects], ["192.0.2.1", "192.0.2.2"])

    def test_5xx_greeting_moves_on(self) -> None:
        harness = Harness(self, tls="none")
        refuse = RecordingPolicy({"connect": Verdict.reject(554, "5.7.1", "No service")})
        MailServer(harness.network, "192.0.2.1", policies=[refuse])
        MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.remote),
                         (DeliveryStatus.DELIVERED, "mx2.example.org"))

    def test_every_host_refusing_is_transient(self) -> None:
        harness = Harness(self, tls="none")
        refuse = RecordingPolicy({"connect": Verdict.reject(554, "5.7.1", "No service")})
        MailServer(harness.network, "192.0.2.1", policies=[refuse])
        MailServer(harness.network, "192.0.2.2", policies=[refuse])
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply.code), (DeliveryStatus.TRANSIENT, 451))
        self.assertIn("No service", result.reply.text[0])
        self.assertEqual(harness.network.open, 0)

    def test_5xx_to_helo_is_final(self) -> None:
        harness = Harness(self, tls="none")
        refuse = RecordingPolicy({"helo": Verdict.reject(550, "5.7.1", "Go away")})
        MailServer(harness.network, "192.0.2.1", policies=[refuse])
        second = MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply),
                         (DeliveryStatus.PERMANENT, Reply(550, "5.7.1", "Go away")))
        self.assertEqual(second.sessions, 0)

    def test_silent_server_times_out_and_moves_on(self) -> None:
        harness = Harness(self, tls="none")
        harness.network.listen("192.0.2.1", 25, Protocol)
        MailServer(harness.network, "192.0.2.2")
        d = harness.start(harness.queue(), MX)
        harness.network.run()
        self.assertNoResult(d)
        harness.network.advance(harness.settings.limits.greeting_timeout)
        [result] = self.successResultOf(d)
        self.assertEqual(result.remote, "mx2.example.org")

    def test_max_addresses(self) -> None:
        harness = Harness(self, tls="none", max_addresses=1)
        MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.4.1"))
        self.assertEqual(len(harness.network.connects), 1)


class TLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        work = pathlib.Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        certs = make_certificates(work)
        self.server_tls = ServerTLS(str(certs.cert), str(certs.key))
        self.ca = str(certs.ca)

    def test_may_uses_starttls(self) -> None:
        harness = Harness(self)
        server = MailServer(harness.network, "192.0.2.1", tls=self.server_tls)
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual([a for a, _ in harness.network.handshakes], ["192.0.2.1"])
        [(_, message)] = server.messages()
        self.assertIn(b"with ESMTPS id", message)

    def test_may_falls_back_to_plaintext_on_a_new_connection(self) -> None:
        harness = Harness(self)
        server = MailServer(harness.network, "192.0.2.1", tls=self.server_tls)
        harness.network.tls_fails.add("192.0.2.1")
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual([c[0] for c in harness.network.connects], ["192.0.2.1", "192.0.2.1"])
        self.assertEqual(len(harness.network.handshakes), 1)
        [(_, message)] = server.messages()
        self.assertIn(b"with ESMTP id", message)

    def test_encrypt_fails_transiently_without_starttls(self) -> None:
        harness = Harness(self, tls="encrypt")
        MailServer(harness.network, "192.0.2.1")
        MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.7.4"))
        self.assertEqual(len(harness.network.connects), 2)

    def test_verify_failure_does_not_fall_back(self) -> None:
        harness = Harness(self, tls="verify", trust_roots=[self.ca])
        MailServer(harness.network, "192.0.2.1", tls=self.server_tls)
        MailServer(harness.network, "192.0.2.2", tls=self.server_tls)
        harness.network.tls_fails.update({"192.0.2.1", "192.0.2.2"})
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.7.5"))
        # Each host once: no plaintext under "verify".
        self.assertEqual([c[0] for c in harness.network.connects], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual([options._hostname for _, options in harness.network.handshakes],
                         ["mx1.example.org", "mx2.example.org"])

    def test_policy_by_destination_and_route(self) -> None:
        harness = Harness(self, tls="none", tls_policies={"Example.ORG.": "encrypt"})
        MailServer(harness.network, "192.0.2.1")
        MailServer(harness.network, "192.0.2.2")
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual(result.reply.status, "4.7.4")
        route = Route("smtp", {"domain": "example.org", "tls": "none"})
        self.assertEqual(codes(harness.deliver(harness.queue(), route)), [("delivered", 250)])

    def test_auth_to_a_smarthost(self) -> None:
        harness = Harness(self, credentials=("alice", "s3cret"))
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        server = MailServer(harness.network, "192.0.2.25", 587, tls=self.server_tls,
                            auth="required", checker=checker)
        entry = harness.queue("bob@elsewhere.example", auth="sender@example.com")
        results = harness.deliver(entry, Route("smtp", {"nexthop": "[192.0.2.25]:587"}))
        self.assertEqual(codes(results), [("delivered", 250)])
        [(env, message)] = server.messages()
        self.assertIn(b"(Authenticated sender: alice)", message)
        self.assertEqual(env.auth, "sender@example.com")

    def test_credentials_never_go_to_mx_hosts(self) -> None:
        harness = Harness(self, credentials=("alice", "s3cret"))
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        server = MailServer(harness.network, "192.0.2.1", tls=self.server_tls,
                            auth="offered", checker=checker)
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        [(_, message)] = server.messages()
        self.assertNotIn(b"Authenticated sender", message)

    def test_bad_credentials(self) -> None:
        harness = Harness(self, credentials=("alice", "wrong"))
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        MailServer(harness.network, "192.0.2.25", 587, tls=self.server_tls,
                   auth="required", checker=checker)
        d = harness.start(harness.queue(), Route("smtp", {"nexthop": "192.0.2.25:587"}))
        harness.network.run()
        harness.network.advance(5)
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.7.8"))

    def test_trust_roots_are_checked(self) -> None:
        with self.assertRaises(ValueError):
            Harness(self, trust_roots=["/nonexistent/ca.pem"])


class ReuseTests(SynchronousTestCase):
    def test_idle_connection_is_reused_then_closed(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        for _ in range(3):
            self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual(server.sessions, 1)
        self.assertEqual(len(server.messages()), 3)
        self.assertEqual(harness.transport.open_connections, 1)
        harness.network.advance(harness.settings.idle_timeout - 1)
        self.assertEqual(harness.transport.open_connections, 1)
        harness.network.advance(1)
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(harness.network.open, 0)
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])
        harness.deliver(harness.queue(), MX)
        self.assertEqual(server.sessions, 2)

    def test_messages_per_connection(self) -> None:
        harness = Harness(self, tls="none", messages_per_connection=2)
        server = MailServer(harness.network, "192.0.2.1")
        for _ in range(5):
            harness.deliver(harness.queue(), MX)
        self.assertEqual(server.sessions, 3)

    def test_idle_connection_closed_by_the_server(self) -> None:
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        harness.deliver(harness.queue(), MX)
        harness.network.servers[0].loseConnection()
        harness.network.run()
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual(server.sessions, 2)

    def test_connection_lost_as_it_is_reused(self) -> None:
        """The server closed an idle connection as MAIL was sent: try a new one."""
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        harness.deliver(harness.queue(), MX)
        first = harness.network.servers[0]
        first.protocol.dataReceived = lambda data: first.loseConnection()
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual(server.sessions, 2)

    def test_lost_after_the_final_dot_is_not_retried(self) -> None:
        """The message may have arrived: transient, and no second copy now."""
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        harness.deliver(harness.queue(), MX)
        first = harness.network.servers[0]
        receive = first.protocol.dataReceived

        def drop_at_the_dot(data: bytes) -> None:
            if data.endswith(b"\r\n.\r\n"):
                first.loseConnection()
            else:
                receive(data)

        first.protocol.dataReceived = drop_at_the_dot
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.4.2"))
        self.assertIn("may have been delivered", result.reply.text[0])
        self.assertEqual(server.sessions, 1)
        self.assertEqual(harness.transport.open_connections, 0)

    def test_reuse_after_a_failed_transaction(self) -> None:
        harness = Harness(self, tls="none")
        refuse = RecordingPolicy({"rcpt": Verdict.reject(550, "5.1.1", "No such user")})
        server = MailServer(harness.network, "192.0.2.1", policies=[refuse])
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("permanent", 550)])
        server.factory.policies = []
        self.assertEqual(codes(harness.deliver(harness.queue(), MX)), [("delivered", 250)])
        self.assertEqual(server.sessions, 1)

    def test_concurrency_limit(self) -> None:
        harness = Harness(self, tls="none", connections_per_destination=2)
        server = MailServer(harness.network, "192.0.2.1")
        waiting = [harness.start(harness.queue(), MX) for _ in range(5)]
        self.assertEqual(len(harness.network.reactor.tcpClients), 2)
        harness.network.run()
        for d in waiting:
            self.assertEqual(codes(self.successResultOf(d)), [("delivered", 250)])
        self.assertEqual(server.sessions, 2)
        self.assertEqual(len(server.messages()), 5)

    def test_waiters_get_a_slot_when_a_connection_fails(self) -> None:
        harness = Harness(self, tls="none", connections_per_destination=1)
        refuse = RecordingPolicy({"connect": Verdict.reject(554, "5.7.1", "No service")})
        MailServer(harness.network, "192.0.2.1", policies=[refuse])
        MailServer(harness.network, "192.0.2.2", policies=[refuse])
        first = harness.start(harness.queue(), MX)
        second = harness.start(harness.queue(), MX)
        harness.network.run()
        for d in (first, second):
            self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.TRANSIENT)
        self.assertEqual(len(harness.network.connects), 4)

    def test_stop(self) -> None:
        harness = Harness(self, tls="none", connections_per_destination=1)
        server = MailServer(harness.network, "192.0.2.1")
        harness.deliver(harness.queue(), MX)
        busy = harness.start(harness.queue(), MX)
        waiting = harness.start(harness.queue(), MX)
        stopped = harness.transport.stop()
        [result] = self.successResultOf(waiting)
        self.assertEqual(result.reply.status, "4.3.2")
        self.assertNoResult(stopped)
        harness.network.run()
        self.assertEqual(codes(self.successResultOf(busy)), [("delivered", 250)])
        self.successResultOf(stopped)
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(len(server.messages()), 2)
        [result] = harness.deliver(harness.queue(), MX)
        self.assertEqual(result.reply.status, "4.3.2")

    def test_idle_time_counts_from_the_last_message(self) -> None:
        """A connection reused before its idle timeout gets the whole timeout again."""
        harness = Harness(self, tls="none")
        server = MailServer(harness.network, "192.0.2.1")
        idle = harness.settings.idle_timeout
        harness.deliver(harness.queue(), MX)
        harness.network.advance(idle - 1)
        harness.deliver(harness.queue(), MX)
        harness.network.advance(idle - 1)
        self.assertEqual(harness.transport.open_connections, 1)
        harness.network.advance(1)
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(server.sessions, 1)
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])

    def test_stop_when_idle(self) -> None:
        harness = Harness(self, tls="none")
        MailServer(harness.network, "192.0.2.1")
        harness.deliver(harness.queue(), MX)
        stopped = harness.transport.stop()
        harness.network.run()
        self.successResultOf(stopped)
        self.assertEqual(harness.network.open, 0)
        # No timer is left behind.
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])
        self.successResultOf(Harness(self).transport.stop())

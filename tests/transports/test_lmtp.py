"""
Tests for the LMTP transport on a fake network: a MemoryReactorClock whose
TCP and UNIX connections are joined with :mod:`twisted.test.iosim` to a
scripted LMTP server, on fake time.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext, Config
from mailframe.core import ClientLimits
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
from mailframe.reply import Reply
from mailframe.testing import ComponentMakerContract, MemoryQueueStore, TransportContract
from mailframe.transports.lmtp import (
    LMTPTransport,
    LMTPTransportSettings,
    lmtp_maker,
    parse_endpoint,
)

RECEIVED = (b"Received: from client.example (unknown [192.0.2.7])\r\n"
            b"\tby relay.example (mailframe) with ESMTP id Q1; Thu, 1 Jan 2026 00:00:00 +0000\r\n")
BODY = (b"From: sender@example.com\r\nSubject: test\r\n\r\n"
        b".a line with a dot\r\n.\r\n..\r\n" + b"x" * 998 + b"\r\nlast\r\n")
MESSAGE = RECEIVED + BODY

TCP = "tcp:host=192.0.2.24:port=24"
UNIX = "unix:path=/run/dovecot/lmtp"
ROUTE = Route("lmtp", {"endpoint": TCP})

#: What the scripted server answers to LHLO: the extensions of Dovecot's.
EXTENSIONS = ("8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING")


def saved(address: str) -> str:
    return f"250 2.0.0 <{address}> Saved"


class LMTPPeer:
    """
    What a scripted LMTP server does, and what it received.

    :ivar rcpt: the reply to RCPT for an address.
    :ivar final: the reply after the final dot for each accepted address.
    :ivar drop_after: close the connection after this many replies after
        the dot.
    :ivar silent_after: send no more replies after this many after the dot.
    :ivar drop_in_data: close the connection as message data arrives.
    """

    def __init__(self, extensions: tuple[str, ...] = EXTENSIONS) -> None:
        self.greeting = "220 lmtp.example Dovecot ready."
        self.extensions = extensions
        self.lhlo: str | None = None
        self.rcpt: Callable[[str], str] = lambda address: "250 2.1.5 OK"
        self.final: Callable[[str], str] = saved
        self.drop_after: int | None = None
        self.silent_after: int | None = None
        self.drop_in_data = False
        self.sessions = 0
        self.commands: list[str] = []
        self.raw: list[bytes] = []
        #: Each message: its MAIL line, its accepted recipients, its octets.
        self.messages: list[tuple[str, list[str], bytes]] = []

    def build(self) -> Protocol:
        return LMTPServer(self)


class LMTPServer(LineReceiver):
    """A scripted LMTP server (RFC 2033): replies as its :class:`LMTPPeer` says."""

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, peer: LMTPPeer) -> None:
        self.peer = peer
        self.mail = ""
        self.accepted: list[str] = []
        self.lines: list[bytes] | None = None

    def connectionMade(self) -> None:
        self.peer.sessions += 1
        self.reply(self.peer.greeting)

    def reply(self, text: str) -> None:
        self.transport.write(text.encode("utf-8") + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.lines is not None:
            self.peer.raw.append(data)
            if self.peer.drop_in_data:
                self.transport.loseConnection()
                return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            if line != b".":
                # RFC 5321 §4.5.2: a leading dot was doubled.
                self.lines.append(line[1:] if line.startswith(b".") else line)
                return
            self.end_of_data(b"".join(piece + b"\r\n" for piece in self.lines))
            return
        text = line.decode("utf-8")
        self.peer.commands.append(text)
        verb = text.split(" ", 1)[0].upper()
        if verb == "LHLO":
            self.peer.lhlo = text[5:]
            lines = ["lmtp.example", *self.peer.extensions]
            self.transport.write(b"".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{item}\r\n".encode()
                for i, item in enumerate(lines)))
        elif verb == "MAIL":
            self.mail, self.accepted = text, []
            self.reply("250 2.1.0 OK")
        elif verb == "RCPT":
            address = text.split("<", 1)[1].split(">", 1)[0]
            answer = self.peer.rcpt(address)
            if answer.startswith("2"):
                self.accepted.append(address)
            self.reply(answer)
        elif verb == "DATA":
            if not self.accepted:
                # RFC 2033 §4.2.
                self.reply("503 5.5.1 No valid recipients")
                return
            self.lines = []
            self.reply("354 OK")
        elif verb == "RSET":
            self.accepted = []
            self.reply("250 2.0.0 OK")
        elif verb == "QUIT":
            self.reply("221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.reply("500 5.5.1 Unknown command")

    def end_of_data(self, message: bytes) -> None:
        self.lines = None
        accepted, self.accepted = self.accepted, []
        self.peer.messages.append((self.mail, accepted, message))
        for index, address in enumerate(accepted):
            if index == self.peer.drop_after:
                self.transport.loseConnection()
                return
            if index == self.peer.silent_after:
                return
            self.reply(self.peer.final(address))


class Network:
    """TCP and UNIX connections on a MemoryReactorClock, to listeners or refused."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.listeners: dict[object, Callable[[], Protocol]] = {}
        #: Destinations that never answer: connections to them stay pending.
        self.blackholes: set[object] = set()
        self.pumps: list[iosim.IOPump] = []
        self.connects: list[object] = []
        self.servers: list[iosim.FakeTransport] = []

    def listen(self, where: object, make: Callable[[], Protocol]) -> None:
        """Listen at ``(host, port)`` or at a UNIX socket path."""
        self.listeners[where] = make

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
            if not moved and not self._pending():
                return
        raise AssertionError("the network did not settle")

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.run()

    def _pending(self) -> bool:
        return any(self._where(c) not in self.blackholes for c in self.reactor.connectors)

    @staticmethod
    def _where(connector: Any) -> object:
        destination = connector.getDestination()
        if isinstance(destination, UNIXAddress):
            return os.fsdecode(destination.name)
        return (destination.host, destination.port)

    def _connect(self) -> bool:
        moved = False
        for connector in list(self.reactor.connectors):
            where = self._where(connector)
            if where in self.blackholes:
                continue
            self.reactor.connectors.remove(connector)
            if isinstance(where, tuple):
                [client_entry] = [c for c in self.reactor.tcpClients if (c[0], c[1]) == where]
                self.reactor.tcpClients.remove(client_entry)
                factory = client_entry[2]
            else:
                [client_entry] = [c for c in self.reactor.unixClients if c[0] == where]
                self.reactor.unixClients.remove(client_entry)
                factory = client_entry[1]
            self.connects.append(where)
            moved = True
            make = self.listeners.get(where)
            if make is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            client = factory.buildProtocol(connector.getDestination())
            server = make()
            client_io = iosim.FakeTransport(client, isServer=False)
            server_io = iosim.FakeTransport(server, isServer=True,
                                            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
            self.servers.append(server_io)
            self.pumps.append(iosim.connect(server, server_io, client, client_io,
                                            greet=False, clock=self.reactor))
        return moved

    @property
    def open(self) -> int:
        return len(self.pumps)


class Harness:
    def __init__(self, test: SynchronousTestCase, **settings: Any) -> None:
        self.test = test
        self.network = Network()
        self.peer = LMTPPeer()
        self.network.listen(("192.0.2.24", 24), self.peer.build)
        self.network.listen("/run/dovecot/lmtp", self.peer.build)
        self.store = MemoryQueueStore(Clock())
        settings.setdefault("lhlo_name", "relay.example")
        self.settings = LMTPTransportSettings(**settings)
        self.transport = LMTPTransport(self.store, self.network.reactor, self.settings)

    def queue(self, *recipients: str, message: bytes = MESSAGE, **fields: Any) -> QueueEntry:
        writer = self.store.open_writer()
        writer.write(message)
        rcpts = tuple(Mailbox.parse(r, utf8=True)
                      for r in recipients or ("alice@example.org", "bob@example.org"))
        env = Envelope(Mailbox("sender", "example.com"), rcpts, **fields)
        queue_id = self.test.successResultOf(writer.commit(env))
        entry = self.test.successResultOf(self.store.get(queue_id))
        assert entry is not None
        return entry

    def start(self, entry: QueueEntry, route: Route = ROUTE) -> Any:
        pairs = [(r, r) for r in entry.envelope.recipients]
        return self.transport.deliver(entry, pairs, route)

    def deliver(self, entry: QueueEntry, route: Route = ROUTE) -> list[RecipientResult]:
        d = self.start(entry, route)
        self.network.run()
        results: list[RecipientResult] = self.test.successResultOf(d)
        return results


def codes(results: list[RecipientResult]) -> list[tuple[str, int]]:
    return [(r.status.value, r.reply.code) for r in results]


class ContractTests(TransportContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness(self)

    def make_transport(self) -> LMTPTransport:
        return self.harness.transport

    def sample_delivery(self) -> tuple[QueueEntry, list[tuple[Mailbox, Mailbox]], Route]:
        entry = self.harness.queue()
        return entry, [(r, r) for r in entry.envelope.recipients], ROUTE

    def wait(self, d: Any) -> Any:
        self.harness.network.run()
        return self.successResultOf(d)


class DeliveryTests(SynchronousTestCase):
    def test_a_reply_for_each_recipient_after_the_dot(self) -> None:
        harness = Harness(self)
        replies = {"alice@example.org": saved("alice@example.org"),
                   "bob@example.org": "451 4.2.0 <bob@example.org> Internal error occurred",
                   "carol@example.org": "552 5.2.2 <carol@example.org> Quota exceeded"}
        harness.peer.final = replies.__getitem__
        entry = harness.queue(*replies, added_headers=("X-Spam: no",))
        results = harness.deliver(entry)
        self.assertEqual(codes(results), [("delivered", 250), ("transient", 451),
                                          ("permanent", 552)])
        for result, address in zip(results, replies, strict=True):
            self.assertEqual(str(result.recipient), address)
            self.assertIn(f"<{address}>", result.reply.text[0])
            self.assertEqual(result.original, result.recipient)
            self.assertEqual(result.remote, TCP)
        self.assertEqual(results[0].handoff, Handoff.DELIVERED)
        self.assertEqual(results[2].reply, Reply(552, "5.2.2",
                                                 "<carol@example.org> Quota exceeded"))
        # One transaction; the message as stored, with the added field
        # first and no Return-Path (the LMTP server adds it).
        [(mail, accepted, message)] = harness.peer.messages
        self.assertEqual(mail, "MAIL FROM:<sender@example.com>")
        self.assertEqual(accepted, list(replies))
        self.assertEqual(message, b"X-Spam: no\r\n" + MESSAGE)
        # Dot-stuffed on the wire (RFC 5321 §4.5.2).
        self.assertIn(b"\r\n..a line with a dot\r\n..\r\n...\r\n", b"".join(harness.peer.raw))
        self.assertEqual(harness.peer.lhlo, "relay.example")
        self.assertEqual(harness.peer.commands[0], "LHLO relay.example")
        self.assertNotIn("EHLO", " ".join(harness.peer.commands))
        self.assertEqual(harness.peer.commands[-1], "QUIT")
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(harness.network.open, 0)

    def test_refusals_at_rcpt(self) -> None:
        harness = Harness(self)
        refusals = {"gone@example.org": "550 5.1.1 <gone@example.org> User doesn't exist",
                    "full@example.org": "452 4.2.2 <full@example.org> Mailbox full"}
        harness.peer.rcpt = lambda address: refusals.get(address, "250 2.1.5 OK")
        entry = harness.queue("gone@example.org", "alice@example.org", "full@example.org",
                              "bob@example.org")
        results = harness.deliver(entry)
        self.assertEqual(codes(results), [("permanent", 550), ("delivered", 250),
                                          ("transient", 452), ("delivered", 250)])
        self.assertIn("<alice@example.org>", results[1].reply.text[0])
        self.assertIn("<bob@example.org>", results[3].reply.text[0])
        [(_, accepted, _)] = harness.peer.messages
        self.assertEqual(accepted, ["alice@example.org", "bob@example.org"])

    def test_every_recipient_refused(self) -> None:
        harness = Harness(self)
        harness.peer.rcpt = lambda address: f"550 5.1.1 <{address}> User doesn't exist"
        results = harness.deliver(harness.queue())
        self.assertEqual(codes(results), [("permanent", 550)] * 2)
        self.assertEqual(harness.peer.messages, [])

    def test_without_pipelining(self) -> None:
        harness = Harness(self)
        harness.peer.extensions = ("8BITMIME", "ENHANCEDSTATUSCODES")
        harness.peer.rcpt = lambda address: (
            "550 5.1.1 No such user" if address.startswith("gone") else "250 2.1.5 OK")
        entry = harness.queue("alice@example.org", "gone@example.org", "bob@example.org")
        self.assertEqual(codes(harness.deliver(entry)), [("delivered", 250), ("permanent", 550),
                                                         ("delivered", 250)])

    def test_unix_socket(self) -> None:
        harness = Harness(self)
        results = harness.deliver(harness.queue(), Route("lmtp", {"endpoint": UNIX}))
        self.assertEqual(codes(results), [("delivered", 250)] * 2)
        self.assertEqual({r.remote for r in results}, {UNIX})
        self.assertEqual(harness.network.connects, ["/run/dovecot/lmtp"])

    def test_endpoint_of_the_settings(self) -> None:
        harness = Harness(self, endpoint=UNIX)
        results = harness.deliver(harness.queue(), Route("lmtp"))
        self.assertEqual(codes(results), [("delivered", 250)] * 2)
        # The route's own endpoint comes first.
        harness.deliver(harness.queue(), ROUTE)
        self.assertEqual(harness.network.connects, ["/run/dovecot/lmtp", ("192.0.2.24", 24)])

    def test_batches_on_one_connection(self) -> None:
        harness = Harness(self, recipients_per_transaction=2)
        recipients = [f"user{i}@example.org" for i in range(5)]
        results = harness.deliver(harness.queue(*recipients))
        self.assertEqual(codes(results), [("delivered", 250)] * 5)
        self.assertEqual([str(r.recipient) for r in results], recipients)
        self.assertEqual([accepted for _, accepted, _ in harness.peer.messages],
                         [recipients[0:2], recipients[2:4], recipients[4:]])
        self.assertEqual(harness.peer.sessions, 1)

    def test_a_failed_batch_does_not_stop_the_next(self) -> None:
        harness = Harness(self, recipients_per_transaction=1)
        harness.peer.final = lambda address: (
            "451 4.3.0 Temporary failure" if address.startswith("alice") else saved(address))
        results = harness.deliver(harness.queue())
        self.assertEqual(codes(results), [("transient", 451), ("delivered", 250)])
        self.assertIn("RSET", harness.peer.commands)
        self.assertEqual(harness.peer.sessions, 1)

    def test_expanded_recipients_keep_their_original(self) -> None:
        harness = Harness(self)
        entry = harness.queue("list@example.org")
        original = entry.envelope.recipients[0]
        members = [Mailbox("alice", "example.org"), Mailbox("bob", "example.org")]
        d = harness.transport.deliver(entry, [(m, original) for m in members], ROUTE)
        harness.network.run()
        results = self.successResultOf(d)
        self.assertEqual([r.recipient for r in results], members)
        self.assertEqual({r.original for r in results}, {original})

    def test_8bitmime_and_smtputf8(self) -> None:
        harness = Harness(self)
        harness.peer.extensions = (*EXTENSIONS, "SMTPUTF8")
        message = RECEIVED + "Subject: gr\u00fc\u00dfe\r\n\r\nh\u00e9\r\n".encode()
        entry = harness.queue("j\u00f6rg@example.org", message=message, smtputf8=True,
                              body=BodyType.EIGHT_BIT_MIME)
        self.assertEqual(codes(harness.deliver(entry)), [("delivered", 250)])
        self.assertEqual(harness.peer.commands[1],
                         "MAIL FROM:<sender@example.com> BODY=8BITMIME SMTPUTF8")
        self.assertEqual(harness.peer.messages[0][2], message)

    def test_binary_messages_are_not_sent(self) -> None:
        harness = Harness(self)
        entry = harness.queue(body=BodyType.BINARY_MIME)
        results = harness.deliver(entry)
        self.assertEqual([(r.status, r.reply.status) for r in results],
                         [(DeliveryStatus.PERMANENT, "5.6.3")] * 2)
        self.assertEqual(harness.peer.messages, [])

    def test_unreadable_message(self) -> None:
        harness = Harness(self)
        entry = harness.queue()
        self.successResultOf(harness.store.delete(entry.queue_id))
        results = harness.deliver(entry)
        self.assertEqual([(r.status, r.reply.status) for r in results],
                         [(DeliveryStatus.TRANSIENT, "4.3.0")] * 2)
        self.assertEqual(harness.network.connects, [])
        self.flushLoggedErrors()

    def test_bad_routes(self) -> None:
        harness = Harness(self)
        for args in ({}, {"endpoint": ""}, {"endpoint": "bogus:x"},
                     {"endpoint": "tcp:host=lmtp.example"},
                     {"endpoint": "tcp:host=lmtp.example:port=twenty-four"}):
            results = harness.deliver(harness.queue(), Route("lmtp", args))
            self.assertEqual([(r.status, r.reply.status) for r in results],
                             [(DeliveryStatus.TRANSIENT, "4.3.5")] * 2, args)
        self.assertEqual(harness.network.connects, [])

    def test_rejecting_route(self) -> None:
        harness = Harness(self)
        route = Route("lmtp", reject=Reply(550, "5.1.1", "No such user"))
        self.assertEqual(codes(harness.deliver(harness.queue(), route)), [("permanent", 550)] * 2)

    def test_no_recipients(self) -> None:
        harness = Harness(self)
        entry = harness.queue()
        self.assertEqual(self.successResultOf(harness.transport.deliver(entry, [], ROUTE)), [])


class DSNTests(SynchronousTestCase):
    """RFC 3461 §5.2.2: the parameters go to a server that offers DSN."""

    OPTIONS = DSNOptions(frozenset({"SUCCESS", "FAILURE"}), "rfc822;alice@example.org")

    def queue(self, harness: Harness) -> QueueEntry:
        alice = Mailbox("alice", "example.org")
        return harness.queue(ret="HDRS", envid="env-1", dsn=((alice, self.OPTIONS),))

    def test_parameters_when_offered(self) -> None:
        harness = Harness(self)
        harness.peer.extensions = (*EXTENSIONS, "DSN")
        results = harness.deliver(self.queue(harness))
        self.assertEqual(codes(results), [("delivered", 250)] * 2)
        # Final delivery: a SUCCESS notification is ours to send.
        self.assertEqual({r.handoff for r in results}, {Handoff.DELIVERED})
        self.assertEqual(harness.peer.commands[1:4], [
            "MAIL FROM:<sender@example.com> RET=HDRS ENVID=env-1",
            "RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.org",
            "RCPT TO:<bob@example.org>",
        ])

    def test_none_when_not_offered(self) -> None:
        harness = Harness(self)
        results = harness.deliver(self.queue(harness))
        self.assertEqual({r.handoff for r in results}, {Handoff.DELIVERED})
        self.assertEqual(harness.peer.commands[1:4], [
            "MAIL FROM:<sender@example.com>",
            "RCPT TO:<alice@example.org>",
            "RCPT TO:<bob@example.org>",
        ])


class FailureTests(SynchronousTestCase):
    """Failures of the connection are transient for every recipient left."""

    def assert_transient(self, results: list[RecipientResult], status: str,
                         count: int = 2) -> None:
        self.assertEqual([(r.status, r.reply.status) for r in results],
                         [(DeliveryStatus.TRANSIENT, status)] * count)

    def test_connection_refused(self) -> None:
        harness = Harness(self)
        route = Route("lmtp", {"endpoint": "tcp:host=192.0.2.99:port=24"})
        results = harness.deliver(harness.queue(), route)
        self.assert_transient(results, "4.4.1")
        self.assertIn("tcp:host=192.0.2.99:port=24", results[0].reply.text[0])

    def test_missing_unix_socket(self) -> None:
        harness = Harness(self)
        results = harness.deliver(harness.queue(), Route("lmtp", {"endpoint": "unix:path=/gone"}))
        self.assert_transient(results, "4.4.1")

    def test_connect_timeout(self) -> None:
        harness = Harness(self, connect_timeout=20)
        harness.network.blackholes.add(("192.0.2.24", 24))
        d = harness.start(harness.queue())
        harness.network.run()
        harness.network.advance(19)
        self.assertNoResult(d)
        harness.network.advance(1)
        results = self.successResultOf(d)
        self.assert_transient(results, "4.4.1")
        self.assertIn("no connection in 20 seconds", results[0].reply.text[0])
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])

    def test_refused_greeting(self) -> None:
        harness = Harness(self)
        harness.peer.greeting = "554 5.3.2 Not now"
        self.assert_transient(harness.deliver(harness.queue()), "4.3.2")

    def test_refused_lhlo_is_transient(self) -> None:
        """An SMTP server on the LMTP port: a mistake of configuration."""
        harness = Harness(self)
        harness.peer.extensions = ()
        original = LMTPServer.lineReceived

        def smtp_only(server: LMTPServer, line: bytes) -> None:
            if line.upper().startswith(b"LHLO"):
                server.reply("500 5.5.2 Error: command not recognized")
            else:
                original(server, line)

        self.patch(LMTPServer, "lineReceived", smtp_only)
        results = harness.deliver(harness.queue())
        self.assert_transient(results, "4.5.2")
        self.assertIn("refused LHLO", results[0].reply.text[0])
        self.assertEqual(harness.peer.messages, [])

    def test_silent_server(self) -> None:
        harness = Harness(self)
        harness.network.listen(("192.0.2.24", 24), Protocol)
        d = harness.start(harness.queue())
        harness.network.run()
        harness.network.advance(harness.settings.limits.greeting_timeout)
        results = self.successResultOf(d)
        self.assert_transient(results, "4.4.2")
        self.assertIn("greeting", results[0].reply.text[0])

    def test_connection_lost_during_data(self) -> None:
        harness = Harness(self)
        harness.peer.drop_in_data = True
        results = harness.deliver(harness.queue())
        self.assert_transient(results, "4.4.2")
        self.assertEqual(harness.transport.open_connections, 0)

    def test_connection_lost_between_the_replies(self) -> None:
        """The replies that came count; the others may have been delivered."""
        harness = Harness(self)
        harness.peer.drop_after = 1
        results = harness.deliver(harness.queue("alice@example.org", "bob@example.org",
                                                "carol@example.org"))
        self.assertEqual(codes(results), [("delivered", 250), ("transient", 451),
                                          ("transient", 451)])
        self.assertIn("may have been delivered", results[1].reply.text[0])
        self.assertEqual(harness.peer.sessions, 1)

    def test_timeout_waiting_for_a_reply_after_the_dot(self) -> None:
        limits = ClientLimits(data_termination_timeout=60)
        harness = Harness(self, limits=limits)
        harness.peer.silent_after = 1
        d = harness.start(harness.queue())
        harness.network.run()
        harness.network.advance(59)
        self.assertNoResult(d)
        harness.network.advance(1)
        results = self.successResultOf(d)
        self.assertEqual(codes(results), [("delivered", 250), ("transient", 451)])
        self.assertIn("Timed out waiting for the reply to the end of the message",
                      results[1].reply.text[0])
        self.assertIn("may have been delivered", results[1].reply.text[0])
        self.assertEqual(harness.transport.open_connections, 0)

    def test_each_reply_after_the_dot_has_its_own_timeout(self) -> None:
        limits = ClientLimits(data_termination_timeout=60)
        harness = Harness(self, limits=limits)
        harness.peer.silent_after = 0
        d = harness.start(harness.queue())
        harness.network.run()
        harness.network.advance(50)
        [server] = harness.network.servers
        server.protocol.reply(saved("alice@example.org"))
        harness.network.run()
        harness.network.advance(50)
        self.assertNoResult(d)
        harness.network.advance(10)
        self.assertEqual(codes(self.successResultOf(d)), [("delivered", 250), ("transient", 451)])

    def test_a_closed_connection_is_opened_again_for_the_next_batch(self) -> None:
        harness = Harness(self, recipients_per_transaction=1)
        original = LMTPServer.end_of_data

        def close_after(server: LMTPServer, message: bytes) -> None:
            original(server, message)
            server.transport.loseConnection()

        self.patch(LMTPServer, "end_of_data", close_after)
        results = harness.deliver(harness.queue())
        self.assertEqual(codes(results), [("delivered", 250)] * 2)
        self.assertEqual(harness.peer.sessions, 2)

    def test_a_failed_connection_fails_every_batch(self) -> None:
        harness = Harness(self, recipients_per_transaction=1)
        harness.peer.greeting = "421 4.3.2 Shutting down"
        results = harness.deliver(harness.queue())
        self.assert_transient(results, "4.3.2")
        self.assertEqual(harness.peer.sessions, 1)


class StopTests(SynchronousTestCase):
    def test_stop_when_idle(self) -> None:
        harness = Harness(self)
        self.successResultOf(harness.transport.stop())
        results = harness.deliver(harness.queue())
        self.assertEqual([r.reply.status for r in results], ["4.3.2"] * 2)
        self.assertEqual(harness.network.connects, [])

    def test_stop_during_setup(self) -> None:
        harness = Harness(self)
        harness.network.listen(("192.0.2.24", 24), Protocol)
        d = harness.start(harness.queue())
        harness.network.run()
        self.assertEqual(harness.transport.open_connections, 1)
        stopped = harness.transport.stop()
        harness.network.run()
        self.successResultOf(stopped)
        results = self.successResultOf(d)
        self.assertEqual([r.status for r in results], [DeliveryStatus.TRANSIENT] * 2)
        self.assertEqual(harness.transport.open_connections, 0)
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])

    def test_stop_while_connecting(self) -> None:
        harness = Harness(self)
        harness.network.blackholes.add(("192.0.2.24", 24))
        d = harness.start(harness.queue())
        stopped = harness.transport.stop()
        results = self.successResultOf(d)
        self.assertEqual([r.reply.status for r in results], ["4.3.2"] * 2)
        self.successResultOf(stopped)
        self.assertEqual(harness.network.reactor.getDelayedCalls(), [])

    def test_stop_between_batches(self) -> None:
        harness = Harness(self, recipients_per_transaction=1)
        harness.peer.silent_after = 0
        d = harness.start(harness.queue())
        harness.network.run()
        stopped = harness.transport.stop()
        [server] = harness.network.servers
        server.protocol.reply(saved("alice@example.org"))
        harness.network.run()
        self.assertEqual([(r.status, r.reply.status) for r in self.successResultOf(d)],
                         [(DeliveryStatus.DELIVERED, "2.0.0"),
                          (DeliveryStatus.TRANSIENT, "4.3.2")])
        self.successResultOf(stopped)
        self.assertEqual(harness.peer.commands[-1], "QUIT")


# -- the plugin ------------------------------------------------------------------------


def context(**config: Any) -> ComponentContext:
    reactor = MemoryReactorClock()
    config.setdefault("hostname", "mx.example.com")
    return ComponentContext(reactor=reactor, random=random.Random(1),
                            store=MemoryQueueStore(reactor), config=Config(**config))


class MakerContractTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return lmtp_maker

    def make_context(self) -> Any:
        return context()


class MakerTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        transport = lmtp_maker.build({}, context())
        self.assertIsInstance(transport, LMTPTransport)
        settings = transport.settings
        self.assertEqual(settings.lhlo_name, "mx.example.com")
        self.assertIsNone(settings.endpoint)
        self.assertEqual(settings.recipients_per_transaction, 50)
        self.assertEqual(settings.connect_timeout, 30)
        self.assertEqual(settings.limits, ClientLimits(data_initiation_timeout=300))
        self.assertEqual((lmtp_maker.kind, lmtp_maker.name), ("transport", "lmtp"))

    def test_settings(self) -> None:
        transport = lmtp_maker.build({
            "endpoint": UNIX, "lhlo_name": "relay.example", "recipients_per_transaction": 1,
            "connect_timeout": "5s", "command_timeout": "1m", "data_timeout": 90,
            "delivery_timeout": "20m",
        }, context())
        settings = transport.settings
        self.assertEqual((settings.endpoint, settings.lhlo_name,
                          settings.recipients_per_transaction, settings.connect_timeout),
                         (UNIX, "relay.example", 1, 5))
        limits = settings.limits
        self.assertEqual({limits.greeting_timeout, limits.mail_timeout, limits.rcpt_timeout,
                          limits.data_initiation_timeout, limits.command_timeout}, {60})
        self.assertEqual((limits.data_block_timeout, limits.data_termination_timeout),
                         (90, 1200))

    def test_bad_settings(self) -> None:
        for settings, key in [
            ({"endpoint": "bogus:x"}, "endpoint"),
            ({"endpoint": "tcp:host=x"}, "endpoint"),
            ({"lhlo_name": "not a name"}, "lhlo_name"),
            ({"recipients_per_transaction": 0}, "recipients_per_transaction"),
            ({"connect_timeout": 0}, "connect_timeout"),
            ({"delivery_timeout": "soon"}, "delivery_timeout"),
            ({"tls": "may"}, "tls"),
        ]:
            with self.assertRaises(SettingError) as raised:
                lmtp_maker.build(settings, context())
            self.assertEqual(raised.exception.key, key, settings)

    def test_parse_endpoint(self) -> None:
        reactor = MemoryReactorClock()
        parse_endpoint(reactor, TCP)
        parse_endpoint(reactor, UNIX)
        for text in ("", " ", "bogus:x", "tcp:host=x", "tcp:host=x:port=24:nonsense=1"):
            with self.assertRaises(ValueError):
                parse_endpoint(reactor, text)

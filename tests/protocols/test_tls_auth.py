"""
STARTTLS, AUTH and BDAT in the server protocol, on fake transports and a
fake clock. Real TLS handshakes are in tests/interop/.
"""

from __future__ import annotations

import base64
import pathlib
import tempfile
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe.policies import LocalRecipients, RelayControl
from mailframe.policies.relay import LOOPBACK
from mailframe.protocols._tls import ServerTLS
from mailframe.protocols.server import ServerSettings, SMTPServerFactory, SMTPServerProtocol
from mailframe.testing import MemoryQueueStore
from tests.certs import make_certificates

LOCAL = {"example.com": "/nonexistent"}


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS instead of doing it."""

    tls_options: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_options = contextFactory


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Server:
    def __init__(self, test: SynchronousTestCase, **settings: Any) -> None:
        work = pathlib.Path(tempfile.mkdtemp())
        test.addCleanup(__import__("shutil").rmtree, work)
        certs = make_certificates(work)
        self.tls = ServerTLS(str(certs.cert), str(certs.key))
        self.clock = MemoryReactorClock()
        self.store = MemoryQueueStore(self.clock)
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        settings.setdefault("tls", self.tls)
        settings.setdefault("checker", checker)
        self.factory = SMTPServerFactory(
            ServerSettings(hostname="mx.example.com", **settings), self.store,
            [RelayControl(LOCAL, LOOPBACK), LocalRecipients(LOCAL)], self.clock,
        )

    def connect(self, host: str = "192.0.2.10") -> tuple[SMTPServerProtocol, TLSStringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 4000))
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        protocol.makeConnection(transport)
        transport.clear()
        return protocol, transport


def lines(transport: StringTransport) -> list[str]:
    data = transport.value().decode()
    transport.clear()
    return [line for line in data.split("\r\n") if line]


def start_tls(protocol: SMTPServerProtocol, transport: TLSStringTransport) -> None:
    protocol.dataReceived(b"EHLO client.example\r\nSTARTTLS\r\n")
    assert lines(transport)[-1] == "220 2.0.0 Ready to start TLS"
    protocol.handshakeCompleted()


class StartTLSTests(SynchronousTestCase):
    def test_bytes_after_starttls_are_discarded(self) -> None:
        server = Server(self, auth="offered")
        protocol, transport = server.connect()
        protocol.dataReceived(b"EHLO client.example\r\n")
        ehlo = lines(transport)
        self.assertIn("250-STARTTLS", ehlo)
        self.assertFalse(any("AUTH" in line for line in ehlo))
        protocol.dataReceived(b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(lines(transport), ["220 2.0.0 Ready to start TLS"])
        self.assertIs(transport.tls_options, server.tls.options())
        protocol.handshakeCompleted()
        # The NOOP was never executed, and the session starts over.
        protocol.dataReceived(b"MAIL FROM:<a@example.org>\r\n")
        self.assertTrue(lines(transport)[0].startswith("503 5.5.1"))
        protocol.dataReceived(b"EHLO client.example\r\n")
        ehlo = lines(transport)
        self.assertNotIn("250-STARTTLS", ehlo)
        self.assertIn("AUTH PLAIN LOGIN", " ".join(ehlo))
        self.assertEqual(protocol.client.tls, "TLS")

    def test_second_starttls_and_parameters(self) -> None:
        server = Server(self)
        protocol, transport = server.connect()
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS now\r\n")
        self.assertTrue(lines(transport)[-1].startswith("501 5.5.4"))
        start_tls(protocol, transport)
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        self.assertTrue(lines(transport)[-1].startswith("503 5.5.1"))

    def test_require_tls_refuses_mail(self) -> None:
        server = Server(self, require_tls=True)
        protocol, transport = server.connect()
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(lines(transport)[-1], "530 5.7.0 Must issue a STARTTLS command first")


class AuthTests(SynchronousTestCase):
    def authenticated_session(self, **settings: Any) -> tuple[Server, SMTPServerProtocol,
                                                               TLSStringTransport]:
        server = Server(self, auth="required", **settings)
        protocol, transport = server.connect()
        start_tls(protocol, transport)
        return server, protocol, transport

    def test_auth_required_before_mail(self) -> None:
        _, protocol, transport = self.authenticated_session()
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(lines(transport)[-1], "530 5.7.0 Authentication required")

    def test_plain_then_relay_and_received(self) -> None:
        server, protocol, transport = self.authenticated_session()
        protocol.dataReceived(b"EHLO c\r\nAUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n")
        self.assertEqual(lines(transport)[-1], "235 2.7.0 Authentication successful")
        protocol.dataReceived(b"MAIL FROM:<alice@example.com> AUTH=alice@example.com\r\n"
                              b"RCPT TO:<bob@elsewhere.example>\r\nDATA\r\nhi\r\n.\r\n")
        replies = lines(transport)
        self.assertEqual(replies[:3], ["250 2.1.0 OK", "250 2.1.5 OK",
                                       "354 End data with <CR><LF>.<CR><LF>"])
        queue_id = replies[3].rsplit(" ", 1)[1]
        message = self.successResultOf(server.store.open_message(queue_id)).read()
        entry = self.successResultOf(server.store.get(queue_id))
        self.assertEqual(entry.envelope.auth, "alice@example.com")
        self.assertIn(b"(Authenticated sender: alice)", message)
        self.assertIn(f"with ESMTPSA id {queue_id}".encode(), message)

    def test_login_exchange_and_cancel(self) -> None:
        _, protocol, transport = self.authenticated_session()
        protocol.dataReceived(b"EHLO c\r\nAUTH LOGIN\r\n")
        self.assertEqual(lines(transport)[-1], "334 " + b64(b"Username:").decode())
        protocol.dataReceived(b64(b"alice") + b"\r\n")
        self.assertEqual(lines(transport), ["334 " + b64(b"Password:").decode()])
        protocol.dataReceived(b"*\r\n")
        self.assertEqual(lines(transport), ["501 5.0.0 Authentication cancelled"])
        protocol.dataReceived(b"AUTH LOGIN " + b64(b"alice") + b"\r\n")
        self.assertEqual(lines(transport), ["334 " + b64(b"Password:").decode()])
        protocol.dataReceived(b64(b"s3cret") + b"\r\n")
        self.assertEqual(lines(transport), ["235 2.7.0 Authentication successful"])

    def test_malformed_base64(self) -> None:
        _, protocol, transport = self.authenticated_session()
        protocol.dataReceived(b"EHLO c\r\nAUTH LOGIN\r\n")
        lines(transport)
        protocol.dataReceived(b"!!not base64!!\r\n")
        self.assertTrue(lines(transport)[0].startswith("501 5.5.2"))

    def test_failures_are_delayed_then_421(self) -> None:
        server, protocol, transport = self.authenticated_session()
        protocol.dataReceived(b"EHLO c\r\n")
        lines(transport)
        for attempt in (1, 2):
            protocol.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n")
            self.assertEqual(lines(transport), [])
            server.clock.advance(attempt * 1.0)
            self.assertEqual(lines(transport), ["535 5.7.8 Error: authentication failed"])
        protocol.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n")
        server.clock.advance(3.0)
        self.assertEqual(lines(transport),
                         ["421 4.7.0 Error: too many failed authentication attempts"])
        self.assertTrue(transport.disconnecting)
        # Another session from the same address is refused at once.
        other, other_transport = server.connect()
        start_tls(other, other_transport)
        other.dataReceived(b"EHLO c\r\nAUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n")
        self.assertEqual(lines(other_transport)[-1],
                         "421 4.7.0 Error: too many failed authentication attempts")

    def test_auth_not_offered_in_clear(self) -> None:
        server = Server(self, auth="offered")
        protocol, transport = server.connect()
        protocol.dataReceived(b"EHLO c\r\nAUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n")
        replies = lines(transport)
        self.assertFalse(any("AUTH" in line for line in replies[:-1]))
        self.assertTrue(replies[-1].startswith("503 5.5.1"))


class BdatTests(SynchronousTestCase):
    def test_chunks_are_stored(self) -> None:
        server = Server(self, tls=None)
        protocol, transport = server.connect(host="127.0.0.1")
        protocol.dataReceived(
            b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
            b"BDAT 14\r\nSubject: x\r\n\r\nBDAT 6 LAST\r\nhello\n"
        )
        replies = lines(transport)
        self.assertIn("CHUNKING", " ".join(replies))
        self.assertEqual(replies[-2], "250 2.0.0 14 octets received")
        # A bare LF is refused at LAST, as in DATA.
        self.assertTrue(replies[-1].startswith("550 5.5.2"), replies[-1])
        protocol.dataReceived(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
            b"BDAT 14\r\nSubject: x\r\n\r\nBDAT 7\r\nhello\r\nBDAT 0 LAST\r\n"
        )
        replies = lines(transport)
        queue_id = replies[-1].rsplit(" ", 1)[1]
        message = self.successResultOf(server.store.open_message(queue_id)).read()
        self.assertTrue(message.startswith(b"Received: from c (unknown [127.0.0.1])"))
        self.assertTrue(message.endswith(b"\r\nSubject: x\r\n\r\nhello\r\n"))


class AuthParameterTests(SynchronousTestCase):
    def test_unauthenticated_auth_parameter_is_not_trusted(self) -> None:
        server = Server(self, auth="offered")
        protocol, transport = server.connect()
        start_tls(protocol, transport)
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org> AUTH=someone@example.org\r\n"
                              b"RCPT TO:<alice@example.com>\r\nDATA\r\nhi\r\n.\r\n")
        queue_id = lines(transport)[-1].rsplit(" ", 1)[1]
        self.assertIsNone(self.successResultOf(server.store.get(queue_id)).envelope.auth)

"""
Tests for the SMTP client protocol on a StringTransport and a fake clock:
what it sends, how it pairs replies with recipients, and how it ends a
session that goes wrong.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe.address import NULL_PATH, Mailbox
from mailframe.core import ClientLimits
from mailframe.envelope import BodyType, DeliveryStatus, DSNOptions, Handoff, RecipientResult
from mailframe.protocols.client import (
    ClientSettings,
    ConnectionUnusable,
    GreetingRefused,
    SessionFailed,
    SessionRejected,
    SMTPClientProtocol,
    TLSFailed,
    Transaction,
    header_has_non_ascii,
    xtext,
)
from mailframe.reply import Reply

SENDER = Mailbox("alice", "client.example")
BOB = Mailbox("bob", "mx.example")
CAROL = Mailbox("carol", "mx.example")
JOERG = Mailbox("j\u00f6rg", "mx.example")
MESSAGE = b"Subject: hi\r\n\r\n.a dot line\r\nbody\r\n"

EHLO_FULL = ("250-mx.example", "250-PIPELINING", "250-SIZE 100000", "250-8BITMIME",
             "250-SMTPUTF8", "250 ENHANCEDSTATUSCODES")
EHLO_PLAIN = ("250-mx.example", "250 SIZE 100000")


@implementer(ITLSTransport)
class FakeTransport(StringTransport):
    """
    A StringTransport that records TCP_NODELAY and startTLS, and pauses
    its producer once more than *pause_after* octets are written.
    """

    def __init__(self, pause_after: int | None = None) -> None:
        super().__init__()
        self.no_delay: bool | None = None
        self.tls_options: Any = None
        self.pause_after = pause_after
        self.writes: list[bytes] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def startTLS(self, options: Any, normal: bool = True) -> None:
        self.tls_options = options

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append(data)
        if (self.pause_after is not None and self.producer is not None
                and len(self.value()) > self.pause_after):
            self.producer.pauseProducing()


def transaction(*recipients: Mailbox, message: bytes = MESSAGE, **fields: Any) -> Transaction:
    fields.setdefault("size", len(message) + len(fields.get("prefix", b"")))
    return Transaction(fields.pop("sender", SENDER), recipients or (BOB,),
                       io.BytesIO(message), **fields)


class Session:
    """One client session on a fake transport, driven by a test."""

    def __init__(self, transport: FakeTransport | None = None, **settings: Any) -> None:
        self.clock = MemoryReactorClock()
        settings.setdefault("tls", "none")
        self.settings = ClientSettings("client.example", **settings)
        self.protocol = SMTPClientProtocol(self.settings, self.clock, "mx.example",
                                           "192.0.2.25")
        self.transport = transport or FakeTransport()
        self.protocol.makeConnection(self.transport)
        self.ready = self.protocol.when_ready()

    def server(self, *lines: str) -> None:
        if lines:
            self.protocol.dataReceived("".join(line + "\r\n" for line in lines).encode())

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[str]:
        return [line for line in self.sent().decode().split("\r\n") if line]

    def lose(self, reason: Exception | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    def greet(self, *ehlo: str) -> None:
        self.server("220 mx.example ESMTP")
        assert self.lines() == ["EHLO client.example"]
        self.server(*(ehlo or EHLO_FULL))


def ready(*ehlo: str, **settings: Any) -> Session:
    session = Session(**settings)
    session.greet(*ehlo)
    assert session.ready.called and session.ready.result is None
    return session


def statuses(results: list[RecipientResult]) -> list[tuple[str, str, int]]:
    return [(str(r.recipient), r.status.value, r.reply.code) for r in results]


class SessionTests(SynchronousTestCase):
    def test_tcp_nodelay(self) -> None:
        """Pipelined commands must not wait for delayed acknowledgements."""
        session = Session()
        self.assertIs(session.transport.no_delay, True)

    def test_pipelined_transaction(self) -> None:
        """RFC 2920: MAIL, every RCPT and DATA in one write; replies in order."""
        session = ready()
        session.transport.writes.clear()
        d = session.protocol.deliver(transaction(BOB, CAROL, prefix=b"X-Added: yes\r\n"))
        self.assertEqual(session.transport.writes, [
            b"MAIL FROM:<alice@client.example> SIZE=48\r\nRCPT TO:<bob@mx.example>\r\n"
            b"RCPT TO:<carol@mx.example>\r\nDATA\r\n"])
        session.sent()
        session.server("250 2.1.0 OK", "550 5.1.1 <bob@mx.example>: no such user",
                       "250 2.1.5 OK", "354 Go ahead")
        self.assertEqual(session.sent(),
                         b"X-Added: yes\r\nSubject: hi\r\n\r\n..a dot line\r\nbody\r\n.\r\n")
        self.assertNoResult(d)
        session.server("250 2.0.0 Ok: queued as 123")
        results = self.successResultOf(d)
        self.assertEqual(results, [
            RecipientResult(BOB, DeliveryStatus.PERMANENT,
                            Reply(550, "5.1.1", "<bob@mx.example>: no such user"),
                            remote="mx.example"),
            RecipientResult(CAROL, DeliveryStatus.DELIVERED,
                            Reply(250, "2.0.0", "Ok: queued as 123"), remote="mx.example",
                            handoff=Handoff.RELAYED),
        ])

    def test_without_pipelining_one_command_at_a_time(self) -> None:
        session = ready(*EHLO_PLAIN)
        d = session.protocol.deliver(transaction(BOB, CAROL))
        self.assertEqual(session.lines(), ["MAIL FROM:<alice@client.example> SIZE=34"])
        session.server("250 OK")
        self.assertEqual(session.lines(), ["RCPT TO:<bob@mx.example>"])
        session.server("450 4.2.0 Mailbox busy")
        self.assertEqual(session.lines(), ["RCPT TO:<carol@mx.example>"])
        session.server("250 OK")
        self.assertEqual(session.lines(), ["DATA"])
        session.server("354 Go")
        session.sent()
        session.server("250 Queued")
        self.assertEqual(statuses(self.successResultOf(d)), [
            ("bob@mx.example", "transient", 450), ("carol@mx.example", "delivered", 250)])

    def test_every_recipient_refused_without_pipelining_sends_no_data(self) -> None:
        session = ready(*EHLO_PLAIN)
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK")
        session.server("550 5.1.1 No")
        self.assertEqual(statuses(self.successResultOf(d)), [("bob@mx.example", "permanent", 550)])
        self.assertEqual(session.lines(), ["MAIL FROM:<alice@client.example> SIZE=34",
                                           "RCPT TO:<bob@mx.example>"])

    def test_refused_mail_fails_every_recipient(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB, CAROL))
        session.sent()
        session.server("451 4.7.1 Greylisted", "503 5.5.1 Need MAIL", "503 5.5.1 Need MAIL",
                       "503 5.5.1 Need RCPT")
        results = self.successResultOf(d)
        self.assertEqual([r.reply for r in results], [Reply(451, "4.7.1", "Greylisted")] * 2)
        self.assertEqual({r.status for r in results}, {DeliveryStatus.TRANSIENT})

    def test_data_refused(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK", "250 OK", "554 5.7.1 Not today")
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply.code),
                         (DeliveryStatus.PERMANENT, 554))

    def test_354_without_recipients_sends_just_the_dot(self) -> None:
        """RFC 2920 §3.1."""
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK", "550 5.1.1 No", "354 Go")
        self.assertEqual(session.sent(), b".\r\n")
        session.server("554 5.5.1 No valid recipients")
        self.assertEqual(statuses(self.successResultOf(d)), [("bob@mx.example", "permanent", 550)])

    def test_rset_after_a_failed_transaction_only(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 2.0.0 Queued")
        self.successResultOf(d)
        # After a success: MAIL at once.
        d = session.protocol.deliver(transaction(CAROL))
        self.assertTrue(session.lines()[0].startswith("MAIL FROM:"))
        session.server("250 OK", "550 5.1.1 No", "554 5.5.1 No valid recipients")
        self.successResultOf(d)
        # After a failure: RSET first.
        d = session.protocol.deliver(transaction(BOB))
        self.assertEqual(session.lines(), ["RSET"])
        session.server("250 2.0.0 OK")
        self.assertTrue(session.lines()[0].startswith("MAIL FROM:"))
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 2.0.0 Queued")
        self.assertEqual(statuses(self.successResultOf(d)), [("bob@mx.example", "delivered", 250)])

    def test_quit(self) -> None:
        session = ready()
        closed = session.protocol.quit()
        self.assertEqual(session.lines(), ["QUIT"])
        session.server("221 2.0.0 Bye")
        self.assertTrue(session.transport.disconnecting)
        self.assertNoResult(closed)
        session.lose()
        self.successResultOf(closed)
        self.assertFalse(session.protocol.usable)

    def test_quit_waits_for_the_transaction(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        closed = session.protocol.quit()
        session.sent()
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 Queued")
        self.successResultOf(d)
        self.assertEqual(session.lines(), ["QUIT"])
        session.server("221 Bye")
        session.lose()
        self.successResultOf(closed)


class GreetingTests(SynchronousTestCase):
    def test_5xx_greeting_is_refused_distinctly(self) -> None:
        """RFC 5321 §3.1: QUIT after a 554; the caller moves to the next host."""
        session = Session()
        session.server("554 5.7.1 No service for you")
        failure = self.failureResultOf(session.ready, GreetingRefused)
        error = failure.value
        assert isinstance(error, GreetingRefused)
        self.assertEqual(error.greeting, Reply(554, "5.7.1", "No service for you"))
        # A 5xx greeting is no verdict on the mail: recipients wait.
        self.assertEqual(error.reply.code, 451)
        self.assertEqual(error.reply.status, "4.7.1")
        self.assertIn("554 5.7.1 No service for you", error.reply.text[0])
        self.assertEqual(session.lines(), ["QUIT"])
        self.assertTrue(session.transport.disconnecting)

    def test_421_greeting(self) -> None:
        session = Session()
        session.server("421 4.3.2 Too busy")
        error = self.failureResultOf(session.ready, GreetingRefused).value
        assert isinstance(error, GreetingRefused)
        self.assertEqual(error.reply, Reply(421, "4.3.2", "Too busy"))
        self.assertEqual(session.sent(), b"")

    def test_ehlo_refused_falls_back_to_helo(self) -> None:
        session = Session()
        session.server("220 mx.example SMTP")
        self.assertEqual(session.lines(), ["EHLO client.example"])
        session.server("502 5.5.2 Command not recognized")
        self.assertEqual(session.lines(), ["HELO client.example"])
        session.server("250 mx.example")
        self.successResultOf(session.ready)
        d = session.protocol.deliver(transaction(BOB))
        # No parameters after HELO, and no pipelining.
        self.assertEqual(session.lines(), ["MAIL FROM:<alice@client.example>"])
        session.server("250 OK")
        self.assertEqual(session.lines(), ["RCPT TO:<bob@mx.example>"])
        session.server("250 OK")
        self.assertEqual(session.lines(), ["DATA"])
        session.server("354 Go")
        session.sent()
        session.server("250 OK")
        self.assertEqual(statuses(self.successResultOf(d)), [("bob@mx.example", "delivered", 250)])

    def test_helo_refused_is_final(self) -> None:
        session = Session()
        session.server("220 mx.example SMTP", "550 5.7.1 Go away")
        session.server("550 5.7.1 Still no")
        error = self.failureResultOf(session.ready, SessionRejected).value
        self.assertEqual(error.reply, Reply(550, "5.7.1", "Still no"))

    def test_ehlo_4xx_moves_on(self) -> None:
        session = Session()
        session.server("220 mx.example", "451 4.3.0 Try later")
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual(error.reply, Reply(451, "4.3.0", "Try later"))

    def test_deliver_after_a_failed_setup(self) -> None:
        session = Session()
        session.server("554 No")
        self.failureResultOf(session.ready)
        d = session.protocol.deliver(transaction(BOB))
        self.failureResultOf(d, ConnectionUnusable)


class RuleTests(SynchronousTestCase):
    """What is refused before it is sent, and the parameters of MAIL."""

    def test_size_over_the_limit_is_not_sent(self) -> None:
        session = ready("250-mx.example", "250-PIPELINING", "250 SIZE 20")
        d = session.protocol.deliver(transaction(BOB, CAROL))
        results = self.successResultOf(d)
        self.assertEqual(session.sent(), b"")
        self.assertEqual([(r.status, r.reply.code, r.reply.status) for r in results],
                         [(DeliveryStatus.PERMANENT, 552, "5.3.4")] * 2)
        self.assertIn("34 octets", results[0].reply.text[0])

    def test_size_zero_is_no_limit(self) -> None:
        session = ready("250-mx.example", "250-PIPELINING", "250 SIZE 0")
        session.protocol.deliver(transaction(BOB))
        self.assertEqual(session.lines()[0], "MAIL FROM:<alice@client.example> SIZE=34")

    def test_8bitmime(self) -> None:
        session = ready(*EHLO_PLAIN)
        d = session.protocol.deliver(transaction(BOB, body=BodyType.EIGHT_BIT_MIME))
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply.code, result.reply.status),
                         (DeliveryStatus.PERMANENT, 554, "5.6.3"))
        self.assertEqual(session.sent(), b"")
        session = ready()
        session.protocol.deliver(transaction(BOB, body=BodyType.EIGHT_BIT_MIME))
        self.assertEqual(session.lines()[0],
                         "MAIL FROM:<alice@client.example> SIZE=34 BODY=8BITMIME")

    def test_non_ascii_recipient_without_smtputf8(self) -> None:
        """RFC 6531 §3.2: 553 5.6.7 for it; the others go without SMTPUTF8."""
        session = ready("250-mx.example", "250 PIPELINING")
        d = session.protocol.deliver(transaction(JOERG, BOB))
        self.assertEqual(session.lines(), ["MAIL FROM:<alice@client.example>",
                                           "RCPT TO:<bob@mx.example>", "DATA"])
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 OK")
        results = self.successResultOf(d)
        self.assertEqual([(r.status, r.reply.code, r.reply.status) for r in results],
                         [(DeliveryStatus.PERMANENT, 553, "5.6.7"),
                          (DeliveryStatus.DELIVERED, 250, None)])

    def test_non_ascii_sender_without_smtputf8(self) -> None:
        session = ready("250-mx.example", "250 PIPELINING")
        d = session.protocol.deliver(transaction(BOB, CAROL, sender=JOERG))
        self.assertEqual({(r.reply.code, r.reply.status) for r in self.successResultOf(d)},
                         {(553, "5.6.7")})
        self.assertEqual(session.sent(), b"")

    def test_utf8_headers_need_smtputf8(self) -> None:
        session = ready("250-mx.example", "250 PIPELINING")
        d = session.protocol.deliver(transaction(BOB, smtputf8=True, utf8_headers=True))
        [result] = self.successResultOf(d)
        self.assertEqual((result.reply.code, result.reply.status), (554, "5.6.9"))

    def test_an_ascii_message_with_the_flag_goes_without_smtputf8(self) -> None:
        session = ready("250-mx.example", "250 PIPELINING")
        session.protocol.deliver(transaction(BOB, smtputf8=True, utf8_headers=False))
        self.assertEqual(session.lines()[0], "MAIL FROM:<alice@client.example>")
        session = ready()
        session.protocol.deliver(transaction(BOB, smtputf8=True, utf8_headers=False))
        self.assertEqual(session.lines()[0], "MAIL FROM:<alice@client.example> SIZE=34")

    def test_smtputf8_when_needed_and_offered(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(JOERG))
        self.assertEqual(session.lines()[:2], [
            "MAIL FROM:<alice@client.example> SIZE=34 SMTPUTF8",
            "RCPT TO:<j\u00f6rg@mx.example>"])
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 OK")
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
        session = ready()
        session.protocol.deliver(transaction(BOB, smtputf8=True, utf8_headers=True))
        self.assertEqual(session.lines()[0],
                         "MAIL FROM:<alice@client.example> SIZE=34 SMTPUTF8")

    def test_auth_parameter(self) -> None:
        """RFC 4954 §5: AUTH= only to a server that offers AUTH."""
        session = ready()
        session.protocol.deliver(transaction(BOB, auth="a+b=c@client.example"))
        self.assertEqual(session.lines()[0], "MAIL FROM:<alice@client.example> SIZE=34")
        session = ready("250-mx.example", "250-PIPELINING", "250 AUTH PLAIN")
        session.protocol.deliver(transaction(BOB, auth="a+b=c@client.example"))
        self.assertEqual(session.lines()[0],
                         "MAIL FROM:<alice@client.example> AUTH=a+2Bb+3Dc@client.example")
        session = ready("250-mx.example", "250-PIPELINING", "250 AUTH PLAIN")
        session.protocol.deliver(transaction(BOB, auth="<>", sender=NULL_PATH))
        self.assertEqual(session.lines()[0], "MAIL FROM:<> AUTH=<>")

    def test_dsn_parameters_to_a_server_that_offers_dsn(self) -> None:
        """RFC 3461 §4: RET and ENVID on MAIL, NOTIFY and ORCPT on each RCPT."""
        session = ready("250-mx.example", "250-PIPELINING", "250 DSN")
        d = session.protocol.deliver(transaction(
            BOB, CAROL, JOERG, ret="HDRS", envid="id+1 x",
            dsn=[DSNOptions(frozenset({"FAILURE", "SUCCESS"}), "rfc822;bob=b@mx.example"),
                 DSNOptions(), DSNOptions(frozenset({"NEVER"}))]))
        # No SMTPUTF8: jörg is refused before anything is sent for him.
        self.assertEqual(session.lines(), [
            "MAIL FROM:<alice@client.example> RET=HDRS ENVID=id+2B1+20x",
            "RCPT TO:<bob@mx.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+3Db@mx.example",
            "RCPT TO:<carol@mx.example>",
            "DATA",
        ])
        session.server("250 OK", "250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 OK")
        results = self.successResultOf(d)
        self.assertEqual([(r.status, r.handoff) for r in results], [
            (DeliveryStatus.DELIVERED, Handoff.PASSED_ON),
            (DeliveryStatus.DELIVERED, Handoff.PASSED_ON),
            (DeliveryStatus.PERMANENT, Handoff.DELIVERED),
        ])

    def test_no_dsn_parameters_to_a_server_without_dsn(self) -> None:
        """RFC 3461 §5.2.2: the parameters are left out; the mail is relayed."""
        session = ready()
        d = session.protocol.deliver(transaction(
            BOB, ret="FULL", envid="x", dsn=[DSNOptions(frozenset({"SUCCESS"}), "rfc822;b@x")]))
        self.assertEqual(session.lines(), [
            "MAIL FROM:<alice@client.example> SIZE=34", "RCPT TO:<bob@mx.example>", "DATA"])
        session.server("250 OK", "250 OK", "354 Go")
        session.sent()
        session.server("250 OK")
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.handoff),
                         (DeliveryStatus.DELIVERED, Handoff.RELAYED))

    def test_dsn_options_for_each_recipient(self) -> None:
        with self.assertRaises(ValueError):
            transaction(BOB, CAROL, dsn=[DSNOptions()])
        self.assertEqual(transaction(BOB).dsn_options(0), DSNOptions())

    def test_xtext(self) -> None:
        self.assertEqual(xtext("a b+c=d\u00e9"), "a+20b+2Bc+3Dd+C3+A9")

    def test_header_scan(self) -> None:
        def scan(prefix: bytes, message: bytes, chunk: int = 4) -> bool:
            file = io.BytesIO(message)
            file.read(3)
            found = header_has_non_ascii(prefix, file, chunk)
            self.assertEqual(file.tell(), 0)
            return found

        self.assertFalse(scan(b"", b"Subject: hi\r\n\r\nbody \xc3\xa9\r\n"))
        self.assertTrue(scan(b"", b"Subject: h\xc3\xa9\r\n\r\nbody\r\n"))
        self.assertTrue(scan("X-A: \u00e9\r\n".encode(), b"Subject: hi\r\n\r\nbody\r\n"))
        self.assertFalse(scan(b"", b"\r\nbody \xc3\xa9\r\n"))
        self.assertFalse(scan(b"X-A: b\r\n", b"\r\nbody \xc3\xa9\r\n"))
        # The empty line split between two reads.
        for chunk in range(1, 20):
            self.assertFalse(scan(b"", b"Subject: hi\r\n\r\n\xc3\xa9", chunk))
        self.assertTrue(scan(b"", b"Subject: hi\r\n \xc3\xa9", 1))


class TLSTests(SynchronousTestCase):
    def test_may_starts_tls_when_offered(self) -> None:
        session = Session(tls="may")
        session.server("220 mx.example", "250-mx.example", "250-PIPELINING", "250 STARTTLS")
        self.assertEqual(session.lines(), ["EHLO client.example", "STARTTLS"])
        session.server("220 2.0.0 Ready to start TLS")
        self.assertIsInstance(session.transport.tls_options, CertificateOptions)
        self.assertEqual(session.sent(), b"")
        session.protocol.handshakeCompleted()
        # RFC 3207 §4.2: EHLO again.
        self.assertEqual(session.lines(), ["EHLO client.example"])
        session.server("250-mx.example", "250 PIPELINING")
        self.successResultOf(session.ready)
        self.assertTrue(session.protocol.tls)

    def test_may_without_starttls_goes_on_in_plaintext(self) -> None:
        session = Session(tls="may")
        session.greet()
        self.successResultOf(session.ready)
        self.assertFalse(session.protocol.tls)

    def test_may_goes_on_when_starttls_is_refused(self) -> None:
        session = Session(tls="may")
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS")
        session.sent()
        session.server("454 4.7.0 TLS not available")
        self.successResultOf(session.ready)
        self.assertFalse(session.protocol.tls)

    def test_failed_handshake(self) -> None:
        session = Session(tls="may")
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS", "220 Go ahead")
        session.lose(ConnectionLost("sslv3 alert handshake failure"))
        error = self.failureResultOf(session.ready, TLSFailed).value
        self.assertEqual(error.reply.status, "4.7.5")
        self.assertIn("handshake failure", error.reply.text[0])

    def test_handshake_timeout(self) -> None:
        session = Session(tls="may")
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS", "220 Go ahead")
        session.clock.advance(ClientLimits().command_timeout)
        self.failureResultOf(session.ready, TLSFailed)
        self.assertTrue(session.transport.disconnected)

    def test_encrypt_and_verify_need_starttls(self) -> None:
        for policy in ("encrypt", "verify"):
            session = Session(tls=policy)
            session.greet()
            error = self.failureResultOf(session.ready, SessionFailed).value
            self.assertNotIsInstance(error, TLSFailed)
            self.assertEqual((error.reply.code, error.reply.status), (451, "4.7.4"))
            session = Session(tls=policy)
            session.server("220 mx.example", "250-mx.example", "250 STARTTLS",
                           "554 5.7.0 No TLS for you")
            error = self.failureResultOf(session.ready, SessionFailed).value
            self.assertEqual((error.reply.code, error.reply.status), (451, "4.7.0"))

    def test_verify_checks_the_host_name(self) -> None:
        session = Session(tls="verify")
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS", "220 Go ahead")
        options = session.transport.tls_options
        self.assertEqual(type(options).__name__, "ClientTLSOptions")
        self.assertEqual(options._hostname, "mx.example")

    def test_none_never_starts_tls(self) -> None:
        session = Session(tls="none")
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS")
        self.successResultOf(session.ready)
        self.assertEqual(session.lines(), ["EHLO client.example"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AuthTests(SynchronousTestCase):
    def tls_session(self, mechanisms: str = "PLAIN LOGIN", **settings: Any) -> Session:
        session = Session(tls="encrypt", credentials=("user", "pw"), **settings)
        session.server("220 mx.example", "250-mx.example", "250 STARTTLS", "220 Go")
        session.protocol.handshakeCompleted()
        session.sent()
        session.server("250-mx.example", "250-PIPELINING", f"250 AUTH {mechanisms}")
        return session

    def test_plain(self) -> None:
        session = self.tls_session()
        self.assertEqual(session.lines(), ["AUTH PLAIN " + b64(b"\0user\0pw")])
        self.assertNoResult(session.ready)
        session.server("235 2.7.0 Authentication successful")
        self.successResultOf(session.ready)

    def test_login(self) -> None:
        session = self.tls_session("LOGIN")
        self.assertEqual(session.lines(), ["AUTH LOGIN"])
        session.server("334 " + b64(b"Username:"))
        self.assertEqual(session.lines(), [b64(b"user")])
        session.server("334 " + b64(b"Password:"))
        self.assertEqual(session.lines(), [b64(b"pw")])
        session.server("235 2.7.0 OK")
        self.successResultOf(session.ready)

    def test_refused_credentials_are_transient(self) -> None:
        session = self.tls_session()
        session.server("535 5.7.8 Authentication credentials invalid")
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual((error.reply.code, error.reply.status), (451, "4.7.8"))
        self.assertIn("535 5.7.8", error.reply.text[0])

    def test_no_mechanism_we_know(self) -> None:
        session = self.tls_session("CRAM-MD5")
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual(error.reply.status, "4.7.0")

    def test_never_in_the_clear(self) -> None:
        session = Session(tls="may", credentials=("user", "pw"))
        session.greet("250-mx.example", "250 AUTH PLAIN")
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual(error.reply.status, "4.7.10")
        self.assertNotIn(b"AUTH", session.sent())

    def test_in_the_clear_when_allowed(self) -> None:
        session = Session(tls="none", credentials=("user", "pw"), auth_without_tls=True)
        session.greet("250-mx.example", "250 AUTH PLAIN")
        self.assertEqual(session.lines(), ["AUTH PLAIN " + b64(b"\0user\0pw")])
        session.server("235 OK")
        self.successResultOf(session.ready)


class BreakTests(SynchronousTestCase):
    """Silence, garbage and lost connections: transient results, never a stall."""

    def test_greeting_timeout(self) -> None:
        session = Session()
        session.clock.advance(ClientLimits().greeting_timeout - 1)
        self.assertNoResult(session.ready)
        session.clock.advance(1)
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual((error.reply.code, error.reply.status), (451, "4.4.2"))
        self.assertIn("the greeting", error.reply.text[0])
        self.assertTrue(session.transport.disconnected)

    def test_mail_timeout(self) -> None:
        """No reply to MAIL: nothing was accepted, so it may go elsewhere."""
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.clock.advance(ClientLimits().mail_timeout - 1)
        self.assertNoResult(d)
        session.clock.advance(1)
        error = self.failureResultOf(d, ConnectionUnusable).value
        self.assertIn("the reply to MAIL", error.reply.text[0])

    def test_reply_timeouts(self) -> None:
        limits = ClientLimits()
        for replies, timeout, what in [
            (("250 OK",), limits.rcpt_timeout, "RCPT"),
            (("250 OK", "250 OK"), limits.data_initiation_timeout, "DATA"),
        ]:
            session = ready()
            d = session.protocol.deliver(transaction(BOB))
            session.server(*replies)
            session.clock.advance(timeout - 1)
            self.assertNoResult(d)
            session.clock.advance(1)
            [result] = self.successResultOf(d)
            self.assertEqual((result.status, result.reply.status),
                             (DeliveryStatus.TRANSIENT, "4.4.2"))
            self.assertIn(f"the reply to {what}", result.reply.text[0])
            self.assertTrue(session.transport.disconnected)

    def test_each_wait_has_its_whole_timeout(self) -> None:
        """
        One timer serves every wait: a reply that comes just before its
        timeout gives the next wait its whole timeout, not what was left.
        """
        limits = ClientLimits()
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.clock.advance(limits.mail_timeout - 1)
        session.server("250 OK")
        session.clock.advance(limits.rcpt_timeout - 1)
        self.assertNoResult(d)
        self.assertEqual(len(session.clock.getDelayedCalls()), 1)
        session.clock.advance(1)
        [result] = self.successResultOf(d)
        self.assertEqual(result.reply.status, "4.4.2")
        self.assertIn("the reply to RCPT", result.reply.text[0])

    def test_an_idle_session_does_not_time_out(self) -> None:
        """Once its transaction is done, a session waits for nothing, however long."""
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK", "250 OK", "354 Go", "250 OK")
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
        session.clock.advance(ClientLimits().data_termination_timeout * 2)
        self.assertEqual(session.clock.getDelayedCalls(), [])
        self.assertTrue(session.protocol.usable)
        self.assertFalse(session.transport.disconnected)

    def test_final_dot_timeout(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK", "250 OK", "354 Go")
        session.clock.advance(ClientLimits().data_termination_timeout - 1)
        self.assertNoResult(d)
        session.clock.advance(1)
        [result] = self.successResultOf(d)
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)
        self.assertIn("the end of the message", result.reply.text[0])

    def test_lost_after_the_final_dot(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB, CAROL))
        session.server("250 OK", "550 5.1.1 No", "250 OK", "354 Go")
        self.assertTrue(session.sent().endswith(b"\r\n.\r\n"))
        session.lose(ConnectionLost())
        results = self.successResultOf(d)
        self.assertEqual(results[0].status, DeliveryStatus.PERMANENT)
        self.assertEqual(results[1].status, DeliveryStatus.TRANSIENT)
        self.assertEqual(results[1].reply.status, "4.4.2")
        self.assertIn("may have been delivered", results[1].reply.text[0])
        self.assertFalse(session.protocol.usable)

    def test_lost_before_any_reply_is_unusable(self) -> None:
        """Nothing was accepted: the transaction may go elsewhere."""
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.lose(ConnectionLost())
        self.failureResultOf(d, ConnectionUnusable)
        self.failureResultOf(session.protocol.deliver(transaction(BOB)), ConnectionUnusable)

    def test_lost_while_idle(self) -> None:
        session = ready()
        self.assertTrue(session.protocol.usable)
        closed = session.protocol.when_closed()
        session.lose()
        self.successResultOf(closed)
        self.assertFalse(session.protocol.usable)

    def test_garbage_replies(self) -> None:
        for garbage in [b"HTTP/1.1 400 Bad Request\r\n", b"250-OK\r\n550 mixed\r\n",
                        b"2" * 5000, b"250 OK\n", b"\xff\xfe\r\n"]:
            session = ready()
            d = session.protocol.deliver(transaction(BOB))
            session.server("250 OK")
            session.protocol.dataReceived(garbage)
            [result] = self.successResultOf(d)
            self.assertEqual((result.status, result.reply.code, result.reply.status),
                             (DeliveryStatus.TRANSIENT, 451, "4.5.0"), garbage)
            self.assertTrue(session.transport.disconnected)

    def test_garbage_greeting(self) -> None:
        session = Session()
        session.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        error = self.failureResultOf(session.ready, SessionFailed).value
        self.assertEqual(error.reply.status, "4.5.0")

    def test_garbage_while_idle(self) -> None:
        session = ready()
        session.protocol.dataReceived(b"250 what?\r\n")
        self.assertFalse(session.protocol.usable)
        self.assertTrue(session.transport.disconnected)

    def test_421_to_rcpt(self) -> None:
        """RFC 5321 §3.8: the commands after it are never answered."""
        session = ready()
        d = session.protocol.deliver(transaction(BOB, CAROL))
        session.server("250 OK", "250 OK", "421 4.7.0 Closing")
        results = self.successResultOf(d)
        self.assertEqual([(r.status, r.reply) for r in results], [
            (DeliveryStatus.TRANSIENT, Reply(421, "4.7.0", "Closing"))] * 2)

    def test_unsolicited_421_while_sending(self) -> None:
        session = ready(transport=FakeTransport(pause_after=10), chunk_size=8)
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK", "250 OK", "354 Go")
        session.server("421 4.4.2 mx.example Error: timeout exceeded")
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply),
                         (DeliveryStatus.TRANSIENT,
                          Reply(421, "4.4.2", "mx.example Error: timeout exceeded")))

    def test_rset_refused(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK", "550 No", "554 No valid recipients")
        self.successResultOf(d)
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("500 5.5.1 What?")
        self.failureResultOf(d, ConnectionUnusable)

    def test_a_broken_file_is_a_local_error(self) -> None:
        class Broken(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                raise OSError("disk on fire")

        session = ready()
        d = session.protocol.deliver(Transaction(SENDER, (BOB,), Broken(), 10))
        session.server("250 OK", "250 OK", "354 Go")
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply.status),
                         (DeliveryStatus.TRANSIENT, "4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class StreamingTests(SynchronousTestCase):
    def test_back_pressure(self) -> None:
        """The file is read only as fast as the transport takes it."""
        message = b"".join(b"line %05d\r\n" % i for i in range(2000))
        transport = FakeTransport(pause_after=1000)
        session = ready(transport=transport, chunk_size=256)
        file = io.BytesIO(message)
        d = session.protocol.deliver(Transaction(SENDER, (BOB,), file, len(message)))
        session.sent()
        session.server("250 OK", "250 OK", "354 Go")
        self.assertLess(file.tell(), 2000)
        sent = session.sent()
        while transport.producer is not None:
            transport.producer.resumeProducing()
            sent += session.sent()
        self.assertEqual(sent, message + b".\r\n")
        session.server("250 OK")
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)

    def test_data_block_timeout(self) -> None:
        """RFC 5321 §4.5.3.2.5: a server that stops reading."""
        session = ready(transport=FakeTransport(pause_after=10), chunk_size=8)
        d = session.protocol.deliver(transaction(BOB))
        session.server("250 OK", "250 OK", "354 Go")
        session.clock.advance(ClientLimits().data_block_timeout)
        [result] = self.successResultOf(d)
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)
        self.assertIn("to read message data", result.reply.text[0])

    def test_dot_stuffing_across_chunks(self) -> None:
        message = b"a\r\n.b\r\n..c\r\n.\r\nd\r\n"
        for chunk in range(1, len(message) + 1):
            session = ready(chunk_size=chunk)
            d = session.protocol.deliver(transaction(BOB, message=message))
            session.server("250 OK", "250 OK", "354 Go")
            self.assertEqual(session.sent().split(b"DATA\r\n")[-1],
                             b"a\r\n..b\r\n...c\r\n..\r\nd\r\n.\r\n")
            session.server("250 OK")
            self.successResultOf(d)

    def test_final_dot_goes_with_the_last_chunk(self) -> None:
        """
        After 354, each chunk is one write, and the final dot shares the
        last one's: a message of one chunk is one write.
        """
        message = b"Subject: hi\r\n\r\nno dot starts a line\r\n"
        for chunk_size, chunks in [(65536, [message]),
                                   (10, [message[i:i + 10] for i in range(0, len(message), 10)])]:
            transport = FakeTransport()
            session = ready(transport=transport, chunk_size=chunk_size)
            d = session.protocol.deliver(transaction(BOB, message=message))
            session.server("250 OK", "250 OK")
            del transport.writes[:]
            session.server("354 Go")
            self.assertEqual(transport.writes, [*chunks[:-1], chunks[-1] + b".\r\n"])
            session.server("250 OK")
            self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)

    def test_failed_checkpoint_stops_the_message_before_its_end(self) -> None:
        """
        The checkpoint is run before the message data and again before the
        final dot; when the second fails, the dot is never sent, and the
        session is dropped so that the server discards the message.
        """
        message = b"Subject: hi\r\n\r\nno dot starts a line\r\n"
        calls: list[int] = []

        def checkpoint() -> Deferred[None]:
            calls.append(len(calls))
            return succeed(None) if len(calls) == 1 else fail(RuntimeError("lease lost"))

        transport = FakeTransport()
        session = ready(transport=transport, chunk_size=10)
        d = session.protocol.deliver(transaction(BOB, message=message, checkpoint=checkpoint))
        session.server("250 OK", "250 OK")
        session.sent()
        session.server("354 Go")
        self.assertEqual(calls, [0, 1])
        sent = session.sent()
        self.assertTrue(message.startswith(sent) and sent != message, sent)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        [result] = self.successResultOf(d)
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)
        self.assertIn("lease", result.reply.text[0])

    def test_message_without_final_line_end(self) -> None:
        session = ready()
        d = session.protocol.deliver(transaction(BOB, message=b"Subject: x\r\n\r\nno end"))
        session.server("250 OK", "250 OK", "354 Go")
        self.assertTrue(session.sent().endswith(b"no end\r\n.\r\n"))
        session.server("250 OK")
        self.successResultOf(d)


EHLO_CHUNKING = ("250-mx.example", "250-PIPELINING", "250-CHUNKING", "250 8BITMIME")


class ChunkingTests(SynchronousTestCase):
    def test_bdat_only_when_enabled(self) -> None:
        session = ready(*EHLO_CHUNKING)
        session.protocol.deliver(transaction(BOB))
        self.assertEqual(session.lines()[-1], "DATA")

    def test_one_chunk(self) -> None:
        session = ready(*EHLO_CHUNKING, chunking=True)
        d = session.protocol.deliver(transaction(BOB))
        # MAIL and RCPT first: no octets go to a server that refused them all.
        self.assertEqual(session.lines(), ["MAIL FROM:<alice@client.example>",
                                           "RCPT TO:<bob@mx.example>"])
        session.server("250 OK", "250 OK")
        self.assertEqual(session.sent(), b"BDAT 34 LAST\r\n" + MESSAGE)
        session.server("250 2.0.0 Queued")
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)

    def test_pipelined_chunks(self) -> None:
        session = ready(*EHLO_CHUNKING, chunking=True, chunk_size=16)
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK", "250 OK")
        self.assertEqual(session.sent(), b"BDAT 16\r\n" + MESSAGE[:16] + b"BDAT 16\r\n"
                         + MESSAGE[16:32] + b"BDAT 2 LAST\r\n" + MESSAGE[32:])
        session.server("250 16 octets", "250 16 octets")
        self.assertNoResult(d)
        session.server("250 2.0.0 Queued")
        self.assertEqual(self.successResultOf(d)[0].reply, Reply(250, "2.0.0", "Queued"))

    def test_chunks_without_pipelining(self) -> None:
        session = ready("250-mx.example", "250 CHUNKING", chunking=True, chunk_size=20)
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK")
        session.sent()
        session.server("250 OK")
        self.assertEqual(session.sent(), b"BDAT 20\r\n" + MESSAGE[:20])
        session.server("250 20 octets")
        self.assertEqual(session.sent(), b"BDAT 14 LAST\r\n" + MESSAGE[20:])
        session.server("250 Queued")
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)

    def test_refused_chunk_ends_the_message(self) -> None:
        session = ready("250-mx.example", "250 CHUNKING", chunking=True, chunk_size=20)
        d = session.protocol.deliver(transaction(BOB))
        session.sent()
        session.server("250 OK")
        session.server("250 OK")
        session.sent()
        session.server("552 5.3.4 Too big")
        [result] = self.successResultOf(d)
        self.assertEqual((result.status, result.reply.code), (DeliveryStatus.PERMANENT, 552))
        self.assertEqual(session.sent(), b"")

    def test_empty_message(self) -> None:
        session = ready(*EHLO_CHUNKING, chunking=True)
        d = session.protocol.deliver(transaction(BOB, message=b""))
        session.sent()
        session.server("250 OK", "250 OK")
        self.assertEqual(session.sent(), b"BDAT 0 LAST\r\n")
        session.server("250 OK")
        self.successResultOf(d)

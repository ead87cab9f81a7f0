"""
Outbound SMTP against real peers on loopback: mailframe's
:class:`~mailframe.transports.smtp.SMTPTransport`, on the real reactor in
this process, delivers to

- aiosmtpd (a child Python process whose handler saves each message),
- Twisted's own ESMTP server (a child process),
- Postfix's ``smtp-sink``,
- ``twistd -n mailframe`` with BDAT (CHUNKING, which the others lack),
- ``twistd -n mailframe --tls-cert ...`` with STARTTLS under the
  ``verify`` policy, and AUTH on its submission listener;

and checks each time that the message arrives byte for byte (dot lines,
long lines) with every recipient.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailframe.address import Mailbox
from mailframe.envelope import (
    BodyType,
    DeliveryStatus,
    Envelope,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.protocols.client import SMTPClientProtocol
from mailframe.testing import MemoryQueueStore, MemoryResolver
from mailframe.transports import SMTPTransport, SMTPTransportSettings
from tests.certs import make_certificates
from tests.interop.conftest import (
    REPO,
    Server,
    free_port,
    require,
    start_server,
    wait_for_greeting,
    wait_until,
)
from tests.interop.tls_support import PASSWORD, USER, TLSServer, received_field, start_tls_server

pytestmark = pytest.mark.interop

#: Our own Received: field, as the stored message starts with it.
RECEIVED = (b"Received: from client.example (unknown [192.0.2.7])\r\n"
            b"\tby relay.example (mailframe) with ESMTP id 4Q1; Thu, 1 Jan 2026 00:00:00 +0000\r\n")
LONG = b"L" * 998
BODY = (
    b"From: sender@example.com\r\nTo: alice@example.com\r\nSubject: outbound interop\r\n\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"...three\r\n"
    b" . \r\n"
    + LONG + b"\r\n"
    + b"".join(b"line %06d " % i + b"x" * 60 + b"\r\n" for i in range(20000))
    + b".final dot line\r\nthe end\r\n"
)
MESSAGE = RECEIVED + BODY
RECIPIENTS = ("alice@example.com", "bob@example.com", "carol@example.com")


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class Outbound(TestCase):
    """A transport on the real reactor, and a queue with one message in it."""

    timeout = 120

    def directory(self) -> pathlib.Path:
        """A new temporary directory, removed after the test."""
        path = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-outbound-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def make_transport(self, resolver: MemoryResolver | None = None,
                       **settings: Any) -> SMTPTransport:
        self.store = MemoryQueueStore(reactor)
        settings.setdefault("helo_name", "relay.example")
        settings.setdefault("tls", "none")
        transport = SMTPTransport(self.store, reactor, resolver or MemoryResolver(),
                                  random.Random(), SMTPTransportSettings(**settings))
        self.addCleanup(transport.stop)
        return transport

    def queue(self, recipients: Sequence[str] = RECIPIENTS, message: bytes = MESSAGE,
              **fields: Any) -> QueueEntry:
        writer = self.store.open_writer()
        writer.write(message)
        rcpts = tuple(Mailbox.parse(r, utf8=True) for r in recipients)
        envelope = Envelope(Mailbox("sender", "example.com"), rcpts, **fields)
        queue_id = self.successResultOf(writer.commit(envelope))
        entry = self.successResultOf(self.store.get(queue_id))
        assert entry is not None
        return entry

    async def deliver(self, transport: SMTPTransport, entry: QueueEntry,
                      route: Route) -> list[RecipientResult]:
        pairs = [(r, r) for r in entry.envelope.recipients]
        return list(await transport.deliver(entry, pairs, route))

    def assert_delivered(self, results: list[RecipientResult], count: int) -> None:
        self.assertEqual([r.status for r in results], [DeliveryStatus.DELIVERED] * count,
                         [str(r.reply) for r in results])


# -- aiosmtpd ------------------------------------------------------------------------

AIOSMTPD = r"""
import json, os, sys, threading
from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
count = [0]


class Saver:
    async def handle_DATA(self, server, session, envelope):
        with lock:
            count[0] += 1
            name = os.path.join(out, "%04d" % count[0])
        with open(name + ".eml.tmp", "wb") as handle:
            handle.write(envelope.original_content)
        with open(name + ".json", "w") as handle:
            json.dump({"from": envelope.mail_from, "rcpt": envelope.rcpt_tos,
                       "options": envelope.mail_options}, handle)
        os.rename(name + ".eml.tmp", name + ".eml")
        return "250 2.0.0 Saved"


controller = Controller(Saver(), hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
controller.start()
sys.stdin.read()
controller.stop()
"""


class SavedMessages:
    """What a peer saved: messages and their envelopes, by number."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    def messages(self) -> list[tuple[dict[str, Any], bytes]]:
        names = sorted(p for p in os.listdir(self.directory) if p.endswith(".eml"))
        return [(json.loads((self.directory / (name[:-4] + ".json")).read_text()),
                 (self.directory / name).read_bytes()) for name in names]


class AiosmtpdTests(Outbound):
    def setUp(self) -> None:
        self.out = self.directory()
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", AIOSMTPD, str(self.port), str(self.out)],
            stdin=subprocess.PIPE, cwd=REPO)
        self.addCleanup(self._stop)
        wait_for_greeting(self.port)
        self.saved = SavedMessages(self.out)

    def _stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.process)

    async def test_byte_for_byte_with_every_recipient(self) -> None:
        transport = self.make_transport()
        entry = self.queue(added_headers=("X-Policy: checked",))
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.port}"})
        results = await self.deliver(transport, entry, route)
        self.assert_delivered(results, 3)
        [(envelope, message)] = self.saved.messages()
        self.assertEqual(envelope["rcpt"], list(RECIPIENTS))
        self.assertEqual(envelope["from"], "sender@example.com")
        self.assertEqual(message, b"X-Policy: checked\r\n" + MESSAGE)

    async def test_smtputf8_and_reuse(self) -> None:
        """Two messages over one connection; the second needs SMTPUTF8."""
        transport = self.make_transport()
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.port}"})
        self.assert_delivered(await self.deliver(transport, self.queue(), route), 3)
        utf8 = RECEIVED + "Subject: gr\u00fc\u00dfe\r\n\r\nh\u00e9\r\n".encode()
        entry = self.queue(["j\u00f6rg@example.com"], utf8, smtputf8=True,
                           body=BodyType.EIGHT_BIT_MIME)
        self.assert_delivered(await self.deliver(transport, entry, route), 1)
        self.assertEqual(transport.open_connections, 1)
        [_, (envelope, message)] = self.saved.messages()
        self.assertEqual(envelope["rcpt"], ["j\u00f6rg@example.com"])
        self.assertIn("SMTPUTF8", envelope["options"])
        self.assertIn("BODY=8BITMIME", envelope["options"])
        self.assertEqual(message, utf8)


# -- Twisted's ESMTP server ------------------------------------------------------------

TWISTED_SERVER = r"""
import os, sys
from zope.interface import implementer
from twisted.internet import defer, reactor
from twisted.mail import smtp

port, out = int(sys.argv[1]), sys.argv[2]
count = [0]


@implementer(smtp.IMessage)
class Message:
    def __init__(self, recipient):
        self.recipient = recipient
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        count[0] += 1
        name = os.path.join(out, "%04d" % count[0])
        with open(name + ".tmp", "wb") as handle:
            handle.write(b"".join(line + b"\r\n" for line in self.lines))
        with open(name + ".json", "w") as handle:
            handle.write('{"rcpt": "%s"}' % self.recipient)
        os.rename(name + ".tmp", name + ".eml")
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class Delivery:
    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        recipient = str(user.dest)
        return lambda: Message(recipient)


class Server(smtp.ESMTP):
    def __init__(self):
        super().__init__()
        self.delivery = Delivery()


factory = smtp.SMTPFactory()
factory.protocol = Server
reactor.listenTCP(port, factory, interface="127.0.0.1")
reactor.run()
"""


class TwistedServerTests(Outbound):
    def setUp(self) -> None:
        self.out = self.directory()
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTED_SERVER, str(self.port), str(self.out)], cwd=REPO)
        self.addCleanup(stop_process, self.process)
        wait_for_greeting(self.port)

    async def test_byte_for_byte_with_every_recipient(self) -> None:
        """Twisted's ESMTP offers no PIPELINING: one command at a time."""
        transport = self.make_transport()
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.port}"})
        results = await self.deliver(transport, self.queue(), route)
        self.assert_delivered(results, 3)
        saved = SavedMessages(self.out).messages()
        # One IMessage for each recipient, each with the whole message.
        self.assertEqual(sorted(envelope["rcpt"] for envelope, _ in saved), list(RECIPIENTS))
        for _, message in saved:
            self.assertEqual(message, MESSAGE)


# -- Postfix's smtp-sink --------------------------------------------------------------


class SmtpSinkTests(Outbound):
    def setUp(self) -> None:
        sink = require("smtp-sink")
        if os.geteuid() != 0:
            pytest.skip("smtp-sink -u needs root")
        # smtp-sink writes as nobody, who may not reach the test's directory.
        work = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-sink-"))
        self.addCleanup(shutil.rmtree, work, True)
        work.chmod(0o777)
        self.dump = work / "dump"
        self.port = free_port()
        self.process = subprocess.Popen(
            [sink, "-u", "nobody", "-c", "-D", str(self.dump), f"127.0.0.1:{self.port}", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, self.process)
        wait_for_greeting(self.port)

    async def test_byte_for_byte_with_every_recipient(self) -> None:
        transport = self.make_transport()
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.port}"})
        results = await self.deliver(transport, self.queue(), route)
        self.assert_delivered(results, 3)
        # The dump is written as the message arrives; its empty last line
        # comes once the transaction is complete.
        expected = MESSAGE.replace(b"\r\n", b"\n") + b"\n"
        wait_until(lambda: self.dump.exists() and self.dump.read_bytes().endswith(expected),
                   10, "the message in the smtp-sink dump")
        dump = self.dump.read_bytes()
        header, _, content = dump.partition(b"\n\tby ")
        self.assertEqual([line for line in header.split(b"\n") if line.startswith(b"X-Rcpt")],
                         [b"X-Rcpt-Args: <%s>" % r.encode() for r in RECIPIENTS])
        self.assertTrue(content.endswith(expected))
        self.assertEqual(dump.count(b"X-Mail-Args:"), 1)


# -- mailframe itself: BDAT, STARTTLS with verify, AUTH ------------------------------------


def maildir_body(delivered: bytes) -> bytes:
    """A delivered (LF) message without the trace fields the server put on top."""
    marker = RECEIVED.replace(b"\r\n", b"\n")
    return delivered[delivered.index(marker):]


class MailframeChunkingTests(Outbound):
    def setUp(self) -> None:
        root = self.directory()
        self.server: Server = start_server(root)
        self.addCleanup(self.server.stop)

    async def test_bdat_byte_for_byte(self) -> None:
        sent = []
        original = SMTPClientProtocol._send_bdat

        async def counting(protocol: SMTPClientProtocol, transaction: Any) -> Any:
            sent.append(transaction)
            return await original(protocol, transaction)

        self.patch(SMTPClientProtocol, "_send_bdat", counting)
        transport = self.make_transport(chunking=True)
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.server.port}"})
        results = await self.deliver(transport, self.queue(), route)
        self.assert_delivered(results, 3)
        self.assertEqual(len(sent), 1)
        self.assertIn("Ok: queued as", results[0].reply.text[0])
        expected = MESSAGE.replace(b"\r\n", b"\n")
        for user in ("alice", "bob", "carol"):
            [delivered] = self.server.wait_delivered(user, 1)
            self.assertEqual(maildir_body(delivered), expected)


class MailframeTLSTests(Outbound):
    def setUp(self) -> None:
        root = self.directory()
        self.root = root
        self.tls: TLSServer = start_tls_server(root)
        self.addCleanup(self.tls.stop)
        # mx.example.com is the name in the server's certificate.
        self.resolver = MemoryResolver(mx={"example.com": [(10, "mx.example.com")]},
                                       addresses={"mx.example.com": ["127.0.0.1"]})

    async def test_verify(self) -> None:
        transport = self.make_transport(self.resolver, tls="verify", port=self.tls.port,
                                        trust_roots=[str(self.tls.certs.ca)])
        route = Route("smtp", {"domain": "example.com"})
        results = await self.deliver(transport, self.queue(), route)
        self.assert_delivered(results, 3)
        self.assertEqual({r.remote for r in results}, {"mx.example.com"})
        for user in ("alice", "bob", "carol"):
            [delivered] = self.tls.server.wait_delivered(user, 1)
            self.assertIn(" with ESMTPS id ", received_field(delivered))
            self.assertIn("(using TLSv1.", received_field(delivered))
            self.assertEqual(maildir_body(delivered), MESSAGE.replace(b"\r\n", b"\n"))

    async def test_verify_with_another_authority_fails_transiently(self) -> None:
        other = make_certificates(self.root / "other", serial=7)
        transport = self.make_transport(self.resolver, tls="verify", port=self.tls.port,
                                        trust_roots=[str(other.ca)])
        route = Route("smtp", {"domain": "example.com"})
        results = await self.deliver(transport, self.queue(), route)
        self.assertEqual({(r.status, r.reply.status) for r in results},
                         {(DeliveryStatus.TRANSIENT, "4.7.5")})
        # "may" goes on in plaintext after the same failure; "encrypt"
        # does not check the certificate at all.
        for policy in ("may", "encrypt"):
            transport = self.make_transport(self.resolver, tls=policy, port=self.tls.port,
                                            trust_roots=[str(other.ca)])
            self.assert_delivered(await self.deliver(transport, self.queue(), route), 3)

    async def test_auth_on_submission(self) -> None:
        """A smarthost at an IP literal, its certificate checked for the address."""
        transport = self.make_transport(tls="verify", trust_roots=[str(self.tls.certs.ca)],
                                        credentials=(USER, PASSWORD))
        route = Route("smtp", {"nexthop": f"[127.0.0.1]:{self.tls.submission}"})
        entry = self.queue(["alice@example.com"], auth="alice@example.com")
        self.assert_delivered(await self.deliver(transport, entry, route), 1)
        [delivered] = self.tls.server.wait_delivered("alice", 1)
        received = received_field(delivered)
        self.assertIn("(Authenticated sender: alice)", received)
        self.assertIn(" with ESMTPSA id ", received)

    async def test_wrong_password_is_transient(self) -> None:
        transport = self.make_transport(tls="encrypt", credentials=(USER, "wrong"))
        route = Route("smtp", {"nexthop": f"127.0.0.1:{self.tls.submission}"})
        started = time.monotonic()
        [result] = await self.deliver(transport, self.queue(["alice@example.com"]), route)
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.7.8"))
        self.assertLess(time.monotonic() - started, 60)

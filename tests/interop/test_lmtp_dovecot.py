"""
LMTP against a real Dovecot on loopback: mailframe's
:class:`~mailframe.transports.lmtp.LMTPTransport`, on the real reactor in
this process, delivers to a private ``dovecot -F`` that each test starts
with a config of its own in a temporary directory (no file of
``/etc/dovecot`` is read), listening on a free loopback port and on a
UNIX socket.

Dovecot's users are ``alice``, ``bob`` and ``carol`` of a passwd-file, and
their mail goes to ``DIR/mail/<user>/Maildir``. An address of any other
user is refused at RCPT (``550 5.1.1``). ``carol``'s home directory is
not Dovecot's to write, so that her delivery fails after the final dot
(``451 4.2.0``) while the others' succeed: each recipient has its own
reply (RFC 2033 §4.2).

Dovecot stores the message with LF line ends, after the ``Return-Path:``
and ``Received:`` fields that it adds as the final delivery agent; the
tests check that the rest is the message byte for byte (dot lines, a
998-octet line), with the fields that policies added first.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailframe.address import Mailbox
from mailframe.envelope import (
    DeliveryStatus,
    Envelope,
    Handoff,
    QueueEntry,
    RecipientResult,
    Route,
)
from mailframe.testing import MemoryQueueStore
from mailframe.transports.lmtp import LMTPTransport, LMTPTransportSettings
from tests.interop.conftest import free_port, require, wait_for_greeting

pytestmark = pytest.mark.interop

DOMAIN = "lmtp.test"
USERS = ("alice", "bob", "carol")
#: Every wait is bounded by this many seconds.
TIMEOUT = 30.0

LONG = b"L" * 998
MESSAGE = (
    b"Received: from client.example (unknown [192.0.2.7])\r\n"
    b"\tby relay.example (mailframe) with ESMTP id 4Q1; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"From: sender@example.com\r\n"
    b"To: alice@lmtp.test, bob@lmtp.test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <lmtp-dovecot@example.com>\r\n"
    b"Subject: from mailframe to Dovecot\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"...three\r\n"
    b" . \r\n"
    + LONG + b"\r\n"
    + b"".join(b"line %05d " % i + b"x" * 60 + b"\r\n" for i in range(5000))
    + b".final dot line\r\nthe end\r\n"
)

CONFIG = """\
protocols = lmtp
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
listen = 127.0.0.1
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%n/Maildir
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/users
  default_fields = uid=dovecot gid=dovecot home={root}/mail/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener {socket} {{
    mode = 0666
  }}
}}
"""

#: The UNIX socket, in base_dir.
SOCKET = "lmtp-mailframe"


class PrivateDovecot:
    """A ``dovecot -F`` of its own in *root*, for LMTP only."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> pathlib.Path:
        return self.root / "run" / SOCKET

    def start(self) -> None:
        dovecot = require("dovecot")
        if os.geteuid() != 0:
            pytest.skip("Dovecot delivers as the dovecot user: the test needs root")
        try:
            owner = pwd.getpwnam("dovecot")
            pwd.getpwnam("dovenull")
        except KeyError:
            pytest.fail("the dovecot and dovenull users are missing: reinstall dovecot-core")
        root = self.root
        # mkdtemp makes it 700: the dovecot user must reach the mail under it.
        root.chmod(0o755)
        for name in ("run", "state", "mail"):
            (root / name).mkdir()
        (root / "users").write_text("".join(f"{user}:::::::\n" for user in USERS))
        for user in ("alice", "bob"):
            (root / "mail" / user).mkdir()
        # Carol's home is root's, and closed: her delivery fails after the dot.
        (root / "mail" / "carol").mkdir(mode=0o000)
        (root / "mail" / "carol").chmod(0o000)
        for directory in (root / "mail", root / "mail" / "alice", root / "mail" / "bob"):
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        config = root / "dovecot.conf"
        config.write_text(CONFIG.format(root=root, port=self.port, socket=SOCKET))
        with open(root / "stdout.log", "wb") as out:
            self.process = subprocess.Popen([dovecot, "-F", "-c", str(config)],
                                            stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_greeting(self.port, TIMEOUT)
            self._wait_for_socket()
        except (TimeoutError, AssertionError):
            self.stop()
            raise AssertionError(f"Dovecot did not start:\n{self.log()}") from None

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self.socket.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no socket at {self.socket}")
            time.sleep(0.05)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def delivered(self, user: str) -> list[bytes]:
        new = self.root / "mail" / user / "Maildir" / "new"
        if not new.is_dir():
            return []
        return [(new / name).read_bytes() for name in sorted(os.listdir(new))]


class DovecotTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        root = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-lmtp-"))
        self.addCleanup(shutil.rmtree, root, True)
        self.dovecot = PrivateDovecot(root)
        self.addCleanup(self.dovecot.stop)
        self.dovecot.start()
        self.store = MemoryQueueStore(reactor)

    def make_transport(self, **settings: Any) -> LMTPTransport:
        settings.setdefault("lhlo_name", "relay.example")
        transport = LMTPTransport(self.store, reactor, LMTPTransportSettings(**settings))
        self.addCleanup(transport.stop)
        return transport

    def queue(self, *users: str, **fields: Any) -> QueueEntry:
        writer = self.store.open_writer()
        writer.write(MESSAGE)
        recipients = tuple(Mailbox(user, DOMAIN) for user in users)
        envelope = Envelope(Mailbox("sender", "example.com"), recipients, **fields)
        queue_id = self.successResultOf(writer.commit(envelope))
        entry = self.successResultOf(self.store.get(queue_id))
        assert entry is not None
        return entry

    async def deliver(self, transport: LMTPTransport, entry: QueueEntry,
                      endpoint: str) -> list[RecipientResult]:
        pairs = [(r, r) for r in entry.envelope.recipients]
        return list(await transport.deliver(entry, pairs, Route("lmtp", {"endpoint": endpoint})))

    @property
    def tcp(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.dovecot.port}"

    def outcome(self, results: list[RecipientResult]) -> list[tuple[str, str, int]]:
        return [(r.recipient.local_part, r.status.value, r.reply.code) for r in results]

    def assert_stored(self, user: str, prefix: bytes = b"") -> None:
        """*user* has one message: Dovecot's fields, then ours, with LF line ends."""
        [stored] = self.dovecot.delivered(user)
        expected = (prefix + MESSAGE).replace(b"\r\n", b"\n")
        self.assertTrue(stored.endswith(expected), stored[:1000])
        added = stored[: -len(expected)].decode()
        self.assertTrue(added.startswith("Return-Path: <sender@example.com>\n"), added)
        self.assertIn("from relay.example", added)
        self.assertIn("with LMTP", added)

    async def test_two_recipients_over_tcp(self) -> None:
        transport = self.make_transport()
        entry = self.queue("alice", "bob", added_headers=("X-Policy: checked",))
        results = await self.deliver(transport, entry, self.tcp)
        self.assertEqual(self.outcome(results), [("alice", "delivered", 250),
                                                 ("bob", "delivered", 250)], self.dovecot.log())
        self.assertEqual({r.handoff for r in results}, {Handoff.DELIVERED})
        # Dovecot names each recipient in its reply after the dot.
        self.assertIn("<alice@lmtp.test>", results[0].reply.text[0])
        self.assertIn("<bob@lmtp.test>", results[1].reply.text[0])
        self.assertEqual({r.reply.status for r in results}, {"2.0.0"})
        self.assertEqual({r.remote for r in results}, {self.tcp})
        for user in ("alice", "bob"):
            self.assert_stored(user, b"X-Policy: checked\r\n")
        self.assertEqual(self.dovecot.delivered("carol"), [])

    async def test_each_recipient_has_its_own_outcome(self) -> None:
        """Refused at RCPT, failed after the dot, and delivered, in one transaction."""
        transport = self.make_transport()
        entry = self.queue("alice", "nobody", "carol", "bob")
        results = await self.deliver(transport, entry, self.tcp)
        self.assertEqual(self.outcome(results), [
            ("alice", "delivered", 250),
            ("nobody", "permanent", 550),
            ("carol", "transient", 451),
            ("bob", "delivered", 250),
        ], self.dovecot.log())
        self.assertEqual(results[1].reply.status, "5.1.1")
        self.assertIn("<carol@lmtp.test>", results[2].reply.text[0])
        self.assert_stored("alice")
        self.assert_stored("bob")
        self.assertIn("Permission denied", self.dovecot.log())

    async def test_unix_socket_in_batches(self) -> None:
        transport = self.make_transport(recipients_per_transaction=1)
        entry = self.queue("alice", "bob")
        endpoint = f"unix:path={self.dovecot.socket}"
        results = await self.deliver(transport, entry, endpoint)
        self.assertEqual(self.outcome(results), [("alice", "delivered", 250),
                                                 ("bob", "delivered", 250)], self.dovecot.log())
        self.assert_stored("alice")
        self.assert_stored("bob")
        # The connection closes with QUIT once the delivery is done.
        await transport.stop()
        self.assertEqual(transport.open_connections, 0)

    async def test_nothing_listening(self) -> None:
        transport = self.make_transport()
        self.dovecot.stop()
        results = await self.deliver(transport, self.queue("alice"), self.tcp)
        self.assertEqual([(r.status, r.reply.status) for r in results],
                         [(DeliveryStatus.TRANSIENT, "4.4.1")])

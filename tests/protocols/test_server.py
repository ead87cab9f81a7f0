"""
Tests for the SMTP server protocol on fake transports and a fake clock.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.core import Limits
from mailframe.envelope import ClientInfo
from mailframe.policies import LocalRecipients, RelayControl
from mailframe.policies.relay import LOOPBACK
from mailframe.protocols.server import ServerSettings, SMTPServerFactory, SMTPServerProtocol
from mailframe.testing import MemoryQueueStore, RecordingPolicy
from mailframe.verdict import Action, Verdict

LOCAL = {"example.com": "/nonexistent"}


class ControlledStore:
    """A memory store whose commits wait until the test fires them."""

    def __init__(self, clock: Any) -> None:
        self.inner = MemoryQueueStore(clock)
        self.commits: list[Deferred[str]] = []
        self.room = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def has_room(self, size: int) -> bool:
        return self.room

    def open_writer(self) -> Any:
        writer = self.inner.open_writer()
        store = self

        class Writer:
            queue_id = writer.queue_id

            def __getattr__(self, name: str) -> Any:
                return getattr(writer, name)

            def commit(self, envelope: Any) -> Deferred[str]:
                d: Deferred[str] = Deferred()
                store.commits.append(d)
                return d.addCallback(lambda _: writer.commit(envelope))

        return Writer()


def connect(
    factory: SMTPServerFactory, host: str = "127.0.0.1", port: int = 40000
) -> tuple[SMTPServerProtocol, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def take(transport: StringTransport) -> list[str]:
    """The reply lines written since the last call."""
    data = transport.value().decode()
    transport.clear()
    return [line for line in data.split("\r\n") if line]


def make_factory(
    policies: list[Any] | None = None,
    store: Any = None,
    clock: MemoryReactorClock | None = None,
    **settings: Any,
) -> tuple[SMTPServerFactory, Any, MemoryReactorClock]:
    clock = clock or MemoryReactorClock()
    store = store if store is not None else MemoryQueueStore(clock)
    if policies is None:
        policies = [RelayControl(LOCAL, LOOPBACK), LocalRecipients(LOCAL)]
    factory = SMTPServerFactory(
        ServerSettings(hostname="mx.example.com", **settings), store, policies, clock
    )
    return factory, store, clock


SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<sender@example.org>\r\n"
    b"RCPT TO:<alice@example.com>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    b"QUIT\r\n"
)


class SessionTests(SynchronousTestCase):
    def test_greeting(self) -> None:
        factory, _, _ = make_factory()
        _, transport = connect(factory)
        self.assertEqual(take(transport), ["220 mx.example.com ESMTP mailframe"])

    def test_message_is_queued_with_received_header(self) -> None:
        factory, store, _ = make_factory()
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(SESSION)
        lines = take(transport)
        self.assertEqual(lines[-1], "221 2.0.0 Bye")
        queued = [line for line in lines if "queued as" in line]
        self.assertEqual(len(queued), 1)
        queue_id = queued[0].rsplit(" ", 1)[1]
        entry = self.successResultOf(store.get(queue_id))
        self.assertEqual([str(r) for r in entry.envelope.recipients], ["alice@example.com"])
        self.assertEqual(str(entry.envelope.sender), "sender@example.org")
        message = self.successResultOf(store.open_message(queue_id)).read()
        received, rest = message.split(b"Subject: hi\r\n", 1)
        self.assertTrue(received.startswith(b"Received: from client.example (unknown [127.0.0.1])"))
        self.assertIn(f"with ESMTP id {queue_id}".encode(), received)
        self.assertIn(b"for <alice@example.com>;", received)
        self.assertEqual(rest, b"\r\n.dot\r\nbody\r\n")
        self.assertTrue(transport.disconnecting)

    def test_same_result_fed_one_byte_at_a_time(self) -> None:
        factory, _store, _ = make_factory()
        protocol, transport = connect(factory)
        take(transport)
        for index in range(len(SESSION)):
            protocol.dataReceived(SESSION[index : index + 1])
        lines = take(transport)
        self.assertEqual(len([line for line in lines if "queued as" in line]), 1)
        self.assertEqual(lines[-1], "221 2.0.0 Bye")

    def test_nothing_delivered_when_client_disconnects_mid_data(self) -> None:
        factory, store, _ = make_factory()
        protocol, _transport = connect(factory)
        protocol.dataReceived(SESSION.split(b"..dot")[0])
        protocol.connectionLost()
        stats = self.successResultOf(store.stats())
        self.assertEqual(sum(count for _, count in stats.counts), 0)
        self.assertEqual(self.successResultOf(store.list()), [])

    def test_no_250_before_commit(self) -> None:
        clock = MemoryReactorClock()
        store = ControlledStore(clock)
        factory, _, _ = make_factory(store=store, clock=clock)
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(SESSION)
        lines = take(transport)
        self.assertEqual(lines[-1], "354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(len(store.commits), 1)
        store.commits[0].callback(None)
        lines = take(transport)
        self.assertRegex(lines[0], r"^250 2\.0\.0 Ok: queued as \S+$")
        self.assertEqual(lines[1], "221 2.0.0 Bye")

    def test_commit_failure_is_451(self) -> None:
        clock = MemoryReactorClock()
        store = ControlledStore(clock)
        factory, _, _ = make_factory(store=store, clock=clock)
        protocol, transport = connect(factory)
        protocol.dataReceived(SESSION.replace(b"QUIT\r\n", b""))
        take(transport)
        store.commits[0].errback(OSError(28, "No space left on device"))
        self.assertEqual(take(transport), ["451 4.3.0 Error: queue file write error"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_low_disk_space(self) -> None:
        clock = MemoryReactorClock()
        store = ControlledStore(clock)
        store.room = False
        factory, _, _ = make_factory(store=store, clock=clock)
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(take(transport)[-1], "452 4.3.1 Error: insufficient system storage")

    def test_too_many_hops(self) -> None:
        factory, store, _ = make_factory()
        protocol, transport = connect(factory)
        take(transport)
        hops = b"Received: from x by y; date\r\n" * 51
        protocol.dataReceived(SESSION.replace(b"Subject: hi\r\n", hops))
        lines = take(transport)
        self.assertIn("554 5.4.6 Too many hops (51 Received: fields)", lines)
        self.assertEqual(self.successResultOf(store.list()), [])

    def test_size_limit_at_end_of_data(self) -> None:
        factory, store, _ = make_factory(limits=Limits(max_message_size=100))
        protocol, transport = connect(factory)
        take(transport)
        big = SESSION.replace(b"body\r\n", b"x" * 200 + b"\r\n")
        protocol.dataReceived(big)
        lines = take(transport)
        self.assertIn("552 5.3.4 Message size exceeds fixed maximum message size", lines)
        self.assertEqual(self.successResultOf(store.list()), [])


class RelayTests(SynchronousTestCase):
    def rcpt(self, address: str, host: str = "192.0.2.7", users: Any = None) -> str:
        policies = [RelayControl(LOCAL, LOOPBACK), LocalRecipients(LOCAL, users)]
        factory, _, _ = make_factory(policies)
        protocol, transport = connect(factory, host=host)
        take(transport)
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        take(transport)
        protocol.dataReceived(b"RCPT TO:" + address.encode() + b"\r\n")
        return take(transport)[-1]

    def test_local_domain_from_anyone(self) -> None:
        self.assertEqual(self.rcpt("<Alice@EXAMPLE.com>"), "250 2.1.5 OK")

    def test_relay_denied_outside_relay_networks(self) -> None:
        self.assertEqual(self.rcpt("<bob@elsewhere.org>"),
                         "554 5.7.1 <bob@elsewhere.org>: Relay access denied")

    def test_relay_allowed_from_loopback(self) -> None:
        self.assertEqual(self.rcpt("<bob@elsewhere.org>", host="127.0.0.1"), "250 2.1.5 OK")

    def test_each_client_is_judged_by_its_own_address(self) -> None:
        """
        One policy serves every session: a client's answer is never
        another's, whichever came first, and AUTH still counts.
        """
        policy = RelayControl(LOCAL, (ipaddress.ip_network("192.0.2.0/25"),))
        bob = Mailbox("bob", "elsewhere.org")
        for address, authenticated_as, allowed in [
            ("192.0.2.7", None, True), ("192.0.2.200", None, False),
            ("192.0.2.7", None, True), ("192.0.2.200", "carol", True),
            ("192.0.2.200", None, False), ("not an address", None, False),
            ("2001:db8::1", None, False),
        ]:
            client = ClientInfo(address, authenticated_as=authenticated_as)
            verdict = policy.rcpt(client, None, bob, {})
            self.assertEqual(verdict.action is not Action.REJECT, allowed,
                             (address, authenticated_as))

    def test_relay_tricks_are_not_relayed(self) -> None:
        for trick in ("<bob%elsewhere.org@example.com>", "<elsewhere.org!bob@example.com>",
                      '<"bob@elsewhere.org"@example.com>'):
            self.assertTrue(self.rcpt(trick).startswith("550 5.1.1"), trick)
        self.assertTrue(self.rcpt("<@example.com:bob@elsewhere.org>").startswith("554 5.7.1"))

    def test_unknown_user(self) -> None:
        users = frozenset({"alice"})
        self.assertEqual(self.rcpt("<ALICE@example.com>", users=users), "250 2.1.5 OK")
        self.assertTrue(self.rcpt("<carol@example.com>", users=users).startswith("550 5.1.1"))

    def test_postmaster_always_accepted(self) -> None:
        users = frozenset({"alice"})
        for address in ("<postmaster>", "<PostMaster>", "<POSTMASTER@example.com>"):
            self.assertEqual(self.rcpt(address, users=users), "250 2.1.5 OK", address)


class PipeliningTests(SynchronousTestCase):
    def test_replies_stay_in_order(self) -> None:
        pending: dict[str, Deferred[Verdict]] = {}

        def rcpt(client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
            d: Deferred[Verdict] = Deferred()
            pending[recipient.local_part] = d
            return d

        factory, _, _ = make_factory([RecordingPolicy({"rcpt": rcpt})])
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(
            b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<one@example.com>\r\n"
            b"RCPT TO:<two@example.com>\r\nNOOP\r\n"
        )
        self.assertEqual(len(take(transport)), 9)  # EHLO reply (8 lines) + MAIL reply
        pending["one"].callback(Verdict.reject(550, "5.1.1", "no one"))
        self.assertEqual(take(transport), ["550 5.1.1 no one"])
        pending["two"].callback(Verdict())
        self.assertEqual(take(transport), ["250 2.1.5 OK", "250 2.0.0 OK"])

    def test_reading_pauses_while_replies_pile_up(self) -> None:
        waiting: Deferred[Verdict] = Deferred()
        factory, _, _ = make_factory([RecordingPolicy({"helo": waiting})])
        protocol, transport = connect(factory)
        protocol.dataReceived(b"EHLO c\r\n" + b"NOOP\r\n" * 100)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"NOOP\r\n")
        self.assertEqual(transport.producerState, "paused")
        waiting.callback(Verdict())
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(take(transport).count("250 2.0.0 OK"), 101)

    def test_plugin_exception_is_one_451(self) -> None:
        def broken(*args: Any) -> Any:
            raise RuntimeError("boom")

        factory, _, _ = make_factory([RecordingPolicy({"mail": broken})])
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
        lines = take(transport)
        self.assertEqual(lines[-2:], ["451 4.3.0 Error: internal error in processing",
                                      "250 2.0.0 OK"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_end_of_data_policy_verdicts(self) -> None:
        for action, expected in ((Action.DISCARD, r"250 2\.0\.0 Ok: discarded as \S+"),
                                 (Action.HOLD, r"250 2\.0\.0 Ok: queued as \S+")):
            verdict = Verdict(action, headers=("X-Checked: yes",))
            factory, store, _ = make_factory([RecordingPolicy({"end_of_data": verdict})])
            protocol, transport = connect(factory)
            protocol.dataReceived(SESSION)
            line = next(x for x in take(transport) if x.startswith("250 2.0.0 Ok"))
            self.assertRegex(line, expected)
            entries = self.successResultOf(store.list())
            if action is Action.DISCARD:
                self.assertEqual(entries, [])
            else:
                self.assertEqual(entries[0].state.value, "hold")
                self.assertEqual(entries[0].reason, "held by policy")
                self.assertEqual(entries[0].envelope.added_headers, ("X-Checked: yes",))


DSN_SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<sender@example.org> RET=hdrs ENVID=abc+2Bdef\r\n"
    b"RCPT TO:<alice@example.com> NOTIFY=success,FAILURE ORCPT=rfc822;Alice+2B1@example.com\r\n"
    b"RCPT TO:<bob@example.com>\r\n"
    b"RCPT TO:<carol@example.com> NOTIFY=NEVER\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\nbody\r\n.\r\n"
    b"QUIT\r\n"
)


class DSNTests(SynchronousTestCase):
    """RFC 3461: DSN is offered, and its parameters end up in the envelope."""

    def committed(self, factory: SMTPServerFactory, store: Any, chunks: list[bytes]) -> Any:
        protocol, transport = connect(factory)
        take(transport)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        lines = take(transport)
        self.assertIn("250-DSN", lines)
        queued = [line for line in lines if "queued as" in line]
        self.assertEqual(len(queued), 1, lines)
        entry = self.successResultOf(store.get(queued[0].rsplit(" ", 1)[1]))
        return entry.envelope

    def test_parameters_are_in_the_committed_envelope(self) -> None:
        from mailframe.address import Mailbox
        from mailframe.envelope import DSNOptions

        alice = Mailbox("alice", "example.com")
        for chunks in ([DSN_SESSION],
                       [DSN_SESSION[i : i + 1] for i in range(len(DSN_SESSION))]):
            factory, store, _ = make_factory()
            envelope = self.committed(factory, store, chunks)
            self.assertEqual((envelope.ret, envelope.envid), ("HDRS", "abc+def"))
            # Only the recipients that gave NOTIFY or ORCPT.
            self.assertEqual(envelope.dsn, (
                (alice, DSNOptions(frozenset({"SUCCESS", "FAILURE"}),
                                   "rfc822;Alice+1@example.com")),
                (Mailbox("carol", "example.com"), DSNOptions(frozenset({"NEVER"}))),
            ))
            self.assertEqual(envelope.dsn_options(alice).orcpt, "rfc822;Alice+1@example.com")
            self.assertEqual(envelope.dsn_options(Mailbox("bob", "example.com")), DSNOptions())

    def test_without_parameters_the_envelope_has_none(self) -> None:
        factory, store, _ = make_factory()
        envelope = self.committed(factory, store, [SESSION])
        self.assertEqual((envelope.ret, envelope.envid, envelope.dsn), (None, None, ()))

    def test_with_bdat(self) -> None:
        factory, store, _ = make_factory()
        body = b"Subject: hi\r\n\r\nbody\r\n"
        session = DSN_SESSION.split(b"DATA\r\n")[0] + b"BDAT %d LAST\r\n%sQUIT\r\n" % (
            len(body), body)
        envelope = self.committed(factory, store, [session])
        self.assertEqual((envelope.ret, envelope.envid), ("HDRS", "abc+def"))
        self.assertEqual(len(envelope.dsn), 2)

    def test_policies_see_the_parameters_as_sent(self) -> None:
        policy = RecordingPolicy()
        factory, store, _ = make_factory([policy])
        self.committed(factory, store, [DSN_SESSION])
        mail = [args for hook, args in policy.calls if hook == "mail"]
        rcpt = [args for hook, args in policy.calls if hook == "rcpt"]
        self.assertEqual(mail[0][2], {"RET": "hdrs", "ENVID": "abc+2Bdef"})
        self.assertEqual(rcpt[0][3], {"NOTIFY": "success,FAILURE",
                                      "ORCPT": "rfc822;Alice+2B1@example.com"})

    def test_malformed_parameters_get_501(self) -> None:
        factory, _, _ = make_factory()
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(
            b"EHLO c\r\n"
            b"MAIL FROM:<a@example.org> RET=ALL\r\n"
            b"MAIL FROM:<a@example.org> ENVID=a+0D+0Ab\r\n"
            b"MAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<alice@example.com> NOTIFY=NEVER,SUCCESS\r\n"
            b"RCPT TO:<alice@example.com> ORCPT=alice@example.com\r\n"
            b"RCPT TO:<alice@example.com> NOTIFY=DELAY NOTIFY=DELAY\r\n"
            b"RCPT TO:<alice@example.com> XNOTIFY=DELAY\r\n"
        )
        self.assertEqual(take(transport)[-7:], [
            "501 5.5.4 Bad RET parameter",
            "501 5.5.4 Bad ENVID parameter",
            "250 2.1.0 OK",
            "501 5.5.4 Bad NOTIFY parameter",
            "501 5.5.4 Bad ORCPT parameter",
            "501 5.5.4 Duplicate parameter: NOTIFY",
            "555 5.5.4 Unsupported RCPT parameter: XNOTIFY",
        ])

    def test_dsn_can_be_turned_off(self) -> None:
        factory, _, _ = make_factory(dsn=False)
        protocol, transport = connect(factory)
        take(transport)
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@example.org> RET=FULL\r\n")
        lines = take(transport)
        self.assertNotIn("250-DSN", lines)
        self.assertNotIn("250 DSN", lines)
        self.assertEqual(lines[-1], "555 5.5.4 Unsupported MAIL parameter: RET")


class LimitsTests(SynchronousTestCase):
    def test_per_client_limit_and_exemptions(self) -> None:
        factory, _, _ = make_factory(max_per_client=2, limit_exemptions=LOOPBACK)
        for _ in range(2):
            connect(factory, host="192.0.2.9")
        _, transport = connect(factory, host="192.0.2.9")
        self.assertEqual(take(transport),
                         ["421 4.7.0 mx.example.com Error: too many connections from 192.0.2.9"])
        self.assertTrue(transport.disconnecting)
        for _ in range(3):
            _, transport = connect(factory, host="127.0.0.1")
            self.assertTrue(take(transport)[0].startswith("220 "))

    def test_total_limit(self) -> None:
        factory, _, _ = make_factory(max_connections=1)
        connect(factory)
        _, transport = connect(factory, host="192.0.2.3")
        self.assertEqual(take(transport),
                         ["421 4.7.0 mx.example.com Error: too many connections"])

    def test_connection_refused_by_policy(self) -> None:
        factory, _, _ = make_factory([RecordingPolicy(
            {"connect": Verdict.reject(554, "5.7.1", "go away")})])
        _, transport = connect(factory)
        self.assertEqual(take(transport), ["554 go away"])
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout(self) -> None:
        factory, _, clock = make_factory()
        protocol, transport = connect(factory)
        take(transport)
        clock.advance(299)
        protocol.dataReceived(b"NOOP\r\n")
        clock.advance(299)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertEqual(take(transport), ["250 2.0.0 OK", "421 4.4.2 Error: timeout exceeded"])
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_has_a_floor(self) -> None:
        self.assertRaises(ValueError, ServerSettings, hostname="h", idle_timeout=10)


class ShutdownTests(SynchronousTestCase):
    def test_next_command_gets_421_and_grace_ends_the_rest(self) -> None:
        factory, _, clock = make_factory()
        first, first_transport = connect(factory)
        second, second_transport = connect(factory, port=40001)
        take(first_transport), take(second_transport)
        drained = factory.shut_down(10)
        self.assertNoResult(drained)
        first.dataReceived(b"EHLO c\r\n")
        self.assertEqual(take(first_transport),
                         ["421 4.3.2 mx.example.com Service shutting down, closing connection"])
        self.assertTrue(first_transport.disconnecting)
        first.connectionLost()
        clock.advance(10)
        self.assertEqual(take(second_transport),
                         ["421 4.3.2 mx.example.com Service shutting down, closing connection"])
        second.connectionLost()
        self.successResultOf(drained)

    def test_final_dot_before_shutdown_is_committed_and_acknowledged(self) -> None:
        clock = MemoryReactorClock()
        store = ControlledStore(clock)
        factory, _, _ = make_factory(store=store, clock=clock)
        protocol, transport = connect(factory)
        protocol.dataReceived(SESSION.replace(b"QUIT\r\n", b""))
        take(transport)
        drained = factory.shut_down(5)
        clock.advance(5)
        self.assertEqual(take(transport), [])
        self.assertFalse(transport.disconnecting)
        store.commits[0].callback(None)
        lines = take(transport)
        self.assertRegex(lines[0], r"^250 2\.0\.0 Ok: queued as \S+$")
        self.assertTrue(lines[1].startswith("421 4.3.2"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.successResultOf(drained)
        self.assertEqual(len(self.successResultOf(store.inner.list())), 1)


class ReceivedHeaderTests(SynchronousTestCase):
    def test_tls_and_auth_named(self) -> None:
        import attrs

        factory, store, _ = make_factory()
        protocol, transport = connect(factory)
        protocol.client = attrs.evolve(protocol.client, tls="TLSv1.3",
                                       authenticated_as="alice")
        protocol.dataReceived(SESSION)
        queue_id = next(x for x in take(transport) if "queued" in x).rsplit(" ", 1)[1]
        message = self.successResultOf(store.open_message(queue_id)).read()
        header = message.split(b"Subject:")[0].decode()
        self.assertIn("(using TLSv1.3)", header)
        self.assertIn("(Authenticated sender: alice)", header)
        self.assertIn(f"with ESMTPSA id {queue_id}", header)
        self.assertTrue(re.search(r"\d{2} \w{3} \d{4} \d\d:\d\d:\d\d", header))



class EndOfDataScanTests(SynchronousTestCase):
    def test_policy_reads_the_message(self) -> None:
        seen: list[bytes] = []

        def scan(envelope: Any, headers: bytes, message: Any) -> Deferred[Verdict]:
            def read(f: Any) -> Verdict:
                seen.append(f.read())
                return Verdict.reject(554, "5.7.1", "found") if b"body" in seen[-1] else Verdict()

            return message().addCallback(read)

        factory, store, _ = make_factory([RecordingPolicy({"end_of_data": scan})])
        protocol, transport = connect(factory)
        protocol.dataReceived(SESSION)
        self.assertIn("554 5.7.1 found", take(transport))
        self.assertTrue(seen[0].startswith(b"Received: from client.example"))
        self.assertTrue(seen[0].endswith(b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"))
        self.assertEqual(self.successResultOf(store.list()), [])


class LogEventTests(SynchronousTestCase):
    def test_accepted_message_and_refused_recipient_are_structured_events(self) -> None:
        from twisted.logger import Logger, formatEvent

        events: list[dict[str, Any]] = []
        factory, _, _ = make_factory()
        protocol, transport = connect(factory, host="192.0.2.8")
        protocol.log = Logger(observer=events.append)
        protocol.dataReceived(SESSION.replace(
            b"RCPT TO:<alice@example.com>\r\n",
            b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<alice@example.com>\r\n"))
        queued = [e for e in events if e.get("status") == "queued"]
        refused = [e for e in events if e.get("status") == "rejected"]
        self.assertEqual(len(queued), 1)
        self.assertEqual(len(refused), 1)
        accepted = queued[0]
        queue_id = next(x for x in take(transport) if "queued" in x).rsplit(" ", 1)[1]
        self.assertEqual(accepted["queue_id"], queue_id)
        self.assertEqual(accepted["sender"], "sender@example.org")
        self.assertEqual(accepted["recipients"], ["alice@example.com"])
        self.assertEqual(accepted["client"].address, "192.0.2.8")
        self.assertEqual(accepted["size"], len(b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"))
        self.assertEqual(accepted["reply"], f"250 2.0.0 Ok: queued as {queue_id}")
        size = accepted["size"]
        self.assertEqual(
            formatEvent(accepted),
            f"{queue_id}: queued from=<sender@example.org> size={size} nrcpt=1"
            f" client=192.0.2.8: 250 2.0.0 Ok: queued as {queue_id}")
        self.assertEqual(refused[0]["recipient"], "x@elsewhere.example")
        self.assertTrue(refused[0]["reply"].startswith("554 5.7.1"))


class SharedLimitTests(SynchronousTestCase):
    def test_listeners_share_the_total(self) -> None:
        from mailframe.protocols.server import ConnectionCounts

        counts = ConnectionCounts()
        clock = MemoryReactorClock()
        store = MemoryQueueStore(clock)
        factories = [
            SMTPServerFactory(ServerSettings(hostname="mx.example.com", max_connections=2),
                              store, [], clock, counts=counts)
            for _ in range(2)
        ]
        first, _ = connect(factories[0])
        connect(factories[1], host="192.0.2.4")
        _, refused = connect(factories[1], host="192.0.2.5")
        self.assertEqual(take(refused), ["421 4.7.0 mx.example.com Error: too many connections"])
        first.connectionLost()
        _, admitted = connect(factories[1], host="192.0.2.6")
        self.assertTrue(take(admitted)[0].startswith("220 "))


class InternationalDomainTests(SynchronousTestCase):
    def test_local_domains_compare_by_a_label(self) -> None:
        from mailframe.address import Mailbox
        from mailframe.policies._domains import domain_key

        assert domain_key("Bücher.Example") == "xn--bcher-kva.example"
        policy = RelayControl({"bücher.example": "/x"}, ())
        self.assertTrue(policy.is_local(Mailbox("a", "xn--bcher-kva.example")))
        self.assertTrue(policy.is_local(Mailbox("a", "BÜCHER.example")))
        self.assertFalse(policy.is_local(Mailbox("a", "buecher.example")))

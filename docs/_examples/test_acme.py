"""
Tests of the example components, written the way a plugin author tests
their own: the contract suites of mailframe.testing, the fakes, and a whole
SMTP session on a fake transport and a fake clock.
"""

from __future__ import annotations

import random

from acme import (
    AliasRouter,
    DNSBlocklist,
    SenderBlockMaker,
    SenderDomainBlock,
    SenderLoginMatch,
)
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import NULL_PATH, Mailbox
from mailframe.config import ComponentContext
from mailframe.envelope import ClientInfo, Route
from mailframe.protocols.server import ServerSettings, SMTPServerFactory
from mailframe.testing import (
    ComponentMakerContract,
    MemoryQueueStore,
    MemoryResolver,
    PolicyContract,
    RouterContract,
    StaticRouter,
    envelope,
)
from mailframe.verdict import Action


class SenderDomainBlockTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> SenderDomainBlock:
        return SenderDomainBlock(["spam.example"])

    def test_refuses_blocked_domain(self) -> None:
        client = ClientInfo(address="192.0.2.1")
        verdict = self.make_policy().mail(client, Mailbox("x", "SPAM.example"), {})
        self.assertEqual(verdict.action, Action.REJECT)
        self.assertEqual(verdict.reply.code, 550)

    def test_marks_messages(self) -> None:
        verdict = self.make_policy().end_of_data(envelope(), b"", None)
        self.assertEqual(verdict.headers, ("X-Acme-Checked: yes",))


class DNSBlocklistTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> DNSBlocklist:
        # strict: a name it does not know is NXDOMAIN, as a blocklist answers.
        listed = MemoryResolver(addresses={"2.2.0.192.bl.example": ["127.0.0.2"]}, strict=True)
        return DNSBlocklist(listed, "bl.example")

    def test_listed_client_refused(self) -> None:
        verdict = self.successResultOf(self.make_policy().connect(ClientInfo(address="192.0.2.2")))
        self.assertEqual(verdict.action, Action.REJECT)

    def test_unlisted_client_accepted(self) -> None:
        verdict = self.successResultOf(self.make_policy().connect(ClientInfo(address="192.0.2.3")))
        self.assertEqual(verdict.action, Action.CONTINUE)


class SenderLoginMatchTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> SenderLoginMatch:
        return SenderLoginMatch({"alice": ["alice@example.com", "Sales@example.com"]})

    def test_own_addresses(self) -> None:
        alice = ClientInfo(address="192.0.2.1", authenticated_as="alice")
        for sender in (Mailbox("alice", "example.com"), Mailbox("sales", "EXAMPLE.com")):
            self.assertEqual(self.make_policy().mail(alice, sender, {}).action, Action.CONTINUE)

    def test_other_addresses_refused(self) -> None:
        policy = self.make_policy()
        alice = ClientInfo(address="192.0.2.1", authenticated_as="alice")
        verdict = policy.mail(alice, Mailbox("bob", "example.com"), {})
        self.assertEqual(verdict.action, Action.REJECT)
        self.assertEqual((verdict.reply.code, verdict.reply.status), (553, "5.7.1"))
        self.assertEqual(policy.mail(alice, NULL_PATH, {}).action, Action.REJECT)
        carol = ClientInfo(address="192.0.2.1", authenticated_as="carol")
        self.assertEqual(
            policy.mail(carol, Mailbox("alice", "example.com"), {}).action, Action.REJECT
        )

    def test_clients_that_did_not_log_in(self) -> None:
        client = ClientInfo(address="192.0.2.1")
        verdict = self.make_policy().mail(client, Mailbox("bob", "example.com"), {})
        self.assertEqual(verdict.action, Action.CONTINUE)


class AliasRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> AliasRouter:
        local = StaticRouter({"example.com": Route("maildir")})
        return AliasRouter({"team@example.com": ["alice@example.com", "bob@example.com"]}, local)

    def test_expands_alias(self) -> None:
        team = Mailbox("team", "example.com")
        routes = self.successResultOf(self.make_router().route(envelope(), team))
        self.assertEqual(
            [str(final) for final, _, _ in routes], ["alice@example.com", "bob@example.com"]
        )
        self.assertEqual({original for _, original, _ in routes}, {team})


class SenderBlockMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> SenderBlockMaker:
        return SenderBlockMaker()

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=MemoryReactorClock(), random=random.Random(4))

    def test_builds_policy(self) -> None:
        policy = self.make_maker().build({"domains": ["Spam.example"]}, self.make_context())
        self.assertEqual(policy.domains, frozenset({"spam.example"}))


class SessionTests(SynchronousTestCase):
    def test_blocked_sender_in_a_session(self) -> None:
        clock = MemoryReactorClock()
        store = MemoryQueueStore(clock)
        factory = SMTPServerFactory(
            ServerSettings(hostname="mx.example.com"),
            store,
            [SenderDomainBlock(["spam.example"])],
            clock,
        )
        address = IPv4Address("TCP", "192.0.2.7", 40000)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"EHLO client.example\r\n"
            b"MAIL FROM:<x@spam.example>\r\n"
            b"MAIL FROM:<someone@example.org>\r\n"
            b"RCPT TO:<alice@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: hi\r\n\r\nHello.\r\n.\r\n"
        )
        replies = transport.value().decode().splitlines()
        self.assertIn("550 5.7.1 Mail from spam.example is not accepted", replies)
        self.assertTrue(replies[-1].startswith("250 2.0.0 Ok: queued as "))
        (entry,) = self.successResultOf(store.list())
        self.assertEqual(entry.envelope.added_headers, ("X-Acme-Checked: yes",))

"""
The ``router-check`` policy: what the router refuses from local data is
refused at RCPT.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.config import ComponentContext
from mailframe.envelope import ClientInfo, Route
from mailframe.interfaces import IRecipientValidator, IRouter
from mailframe.policies.validate import RouterCheck, validate_maker
from mailframe.protocols.server import ServerSettings, SMTPServerFactory
from mailframe.reply import Reply
from mailframe.routing.chain import ChainRouter
from mailframe.routing.routers import MXRouter
from mailframe.routing.table import TableRouter
from mailframe.testing import (
    ComponentMakerContract,
    MemoryQueueStore,
    PolicyContract,
    RecordingPolicy,
    StaticRouter,
)
from mailframe.verdict import Action, Verdict

CLIENT = ClientInfo(address="192.0.2.7", port=4000, helo="client.example")
SENDER = Mailbox("sender", "example.org")


@implementer(IRouter, IRecipientValidator)
class AnsweringRouter(StaticRouter):
    """A router whose validator gives *answer*, or calls it with the recipient."""

    def __init__(self, answer: Any) -> None:
        super().__init__({})
        self.answer = answer

    def validate(self, recipient: Mailbox) -> Any:
        return self.answer(recipient) if callable(self.answer) else self.answer


def table_chain() -> ChainRouter:
    mx = MXRouter()
    return ChainRouter([
        TableRouter({
            "gone@example.com": "reject:550 5.1.1 <gone@example.com>: User unknown",
            "loop@example.com": "alias:loop2@example.com",
            "loop2@example.com": "alias:loop@example.com",
            "list@example.com": "alias:alice@example.com,bob@example.net",
            "example.com": "maildir:/srv/mail",
        }, fallback=mx),
        mx,
    ])


class RouterCheckContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RouterCheck:
        return RouterCheck(table_chain())


class RouterCheckTests(SynchronousTestCase):
    def verdict(self, policy: RouterCheck, address: str) -> Verdict:
        answer = policy.rcpt(CLIENT, SENDER, Mailbox.parse(address), {})
        if isinstance(answer, Deferred):
            answer = self.successResultOf(answer)
        assert isinstance(answer, Verdict)
        return answer

    def test_router_without_validator_refuses_nothing(self) -> None:
        policy = RouterCheck(MXRouter())
        self.assertIsNone(policy.validator)
        self.assertEqual(self.verdict(policy, "x@example.com"), Verdict())

    def test_refusal_becomes_reject(self) -> None:
        reply = Reply(550, "5.1.1", "User unknown")
        verdict = self.verdict(RouterCheck(AnsweringRouter(reply)), "x@example.com")
        self.assertEqual((verdict.action, verdict.reply), (Action.REJECT, reply))

    def test_transient_refusal_becomes_tempfail(self) -> None:
        reply = Reply(451, "4.3.0", "Try later")
        verdict = self.verdict(RouterCheck(AnsweringRouter(succeed(reply))), "x@example.com")
        self.assertEqual((verdict.action, verdict.reply), (Action.TEMPFAIL, reply))

    def test_accepted_continues(self) -> None:
        self.assertEqual(self.verdict(RouterCheck(AnsweringRouter(None)), "x@example.com"),
                         Verdict())

    def test_asked_with_the_recipient_and_may_answer_later(self) -> None:
        asked: list[Mailbox] = []
        later: Deferred[Reply | None] = Deferred()

        def answer(recipient: Mailbox) -> Deferred[Reply | None]:
            asked.append(recipient)
            return later

        policy = RouterCheck(AnsweringRouter(answer))
        d = policy.rcpt(CLIENT, SENDER, Mailbox.parse("x@example.com"), {})
        self.assertNoResult(d)
        self.assertEqual(asked, [Mailbox("x", "example.com")])
        later.callback(Reply(550, "5.1.1", "No"))
        self.assertEqual(self.successResultOf(d).action, Action.REJECT)

    def test_failures_fail(self) -> None:
        policy = RouterCheck(AnsweringRouter(fail(RuntimeError("down"))))
        self.failureResultOf(policy.rcpt(CLIENT, SENDER, Mailbox.parse("x@example.com"), {}),
                             RuntimeError)

        def broken(recipient: Mailbox) -> None:
            raise RuntimeError("bug")

        policy = RouterCheck(AnsweringRouter(broken))
        self.failureResultOf(policy.rcpt(CLIENT, SENDER, Mailbox.parse("x@example.com"), {}),
                             RuntimeError)

    def test_a_positive_reply_is_an_error(self) -> None:
        policy = RouterCheck(AnsweringRouter(Reply(250, "2.1.5", "OK")))
        self.failureResultOf(policy.rcpt(CLIENT, SENDER, Mailbox.parse("x@example.com"), {}),
                             ValueError)

    def test_table_and_chain(self) -> None:
        policy = RouterCheck(table_chain())
        gone = self.verdict(policy, "gone@example.com")
        self.assertEqual(gone.action, Action.REJECT)
        self.assertEqual(gone.reply, Reply(550, "5.1.1", "<gone@example.com>: User unknown"))
        loop = self.verdict(policy, "loop@example.com")
        self.assertEqual((loop.action, loop.reply.status if loop.reply else None),
                         (Action.REJECT, "5.4.6"))
        for address in ("alice@example.com", "list@example.com", "x@example.org"):
            self.assertEqual(self.verdict(policy, address), Verdict(), address)
        bad = self.verdict(policy, "a%b@example.com")
        self.assertEqual(bad.action, Action.REJECT)


def session(policies: list[Any], *recipients: str) -> list[str]:
    """The replies to EHLO, MAIL and one RCPT for each of *recipients*."""
    clock = MemoryReactorClock()
    factory = SMTPServerFactory(ServerSettings(hostname="mx.example.com"),
                                MemoryQueueStore(clock), policies, clock)
    address = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    transport.clear()
    protocol.dataReceived(b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\n")
    transport.clear()
    replies = []
    for recipient in recipients:
        protocol.dataReceived(f"RCPT TO:<{recipient}>\r\n".encode())
        replies.append(transport.value().decode().strip())
        transport.clear()
    return replies


class SessionTests(SynchronousTestCase):
    def test_refused_at_rcpt(self) -> None:
        replies = session([RouterCheck(table_chain())],
                          "alice@example.com", "gone@example.com", "loop@example.com",
                          "list@example.com")
        self.assertEqual(replies[0], "250 2.1.5 OK")
        self.assertEqual(replies[1], "550 5.1.1 <gone@example.com>: User unknown")
        self.assertTrue(replies[2].startswith("550 5.4.6 "), replies[2])
        self.assertEqual(replies[3], "250 2.1.5 OK")

    def test_an_earlier_policy_decides_first(self) -> None:
        earlier = RecordingPolicy({"rcpt": Verdict.reject(554, "5.7.1", "Relay access denied")})
        check = RouterCheck(AnsweringRouter(lambda r: self.fail("asked")))
        self.assertEqual(session([earlier, check], "gone@example.com"),
                         ["554 5.7.1 Relay access denied"])

    def test_no_route_refused_at_rcpt(self) -> None:
        router = ChainRouter([TableRouter({"example.com": "smtp"})])
        replies = session([RouterCheck(router)], "x@example.com", "x@example.org")
        self.assertEqual(replies[0], "250 2.1.5 OK")
        self.assertTrue(replies[1].startswith("550 5.4.4 <x@example.org>"), replies[1])


class MakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> object:
        return validate_maker

    def make_context(self) -> ComponentContext:
        self.router = table_chain()
        self.asked: list[tuple[str, str]] = []

        def component(kind: str, name: str) -> Any:
            self.asked.append((kind, name))
            return self.router

        return ComponentContext(reactor=Clock(), random=random.Random(1),
                                config=SimpleNamespace(router="chain"), component=component)

    def test_checks_the_configured_router(self) -> None:
        policy = validate_maker.build({}, self.make_context())
        self.assertEqual((validate_maker.kind, validate_maker.name), ("policy", "router-check"))
        self.assertEqual(self.asked, [("router", "chain")])
        self.assertIsInstance(policy, RouterCheck)
        self.assertIs(policy.router, self.router)
        route = Route("maildir", {"directory": "/srv/mail/alice"})
        self.assertEqual(
            self.successResultOf(policy.router.route(None, Mailbox.parse("alice@example.com"))),
            [(Mailbox("alice", "example.com"), Mailbox("alice", "example.com"), route)])

"""
The reference implementations of mailframe.testing, and the built-ins,
run the contract suites they ship.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.config import ComponentContext
from mailframe.envelope import Route
from mailframe.policies import LocalRecipients, RelayControl
from mailframe.policies.relay import LOOPBACK
from mailframe.routing import LocalRouter
from mailframe.testing import (
    ComponentMakerContract,
    FakeComponentMaker,
    MemoryQueueStore,
    MemoryResolver,
    PolicyContract,
    RecordingPolicy,
    RecordingTransport,
    ResolverContract,
    RouterContract,
    StaticRouter,
    TransportContract,
    envelope,
)
from mailframe.verdict import Action, Verdict


class RecordingPolicyTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RecordingPolicy:
        return RecordingPolicy()

    def test_records_and_answers(self) -> None:
        refuse = Verdict.reject(550, "5.7.1", "no")
        policy = RecordingPolicy({"mail": refuse, "helo": lambda client, name: Verdict(
            Action.ACCEPT, reason=name)})
        self.assertIs(policy.mail(None, None, {}), refuse)
        self.assertEqual(policy.helo(None, "x.example").reason, "x.example")
        self.assertEqual([hook for hook, _ in policy.calls], ["mail", "helo"])


class RelayControlContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RelayControl:
        return RelayControl(["example.com"], LOOPBACK)


class LocalRecipientsContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> LocalRecipients:
        return LocalRecipients(["example.com"], frozenset({"alice"}))


class StaticRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> StaticRouter:
        return StaticRouter({"example.com": Route("lmtp", {"host": "127.0.0.1"})})

    def test_default_route(self) -> None:
        routes = self.successResultOf(
            self.make_router().route(envelope(), Mailbox("bob", "other.example")))
        self.assertEqual(routes[0][2], Route("smtp"))


class LocalRouterContractTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> LocalRouter:
        return LocalRouter({"example.com": "/srv/mail"})


class RecordingTransportTests(TransportContract, SynchronousTestCase):
    def make_transport(self) -> RecordingTransport:
        return RecordingTransport()

    def sample_delivery(self) -> Any:
        store = MemoryQueueStore(Clock())
        writer = store.open_writer()
        queue_id = self.successResultOf(writer.commit(envelope("a@b.example", "c@d.example")))
        entry = self.successResultOf(store.get(queue_id))
        rcpt = entry.envelope.recipients[0]
        return entry, [(rcpt, rcpt)], Route("x")


class MemoryResolverTests(ResolverContract, SynchronousTestCase):
    def make_resolver(self) -> MemoryResolver:
        return MemoryResolver(
            mx={"example.com": [(10, "mx.example.com")], "nullmx.example": [(0, ".")],
                "target.example": [(5, "mx.target.example")]},
            addresses={"mx.example.com": ["2001:db8::25", "192.0.2.25"]},
            txt={"example.com": ["v=spf1 -all"]},
            cnames={"alias.example": "target.example"},
            nxdomain=["gone.example"],
            failing=["servfail.example"],
        )

    def mx_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "example.com", [(10, "mx.example.com")]

    def null_mx_name(self) -> str:
        return "nullmx.example"

    def alias_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "alias.example", [(5, "mx.target.example")]

    def address_name(self) -> tuple[str, list[str]]:
        return "mx.example.com", ["2001:db8::25", "192.0.2.25"]

    def txt_name(self) -> tuple[str, list[str]]:
        return "example.com", ["v=spf1 -all"]

    def nodata_name(self) -> str:
        return "nonexistent.invalid"

    def nxdomain_name(self) -> str:
        return "gone.example"

    def failing_name(self) -> str:
        return "servfail.example"

    def test_answers(self) -> None:
        resolver = self.make_resolver()
        self.assertEqual(self.successResultOf(resolver.lookup_mx("EXAMPLE.com")),
                         [(10, "mx.example.com")])
        self.assertEqual(self.successResultOf(resolver.lookup_address("mx.example.com")),
                         ["2001:db8::25", "192.0.2.25"])


class FakeComponentMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> FakeComponentMaker:
        return FakeComponentMaker(
            "policy", "greylist", "Greylists first-time senders",
            lambda settings, context: RecordingPolicy(),
            {"delay": (int, 300, "seconds before a retry is accepted")},
        )

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=Clock(), random=random.Random())

    def test_builds(self) -> None:
        built = self.make_maker().build({"delay": 60}, self.make_context())
        self.assertIsInstance(built, RecordingPolicy)

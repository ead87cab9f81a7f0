"""
The ``mx`` and ``smarthost`` routers, and their plugin makers.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext
from mailframe.envelope import Route
from mailframe.routing.routers import (
    MXRouter,
    SmarthostRouter,
    mx_maker,
    nexthop,
    smarthost_maker,
)
from mailframe.testing import ComponentMakerContract, RouterContract, envelope


def context() -> ComponentContext:
    return ComponentContext(reactor=Clock(), random=random.Random(1))


class MXRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> MXRouter:
        return MXRouter()

    def test_domain_of_the_recipient(self) -> None:
        recipients = [Mailbox("Alice", "Example.COM"), Mailbox("bob", "bücher.example")]
        routes = [self.successResultOf(self.make_router().route(envelope(), r))
                  for r in recipients]
        self.assertEqual(routes, [
            [(recipients[0], recipients[0], Route("smtp", {"domain": "example.com"}))],
            [(recipients[1], recipients[1], Route("smtp", {"domain": "xn--bcher-kva.example"}))],
        ])

    def test_one_route_per_domain_in_any_case(self) -> None:
        router = self.make_router()
        env = envelope("a@b.example", "a@EXAMPLE.com", "b@example.COM")
        [(_, _, first)] = self.successResultOf(router.route(env, env.recipients[0]))
        [(_, _, second)] = self.successResultOf(router.route(env, env.recipients[1]))
        self.assertEqual(first, second)

    def test_postmaster_without_domain_refused(self) -> None:
        postmaster = Mailbox("postmaster", "")
        [(_, _, route)] = self.successResultOf(self.make_router().route(envelope(), postmaster))
        assert route.reject is not None
        self.assertEqual((route.reject.code, route.reject.status), (550, "5.1.1"))


class SmarthostRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> SmarthostRouter:
        return SmarthostRouter("relay.example:587")

    def test_every_recipient_to_the_host(self) -> None:
        router = self.make_router()
        env = envelope("a@b.example", "a@example.com", "b@example.org")
        for recipient in (*env.recipients, Mailbox("postmaster", "")):
            [(final, original, route)] = self.successResultOf(router.route(env, recipient))
            self.assertEqual((final, original), (recipient, recipient))
            self.assertEqual(route, Route("smtp", {"nexthop": "relay.example:587"}))

    def test_bad_host(self) -> None:
        self.assertRaises(ValueError, SmarthostRouter, "relay example")


class NexthopTests(SynchronousTestCase):
    def test_forms(self) -> None:
        cases = {
            "relay.example": "relay.example:25",
            "Relay.Example:587": "relay.example:587",
            "[relay.example]": "relay.example:25",
            "[relay.example]:2525": "relay.example:2525",
            "192.0.2.1": "192.0.2.1:25",
            "[192.0.2.1]:465": "192.0.2.1:465",
            "[2001:db8::1]": "[2001:db8::1]:25",
            "[IPv6:2001:DB8::1]:587": "[2001:db8::1]:587",
            " relay.example ": "relay.example:25",
            "bücher.example": "xn--bcher-kva.example:25",
        }
        for text, expected in cases.items():
            self.assertEqual(nexthop(text), expected, text)

    def test_bad(self) -> None:
        for text in ("", "[relay.example", "[relay]x", "relay:0", "relay:65536", "relay:x",
                     "[]:25", "bad_host!", "a..b"):
            self.assertRaises(ValueError, nexthop, text)


class MXMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> object:
        return mx_maker

    def make_context(self) -> ComponentContext:
        return context()

    def test_builds(self) -> None:
        self.assertEqual((mx_maker.kind, mx_maker.name), ("router", "mx"))
        self.assertIsInstance(mx_maker.build({}, context()), MXRouter)


class SmarthostMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> object:
        return smarthost_maker

    def make_context(self) -> ComponentContext:
        return context()

    def test_builds(self) -> None:
        router = smarthost_maker.build({"host": "[192.0.2.7]:587"}, context())
        self.assertEqual(router.host, "192.0.2.7:587")
        self.assertEqual((smarthost_maker.kind, smarthost_maker.name), ("router", "smarthost"))

    def test_host_required_and_checked(self) -> None:
        error = self.assertRaises(SettingError, smarthost_maker.build, {}, context())
        self.assertEqual(error.key, "host")
        error = self.assertRaises(SettingError, smarthost_maker.build, {"host": "a:b:c"}, context())
        self.assertEqual(error.key, "host")

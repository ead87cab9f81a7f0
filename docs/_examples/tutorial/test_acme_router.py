"""
Tests of ACME's router: the contract every router passes, the contract of
every component maker, and what this router does.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext
from mailframe.envelope import Route
from mailframe.plugins import acme_router
from mailframe.registry import discover
from mailframe.testing import (
    ComponentMakerContract,
    RouterContract,
    StaticRouter,
    envelope,
)

GATEWAY = Route("smtp", {"nexthop": "gateway.acme.example:25"})
MAILDIR = Route("maildir", {"directory": "/var/mail/acme.example/alice"})


def make_router() -> acme_router.AcmeRouter:
    # Every recipient that is not a customer's goes to a StaticRouter: a
    # fake, whose routes the tests can recognise.
    others = StaticRouter({"acme.example": MAILDIR})
    return acme_router.AcmeRouter(["customer.example"], "gateway.acme.example:25", others)


class AcmeRouterContractTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> acme_router.AcmeRouter:
        return make_router()

    def sample_recipient(self) -> Mailbox:
        return Mailbox("bob", "customer.example")


class AcmeRouterTests(SynchronousTestCase):
    def route(self, address: str) -> list[tuple[Mailbox, Mailbox, Route]]:
        recipient = Mailbox.parse(address)
        routes: list[tuple[Mailbox, Mailbox, Route]] = self.successResultOf(
            make_router().route(envelope("sender@example.org", address), recipient)
        )
        return routes

    def test_customers_go_to_the_gateway(self) -> None:
        bob = Mailbox("bob", "customer.example")
        self.assertEqual(self.route("bob@customer.example"), [(bob, bob, GATEWAY)])

    def test_domains_in_any_case(self) -> None:
        [(_, _, route)] = self.route("bob@Customer.EXAMPLE")
        self.assertEqual(route, GATEWAY)

    def test_others_go_to_the_next_router(self) -> None:
        [(_, _, route)] = self.route("alice@acme.example")
        self.assertEqual(route, MAILDIR)


class AcmeMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return acme_router.acme_maker

    def make_context(self) -> ComponentContext:
        # component(kind, name) gives the router that "others" names; here a
        # fake, that records what was asked for.
        self.asked: list[tuple[str, str]] = []

        def component(kind: str, name: str) -> StaticRouter:
            self.asked.append((kind, name))
            return StaticRouter({})

        return ComponentContext(reactor=Clock(), random=random.Random(0), component=component)

    def test_builds_from_settings(self) -> None:
        settings = {"customers": ["customer.example"], "gateway": "192.0.2.25:2525"}
        router = acme_router.acme_maker.build(settings, self.make_context())
        self.assertEqual(router.gateway, Route("smtp", {"nexthop": "192.0.2.25:2525"}))
        self.assertEqual(self.asked, [("router", "local")])

    def test_customers_are_required(self) -> None:
        with self.assertRaises(SettingError) as caught:
            acme_router.acme_maker.build({"gateway": "192.0.2.25"}, self.make_context())
        self.assertEqual(caught.exception.key, "customers")

    def test_gateway_is_checked(self) -> None:
        settings = {"customers": ["customer.example"], "gateway": "not a host"}
        with self.assertRaises(SettingError) as caught:
            acme_router.acme_maker.build(settings, self.make_context())
        self.assertEqual(caught.exception.key, "gateway")

    def test_found_as_a_plugin(self) -> None:
        registry = discover()
        self.assertIs(registry.maker("router", "acme"), acme_router.acme_maker)

"""
ACME's router for mailframe: mail for ACME's customers goes to the gateway
that filters it for them; every other recipient is left to another router.

This file is a plugin: it sits in ``mailframe/plugins/`` and names a
:class:`~mailframe.components.ComponentMaker` at module level, which
mailframe finds with ``getPlugins(IComponentMaker, mailframe.plugins)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import Route
from mailframe.interfaces import IRouter

RouteTriple = tuple[Mailbox, Mailbox, Route]


@implementer(IRouter)
class AcmeRouter:
    """
    :param customers: the domains of ACME's customers.
    :param gateway: ``HOST:PORT`` of the gateway that their mail goes to.
    :param others: the router of every other recipient.
    """

    def __init__(self, customers: Iterable[str], gateway: str, others: Any) -> None:
        self.customers = frozenset(domain.lower() for domain in customers)
        self.gateway = Route("smtp", {"nexthop": gateway})
        self.others = others

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        if recipient.domain.lower() in self.customers:
            # The recipient twice: it is not rewritten, so it is its own
            # original (delivery status notifications report the original).
            return succeed([(recipient, recipient, self.gateway)])
        routes: Deferred[list[RouteTriple]] = self.others.route(envelope, recipient)
        return routes


def build(settings: Mapping[str, Any], context: Any) -> AcmeRouter:
    """Build the router from its checked settings."""
    # The router named by "others" is built with its own settings, once.
    others = context.component("router", settings["others"])
    return AcmeRouter(settings["customers"], settings["gateway"], others)


acme_maker = ComponentMaker(
    kind="router",
    name="acme",
    description="ACME's customer domains to their gateway; other mail to another router",
    factory=build,
    schema={
        "customers": Setting(
            "strings",
            (),
            "The domains of ACME's customers.",
            required=True,
        ),
        "gateway": Setting(
            "host-port",
            None,
            "HOST:PORT of the gateway that their mail goes to.",
            required=True,
        ),
        "others": Setting(
            "string",
            "local",
            "The router (a plugin name) of every other recipient.",
        ),
    },
)

"""
The local router: recipients in local domains go to their Maildir, every
other recipient to outbound SMTP, by MX or through a smarthost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker
from mailframe.envelope import Route
from mailframe.interfaces import IRouter
from mailframe.policies._domains import domain_key
from mailframe.policies.users import local_mailbox_name
from mailframe.reply import Reply

__all__ = ["LocalRouter"]

RouteTriple = tuple[Mailbox, Mailbox, Route]

#: The transport that outbound mail is routed to.
OUTBOUND = "smtp"


@implementer(IRouter)
class LocalRouter:
    """
    :param local_domains: a mapping of local domain to the directory holding
        its Maildirs; ``<local-part>/`` under it is one recipient's Maildir.
        The first domain also receives ``<postmaster>`` written without one.
    :param smarthost: ``host:port`` to send all other mail to; by default
        each domain's mail goes to its MX hosts.
    """

    def __init__(self, local_domains: Mapping[str, str], smarthost: str | None = None) -> None:
        self.local_domains = {domain_key(d): path for d, path in local_domains.items()}
        self.smarthost = smarthost
        self._primary = next(iter(self.local_domains), None)

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        domain = domain_key(recipient.domain) if recipient.domain else self._primary
        if domain is None or domain not in self.local_domains:
            # Recipients with equal routes travel in one transaction.
            if self.smarthost is not None:
                route = Route(OUTBOUND, {"nexthop": self.smarthost})
            else:
                route = Route(OUTBOUND, {"domain": domain or recipient.domain})
            return succeed([(recipient, recipient, route)])
        name = local_mailbox_name(recipient.local_part)
        if name is None:
            reject = Reply(550, "5.1.1", f"<{recipient}>: bad mailbox name")
            return succeed([(recipient, recipient, Route("maildir", reject=reject))])
        directory = os.path.join(self.local_domains[domain], name)
        return succeed([(recipient, recipient, Route("maildir", {"directory": directory}))])


def _build_local(settings: Any, context: Any) -> LocalRouter:
    config = context.config
    return LocalRouter(dict(config.local_domains), smarthost=config.smarthost)


#: The ``local`` router plugin: ``local_domains`` to their Maildirs, every
#: other domain to ``smtp``, by MX or through ``smarthost``.
local_maker = ComponentMaker(
    kind="router",
    name="local",
    description="Local domains to their Maildirs; other mail by MX, or to the smarthost",
    factory=_build_local,
)

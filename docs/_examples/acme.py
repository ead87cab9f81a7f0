"""
Example components for mailframe: three policies, a router, and a
component maker that makes one of the policies.

They are the examples of the "Extending mailframe" chapter, and its tests
run them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.config import ComponentContext
from mailframe.envelope import ClientInfo, Envelope, Route
from mailframe.interfaces import IComponentMaker, IResolver, IRouter
from mailframe.policies._base import PolicyBase
from mailframe.routing import DNSNameNotFound
from mailframe.verdict import Verdict


class SenderDomainBlock(PolicyBase):
    """
    Refuses MAIL from senders in *domains*, and marks every message that it
    lets through with a header field.
    """

    def __init__(self, domains: Iterable[str]) -> None:
        self.domains = frozenset(domain.lower() for domain in domains)

    def mail(self, client: ClientInfo, sender: Any, parameters: Any) -> Verdict:
        # The null sender <> of bounces is not a Mailbox: let it through.
        if isinstance(sender, Mailbox) and sender.domain.lower() in self.domains:
            return Verdict.reject(550, "5.7.1", f"Mail from {sender.domain} is not accepted")
        return Verdict()

    def end_of_data(self, envelope: Envelope, headers: bytes, message: Any) -> Verdict:
        return Verdict(headers=("X-Acme-Checked: yes",))


class DNSBlocklist(PolicyBase):
    """
    Refuses IPv4 clients listed in a DNS blocklist *zone*, at connect.

    :param resolver: any :class:`~mailframe.interfaces.IResolver`.
    """

    def __init__(self, resolver: IResolver, zone: str) -> None:
        self.resolver = resolver
        self.zone = zone

    def connect(self, client: ClientInfo) -> Verdict | Deferred[Verdict]:
        if client.address.count(".") != 3:
            return Verdict()  # IPv6, or not an IP transport
        name = ".".join(reversed(client.address.split("."))) + "." + self.zone
        d: Deferred[list[str]] = self.resolver.lookup_address(name)

        def decide(addresses: list[str]) -> Verdict:
            if addresses:
                return Verdict.reject(554, "5.7.1", f"{client.address} is listed by {self.zone}")
            return Verdict()

        def unlisted(failure: Failure) -> Verdict:
            # A blocklist answers NXDOMAIN for an address it does not list.
            failure.trap(DNSNameNotFound)
            return Verdict()

        return d.addCallbacks(decide, unlisted)


class SenderLoginMatch(PolicyBase):
    """
    Lets a client that logged in with AUTH send only from its own
    addresses, as Postfix's ``reject_sender_login_mismatch`` does. Clients
    that did not log in are left to the other policies.

    :param addresses: each login's sender addresses.
    """

    def __init__(self, addresses: Mapping[str, Iterable[str]]) -> None:
        self.addresses = {
            login: frozenset(address.lower() for address in owned)
            for login, owned in addresses.items()
        }

    def mail(self, client: ClientInfo, sender: Any, parameters: Any) -> Verdict:
        login = client.authenticated_as
        if login is None:
            return Verdict()
        if str(sender).lower() not in self.addresses.get(login, frozenset()):
            return Verdict.reject(
                553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by user {login}"
            )
        return Verdict()


@implementer(IRouter)
class AliasRouter:
    """
    Expands aliases into their members, and asks *inner* to route each
    member; any other recipient goes to *inner* as it is.

    :param aliases: alias address (in lower case) to member addresses.
    """

    def __init__(self, aliases: Mapping[str, Sequence[str]], inner: IRouter) -> None:
        self.aliases = {alias.lower(): list(members) for alias, members in aliases.items()}
        self.inner = inner

    def route(
        self, envelope: Envelope, recipient: Mailbox
    ) -> Deferred[list[tuple[Mailbox, Mailbox, Route]]]:
        members = self.aliases.get(str(recipient).lower())
        if not members:
            return self.inner.route(envelope, recipient)
        lookups = [self.inner.route(envelope, Mailbox.parse(member)) for member in members]

        def expanded(answers: list[list[tuple[Mailbox, Mailbox, Route]]]) -> list[Any]:
            # Each member keeps the alias as its original recipient, for DSN.
            return [(final, recipient, route) for routes in answers for final, _, route in routes]

        return gatherResults(lookups).addCallback(expanded)


@implementer(IPlugin, IComponentMaker)
class SenderBlockMaker:
    """Makes :class:`SenderDomainBlock` policies from their settings."""

    kind = "policy"
    name = "acme-sender-block"
    description = "Refuse mail from the listed sender domains"
    schema: ClassVar[dict[str, tuple[type, Any, str]]] = {
        "domains": (list, [], "the sender domains to refuse"),
    }

    def build(self, settings: Mapping[str, Any], context: ComponentContext) -> SenderDomainBlock:
        unknown = set(settings) - set(self.schema)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings: {', '.join(sorted(unknown))}")
        return SenderDomainBlock(settings.get("domains", []))


sender_block_maker = SenderBlockMaker()

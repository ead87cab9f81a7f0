"""
Relay control: who may send mail to domains that are not ours.

The rule is Postfix's ``smtpd_relay_restrictions`` default
(``permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination``)
made a policy: mail for a local domain is accepted from anyone; mail for any
other domain only from the relay networks or from an authenticated client.

Addresses are never rewritten: ``user%elsewhere@local`` and
``"user@elsewhere"@local`` stay local addresses (and fail as unknown users),
and a source route such as ``<@local:user@elsewhere>`` has already been
dropped by the parser, so the relay decision is made on ``user@elsewhere``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker
from mailframe.envelope import ClientInfo
from mailframe.policies._base import CONTINUE, PolicyBase
from mailframe.policies._domains import domain_key
from mailframe.reply import Reply
from mailframe.verdict import Action, Verdict

__all__ = ["RelayControl", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The default relay networks: loopback only.
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """
    Parse CIDR strings; ``"none"`` alone means no network at all.

    :raises ValueError: naming the value that is not a network.
    """
    values = list(values)
    if [v.strip().lower() for v in values] == ["none"]:
        return ()
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a network in CIDR notation") from None
    return tuple(networks)


class RelayControl(PolicyBase):
    """
    :param local_domains: the domains whose mail is delivered here, in any
        case.
    :param relay_networks: the client networks that may relay.
    """

    def __init__(self, local_domains: Iterable[str], relay_networks: Iterable[Network]) -> None:
        self.local_domains = frozenset(domain_key(d) for d in local_domains)
        self.relay_networks = tuple(relay_networks)
        # Asked at every RCPT of every session: each client address is
        # parsed and looked up once, not once a recipient.
        self._in_networks = lru_cache(maxsize=4096)(self._look_up)

    def is_local(self, recipient: Mailbox) -> bool:
        """``True`` for a local domain, or ``<postmaster>`` without one."""
        return domain_key(recipient.domain) in self.local_domains or recipient.domain == ""

    def may_relay(self, client: ClientInfo) -> bool:
        """``True`` for an authenticated client or one in the relay networks."""
        return bool(client.authenticated_as) or self._in_networks(client.address)

    def _look_up(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in network for network in self.relay_networks)

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Verdict:
        if self.is_local(recipient) or self.may_relay(client):
            return CONTINUE
        return Verdict(
            Action.REJECT,
            Reply(554, "5.7.1", f"<{recipient}>: Relay access denied"),
            reason="relay denied",
        )


def _build_relay_control(settings: Any, context: Any) -> RelayControl:
    config, listener = context.config, context.listener
    networks = getattr(listener, "relay_networks", None)
    return RelayControl(
        dict(config.local_domains), config.relay_networks if networks is None else networks
    )


#: The ``relay-control`` policy plugin: no relaying except for
#: ``relay_networks`` (the listener's own, where it has them) and
#: authenticated clients.
relay_control_maker = ComponentMaker(
    kind="policy",
    name="relay-control",
    description="Refuses relaying (554 5.7.1) except from relay_networks or after AUTH",
    factory=_build_relay_control,
)

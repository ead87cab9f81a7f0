"""
The two routers that send every recipient out over SMTP: ``mx``, to the MX
hosts of the recipient's domain, and ``smarthost``, to one relay host.

Neither looks anything up while routing: the ``smtp`` transport finds the
hosts (RFC 5321 §5.1) when it delivers, so a DNS failure is a delivery
failure of that attempt, transient or permanent as the transport decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mailframe.address import Mailbox, is_domain
from mailframe.components import ComponentMaker, Setting
from mailframe.envelope import Route
from mailframe.interfaces import IRouter
from mailframe.policies._domains import domain_key
from mailframe.reply import Reply

__all__ = [
    "DEFAULT_SMTP_PORT",
    "MXRouter",
    "SmarthostRouter",
    "mx_maker",
    "nexthop",
    "smarthost_maker",
]

RouteTriple = tuple[Mailbox, Mailbox, Route]

#: The port of a next hop written without one: the SMTP port.
DEFAULT_SMTP_PORT = 25

#: The transport that both routers route to.
OUTBOUND = "smtp"


def nexthop(text: str) -> str:
    """
    The ``nexthop`` argument of an ``smtp`` route for *text*: ``host``,
    ``host:port``, ``[host]``, ``[host]:port``, ``[address]:port`` or
    ``[IPv6:address]:port``, written ``host:port``, or ``[address]:port``
    for an IPv6 address, with the port :data:`DEFAULT_SMTP_PORT` when none
    is given. The brackets only delimit the host: no MX lookup is made for
    a next hop, bracketed or not.

    :raises ValueError: when *text* is not a host and an optional port.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r} has no closing bracket")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [host]:port")
        port = rest[1:] if rest else ""
        if host.lower().startswith("ipv6:"):
            host = host[5:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r} names no host")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not is_domain(host, utf8=True):
            raise ValueError(f"{host!r} is neither a host name nor an IP address") from None
        host = domain_key(host)
    else:
        host = f"[{address}]" if address.version == 6 else str(address)
    if not port:
        number = DEFAULT_SMTP_PORT
    elif port.isdigit() and 0 < int(port) < 65536:
        number = int(port)
    else:
        raise ValueError(f"{text!r} has a bad port; a port is 1 to 65535")
    return f"{host}:{number}"


@implementer(IRouter)
class MXRouter:
    """
    Routes every recipient to ``Route("smtp", {"domain": domain})``: the
    ``smtp`` transport delivers to the MX hosts of the recipient's domain.
    Recipients of one domain (in any case, a U-label as its A-label) share
    one route, so they travel in one transaction.

    The special ``<postmaster>`` written without a domain (RFC 5321
    §4.1.1.3) has no domain to look up; it is refused with ``550 5.1.1``.
    """

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        if not recipient.domain:
            reply = Reply(550, "5.1.1", f"<{recipient}>: no domain to send it to")
            return succeed([(recipient, recipient, Route(OUTBOUND, reject=reply))])
        route = Route(OUTBOUND, {"domain": domain_key(recipient.domain)})
        return succeed([(recipient, recipient, route)])


@implementer(IRouter)
class SmarthostRouter:
    """
    Routes every recipient to ``Route("smtp", {"nexthop": host})``: all mail
    goes to one relay host, whatever its domain.

    :param host: the relay: ``host``, ``host:port``, ``[address]:port``;
        port 25 when none is given.
    :raises ValueError: when *host* is not a host and an optional port.
    """

    def __init__(self, host: str) -> None:
        self.host = nexthop(host)
        self._route = Route(OUTBOUND, {"nexthop": self.host})

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[list[RouteTriple]]:
        return succeed([(recipient, recipient, self._route)])


def _build_mx(settings: Mapping[str, Any], context: Any) -> MXRouter:
    return MXRouter()


def _build_smarthost(settings: Mapping[str, Any], context: Any) -> SmarthostRouter:
    return SmarthostRouter(settings["host"])


#: The ``mx`` router plugin: every recipient by the MX hosts of its domain.
mx_maker = ComponentMaker(
    kind="router",
    name="mx",
    description="Every recipient to the MX hosts of its domain, over SMTP",
    factory=_build_mx,
)

#: The ``smarthost`` router plugin: every recipient to one relay host.
smarthost_maker = ComponentMaker(
    kind="router",
    name="smarthost",
    description="Every recipient to one relay host, over SMTP",
    factory=_build_smarthost,
    schema={
        "host": Setting(
            "host-port", None,
            "The relay host: host, host:port or [address]:port (port 25 by default).",
            required=True,
        ),
    },
)

"""
DNS blocklists (RFC 5782): refuse clients whose address a list publishes.

For the client ``192.0.2.99`` and the list ``zen.spamhaus.org``, the name
looked up is ``99.2.0.192.zen.spamhaus.org``: the octets in reverse
(RFC 5782 §2.1). For an IPv6 client it is the 32 hexadecimal nibbles of the
address in reverse, so ``2001:db8::1`` is looked up as
``1.0.0.0. … .8.b.d.0.1.0.0.2.zen.spamhaus.org`` (RFC 5782 §2.4). A client
connected over IPv6 with an IPv4-mapped address is looked up by its IPv4
address.

A list names an address by giving that name an A record; by convention
(RFC 5782 §2.1, §2.3) its value is ``127.0.0.2`` or another address in
``127.0.0.0/8``, and a TXT record may say why. Only answers that ``codes``
accepts list a client, by default any address in ``127.0.0.0/8``, so a
resolver that answers a web server's address in place of NXDOMAIN lists
nobody. Answers in ``127.255.255.0/24`` never list a client: Spamhaus and
other lists use them to say that the query itself was refused (asked
through a public resolver, or too many queries), and they are logged.

A listed client gets Postfix's reply, ``554 5.7.1 Service unavailable;
Client host [192.0.2.99] blocked using zen.spamhaus.org``, followed by the
text of the TXT records when ``use_txt`` is set. The check is made at
connect by default, or at RCPT (Postfix's ``reject_rbl_client`` in
``smtpd_recipient_restrictions``), where mail to ``postmaster`` can still be
accepted from a listed client (RFC 5321 §4.5.1).

A lookup that fails for now (SERVFAIL, a timeout, no nameserver answering)
is "not listed", and is logged: an outage of a list, or of the DNS, never
refuses mail, as in Postfix, which gives "the requestor the benefit of the
doubt". NXDOMAIN is "not listed" too, which is what a list answers for
almost every address.

All lists are asked at once, through the server's shared resolver, whose
cache keeps answers for their TTL; nothing waits on the reactor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.envelope import ClientInfo
from mailframe.policies._base import CONTINUE, PolicyBase
from mailframe.policies.relay import LOOPBACK, Network
from mailframe.reply import Reply
from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError, ascii_name
from mailframe.verdict import Action, Verdict

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_ANSWERS",
    "LISTED_ANSWERS",
    "DNSBLPolicy",
    "Listing",
    "dnsbl_maker",
    "query_name",
]

_log = Logger(namespace="mailframe.policies.dnsbl")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The answers that list a client unless ``codes`` says otherwise: the
#: loopback network, where lists put their values (RFC 5782 §2.1, §2.3).
LISTED_ANSWERS: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),)

#: Answers that report an error in the query rather than a listing (Spamhaus'
#: ``127.255.255.252``, ``.254`` and ``.255``); they never list a client.
ERROR_ANSWERS = ipaddress.ip_network("127.255.255.0/24")

#: How long each lookup may take, in seconds; a list that does not answer
#: in time does not list the client.
DEFAULT_TIMEOUT = 10.0

#: When the policy asks: at connect, or at each RCPT.
WHEN = ("connect", "rcpt")

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF;
# the TXT text is cut to what is left after the code, status and message.
_MAX_REPLY_LINE = 512
_REPLY_OVERHEAD = len("554 5.7.1 ") + len("\r\n")
# Postfix joins the TXT records of one name with this between them.
_TXT_SEPARATOR = " / "


def query_name(address: Address, zone: str) -> str:
    """
    The name under which *zone* lists *address*: its octets in reverse for
    IPv4 (RFC 5782 §2.1), its 32 nibbles in reverse for IPv6 (§2.4); an
    IPv4-mapped IPv6 address is looked up as its IPv4 address.

    ``query_name(IPv4Address("192.0.2.99"), "bl.example")`` is
    ``"99.2.0.192.bl.example"``.
    """
    address = _unmapped(address)
    reverse = address.reverse_pointer  # "...in-addr.arpa" or "...ip6.arpa"
    labels = reverse.rsplit(".", 2)[0]
    return f"{labels}.{zone.rstrip('.')}"


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _printable(text: str) -> str:
    """*text* on one line of printable ASCII, as reply text must be (RFC 5321 §4.2)."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))


@attrs.frozen
class Listing:
    """
    A list that names a client.

    :ivar zone: the list, as configured.
    :ivar name: the name that was looked up.
    :ivar answers: the answers that listed the client.
    """

    zone: str
    name: str
    answers: tuple[str, ...]


class DNSBLPolicy(PolicyBase):
    """
    Refuses clients that a DNS blocklist names; see the module's description.

    :param resolver: an :class:`~mailframe.interfaces.IResolver`.
    :param zones: the lists, asked in parallel; when several name a client,
        the first in this order gives the reply.
    :param clock: the clock for *timeout*.
    :param at: ``"connect"`` or ``"rcpt"``.
    :param codes: the answers that list a client (addresses are networks of
        one address).
    :param exempt: the client networks never looked up.
    :param use_txt: whether the reply gives the list's TXT records.
    :param timeout: seconds each lookup may take; a list that does not
        answer in time does not list the client.
    :param allow_postmaster: at RCPT, whether mail to ``postmaster`` is let
        through from a listed client.
    """

    def __init__(
        self,
        resolver: Any,
        zones: Iterable[str],
        clock: IReactorTime,
        at: str = "connect",
        codes: Iterable[Network] = LISTED_ANSWERS,
        exempt: Iterable[Network] = LOOPBACK,
        use_txt: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        allow_postmaster: bool = True,
        log: Logger | None = None,
    ) -> None:
        if at not in WHEN:
            raise ValueError(f"at must be one of {', '.join(WHEN)}, not {at!r}")
        if not timeout > 0:
            raise ValueError("the timeout must be longer than zero")
        self.resolver = resolver
        self.zones = tuple(zone.rstrip(".") for zone in zones)
        self.clock = clock
        self.at = at
        self.codes = tuple(codes)
        self.exempt = tuple(exempt)
        self.use_txt = use_txt
        self.timeout = timeout
        self.allow_postmaster = allow_postmaster
        self.log = log if log is not None else _log

    def connect(self, client: Any) -> Verdict | Deferred[Verdict]:
        if self.at != "connect":
            return CONTINUE
        return self.check(client)

    def rcpt(
        self, client: Any, sender: Any, recipient: Any, parameters: Any
    ) -> Verdict | Deferred[Verdict]:
        if self.at != "rcpt":
            return CONTINUE
        if self.allow_postmaster and recipient.is_postmaster:
            return CONTINUE
        return self.check(client)

    def check(self, client: ClientInfo) -> Verdict | Deferred[Verdict]:
        """
        The verdict on *client*: a Deferred REJECT when a list names it,
        else CONTINUE; never a failure because of the DNS.
        """
        try:
            address = _unmapped(ipaddress.ip_address(client.address))
        except ValueError:
            return CONTINUE  # not an IP client: nothing to look up
        if not self.zones or any(address in network for network in self.exempt):
            return CONTINUE
        return Deferred.fromCoroutine(self._check(address))

    async def _check(self, address: Address) -> Verdict:
        lookups = [self._listed(zone, query_name(address, zone)) for zone in self.zones]
        for listing in await gatherResults(lookups):
            if listing is not None:
                reason = await self._reason(listing) if self.use_txt else ""
                return self._refusal(address, listing, reason)
        return CONTINUE

    def _lookup(self, lookup: Any, name: str) -> Deferred[list[str]]:
        """*lookup* of *name*, failing with a timeout after :attr:`timeout`."""
        d: Deferred[list[str]] = lookup(name)
        return d.addTimeout(self.timeout, self.clock)

    def _listed(self, zone: str, name: str) -> Deferred[Listing | None]:
        return Deferred.fromCoroutine(self._ask(zone, name))

    async def _ask(self, zone: str, name: str) -> Listing | None:
        try:
            answers = await self._lookup(self.resolver.lookup_address, name)
        except DNSNameNotFound:
            return None
        except (DNSTemporaryError, DeferredTimeout) as error:
            self.log.warn(
                "DNSBL lookup of {name} failed: {reason}; taken as not listed",
                name=name,
                zone=zone,
                reason=getattr(error, "reason", "no answer in time"),
            )
            return None
        except Exception:
            self.log.failure(
                "DNSBL lookup of {name} failed; taken as not listed",
                Failure(),
                name=name,
                zone=zone,
            )
            return None
        listed = []
        for answer in answers:
            try:
                value = ipaddress.ip_address(answer)
            except ValueError:
                continue
            if value.version != 4:
                continue  # lists answer with A records, for IPv6 clients too
            if value in ERROR_ANSWERS:
                self.log.warn(
                    "DNSBL {zone} answered {answer} for {name}: the list refuses the query;"
                    " taken as not listed",
                    zone=zone,
                    answer=answer,
                    name=name,
                )
                continue
            if any(value in network for network in self.codes):
                listed.append(answer)
        if not listed:
            return None
        return Listing(zone, name, tuple(listed))

    async def _reason(self, listing: Listing) -> str:
        """The TXT records of *listing*'s name, joined; ``""`` if there are none."""
        try:
            texts = await self._lookup(self.resolver.lookup_txt, listing.name)
        except Exception as error:
            self.log.info(
                "DNSBL TXT lookup of {name} failed: {error}", name=listing.name, error=error
            )
            return ""
        return _printable(_TXT_SEPARATOR.join(text for text in texts if text.strip()))

    def _refusal(self, address: Address, listing: Listing, reason: str) -> Verdict:
        self.log.info(
            "Client {address} is listed in {zone}: {answers}",
            address=str(address),
            zone=listing.zone,
            answers=", ".join(listing.answers),
        )
        text = f"Service unavailable; Client host [{address}] blocked using {listing.zone}"
        room = _MAX_REPLY_LINE - _REPLY_OVERHEAD - len(text) - len("; ")
        if reason and room > 0:
            text = f"{text}; {reason[:room]}"
        return Verdict(Action.REJECT, Reply(554, "5.7.1", text), reason=f"listed in {listing.zone}")


def _build(settings: Mapping[str, Any], context: Any) -> DNSBLPolicy:
    zones = settings["zones"]
    if not zones:
        raise SettingError("zones", "name at least one list, such as zen.spamhaus.org")
    for zone in zones:
        try:
            # The longest name asked is that of an IPv6 client.
            ascii_name(query_name(ipaddress.IPv6Address("::"), zone))
        except ValueError:
            message = f"{zone!r} is not a DNS name that can hold a list"
            raise SettingError("zones", message) from None
    for network in settings["codes"]:
        if network.version != 4:
            raise SettingError("codes", f"{network} is not IPv4: lists answer with A records")
    resolver = getattr(context, "resolver", None)
    if resolver is None:
        raise SettingError("zones", "the dnsbl policy needs the server's DNS resolver")
    return DNSBLPolicy(
        resolver,
        zones,
        context.reactor,
        at=settings["at"],
        codes=settings["codes"],
        exempt=settings["exempt"],
        use_txt=settings["use_txt"],
        timeout=settings["timeout"],
        allow_postmaster=settings["allow_postmaster"],
        log=getattr(context, "log", None),
    )


#: The ``dnsbl`` policy plugin.
dnsbl_maker = ComponentMaker(
    kind="policy",
    name="dnsbl",
    description="Refuses clients listed in DNS blocklists (RFC 5782)",
    factory=_build,
    schema={
        "zones": Setting(
            "strings",
            (),
            'The blocklists to ask, such as ["zen.spamhaus.org"]; when several list a'
            " client, the first in this order gives the reply.",
            required=True,
        ),
        "at": Setting(
            "string",
            "connect",
            "When to ask: at connect (the greeting is 554), or at each RCPT (the"
            " recipient gets 554, and postmaster may be let through).",
            choices=WHEN,
        ),
        "codes": Setting(
            "networks",
            LISTED_ANSWERS,
            "The answers that list a client: addresses or networks, such as"
            ' ["127.0.0.2", "127.0.0.4/30"]; by default any in 127.0.0.0/8. Answers in'
            " 127.255.255.0/24 are the lists' error codes and never list a client.",
        ),
        "exempt": Setting(
            "networks",
            LOOPBACK,
            "Client networks that are never looked up.",
        ),
        "use_txt": Setting(
            "boolean",
            False,
            "Add the list's TXT records (its reason, often a URL) to the reply.",
        ),
        "timeout": Setting(
            "duration",
            DEFAULT_TIMEOUT,
            "How long each lookup may take; a list that does not answer in time"
            " does not list the client.",
            minimum=1,
        ),
        "allow_postmaster": Setting(
            "boolean",
            True,
            'With at = "rcpt", accept mail to postmaster from listed clients (RFC 5321 §4.5.1).',
        ),
    },
)

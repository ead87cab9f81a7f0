"""
Where mail for a domain goes: its MX hosts and their addresses, in the order
to try them (RFC 5321 §5.1), with the null MX of RFC 7505.

:func:`resolve_mx` asks any :class:`~mailframe.interfaces.IResolver`; it
never imports dnspython, so it runs as well on
:class:`~mailframe.testing.MemoryResolver` as on
:class:`~mailframe.routing.resolver.DNSResolver`.
"""

from __future__ import annotations

import ipaddress
import random as _random
from collections.abc import Iterable
from itertools import groupby
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList

from mailframe.errors import PermanentDeliveryError, TransientDeliveryError
from mailframe.interfaces import IResolver
from mailframe.reply import Reply
from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError, ascii_name

__all__ = [
    "DEFAULT_MAX_ADDRESSES",
    "MXHost",
    "NoMailHost",
    "NoReachableHost",
    "NullMX",
    "RoutingLoop",
    "resolve_mx",
]

#: How many addresses one delivery attempt tries, across all MX hosts: the
#: default of Postfix's ``smtp_mx_address_limit``. RFC 5321 §5.1 asks for a
#: configurable cap, so that a long MX list does not hold a message for
#: hours of timeouts.
DEFAULT_MAX_ADDRESSES = 5

# RFC 1035 §3.3.9: PREFERENCE is a 16-bit unsigned integer.
_MAX_PREFERENCE = 0xFFFF


class NullMX(PermanentDeliveryError):
    """
    The domain publishes a null MX: it accepts no mail (RFC 7505 §3). The
    reply is ``556 5.1.10`` (RFC 7504 §3, RFC 7505 §4).
    """

    default_reply = Reply(556, "5.1.10", "Recipient address has null MX")


class RoutingLoop(PermanentDeliveryError):
    """
    We are the best MX host of the domain, so sending it on would send it to
    ourselves (RFC 5321 §5.1). The reply is ``554 5.4.6`` (RFC 3463 §3.5,
    "Routing loop detected").
    """

    default_reply = Reply(554, "5.4.6", "Mail for this domain loops back to myself")


class NoMailHost(PermanentDeliveryError):
    """
    The domain has no MX records and no address of its own either, so it has
    no host that could take mail (RFC 5321 §5.1). The reply is ``550 5.4.4``
    (RFC 3463 §3.5, "Unable to route").
    """

    default_reply = Reply(550, "5.4.4", "Domain has no mail host")


class NoReachableHost(TransientDeliveryError):
    """
    The domain has MX hosts, but none had an address that we could use this
    time. The reply is ``451 4.4.4`` (RFC 3463 §3.5, "Unable to route").
    """

    default_reply = Reply(451, "4.4.4", "No MX host has an address")


def _check_preference(instance: MXHost, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= _MAX_PREFERENCE:
        raise ValueError(f"MX preference {value} is not in 0-{_MAX_PREFERENCE}")


def _check_host(instance: MXHost, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or value.endswith("."):
        raise ValueError(f"MX host {value!r} must be a name without its trailing dot")


def _check_addresses(
    instance: MXHost, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError(f"MX host {instance.host} has no address")
    for address in value:
        ipaddress.ip_address(address)


def _tuple(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(addresses)


@attrs.frozen
class MXHost:
    """
    One host to try, with the addresses to try it at, in order.

    :ivar preference: its MX preference (lower is tried first); ``0`` for
        the implicit MX of a domain without MX records.
    :ivar host: its name in A-labels and lower case, without the trailing
        dot; the SMTP client checks its TLS certificate against this name.
    :ivar addresses: its IPv6 then IPv4 addresses, as text; never empty.
    """

    preference: int = attrs.field(validator=_check_preference)
    host: str = attrs.field(validator=_check_host)
    addresses: tuple[str, ...] = attrs.field(converter=_tuple, validator=_check_addresses)


def resolve_mx(
    resolver: IResolver,
    domain: str,
    our_names: Iterable[str],
    random: _random.Random,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> Deferred[list[MXHost]]:
    """
    The hosts to try for mail to *domain*, best first, following RFC 5321
    §5.1.

    - *domain* is looked up by its A-labels (RFC 5890), so a U-label works.
    - The resolver follows CNAME records.
    - A null MX (RFC 7505 §3: the only MX record names the root, ``"."``)
      fails with :class:`NullMX`, ``556 5.1.10``, and looks up no address.
    - A domain that does not exist fails with
      :class:`~mailframe.routing._dnserrors.DNSNameNotFound`, ``550 5.1.2``;
      a DNS failure with
      :class:`~mailframe.routing._dnserrors.DNSTemporaryError`, ``451 4.4.3``.
    - With no MX records the domain is its own implicit MX, at preference 0;
      when it has no address either it fails with :class:`NoMailHost`,
      ``550 5.4.4``. When it has MX records, its own addresses are never
      used.
    - Hosts of equal preference come in random order, drawn from *random*;
      the preference order itself is kept.
    - When one of *our_names* is an MX host (in any case, with or without
      the trailing dot, by A-label), it and every host of equal or worse
      preference are dropped; when none is left the lookup fails with
      :class:`RoutingLoop`, ``554 5.4.6``.
    - A host that does not exist, or has no address, is skipped. When every
      host is skipped the lookup fails with :class:`NoReachableHost`,
      ``451 4.4.4``.
    - Each host brings its IPv6 then IPv4 addresses, without addresses that
      a better host already brought; at most *max_addresses* addresses are
      returned in all. Hosts are looked up in rounds of at most as many
      hosts as addresses still wanted, so a long MX list costs no more
      lookups than it needs.

    :return: a Deferred list of :class:`MXHost`, never empty.
    """
    if max_addresses < 1:
        raise ValueError(f"max_addresses must be at least 1, not {max_addresses}")
    ours = {_host_key(name) for name in our_names}
    return Deferred.fromCoroutine(_resolve_mx(resolver, domain, ours, random, max_addresses))


async def _resolve_mx(
    resolver: IResolver,
    domain: str,
    ours: set[str],
    random: _random.Random,
    max_addresses: int,
) -> list[MXHost]:
    try:
        name = ascii_name(domain)
    except ValueError:
        raise DNSNameNotFound(
            domain, Reply(550, "5.1.2", f"{domain}: not a valid domain name")
        ) from None
    records: list[tuple[int, str]] = await resolver.lookup_mx(name)
    implicit = not records
    if implicit:
        # RFC 5321 §5.1: no MX records, so the domain is its own implicit MX.
        candidates = [(0, name)]
    else:
        if all(_is_root(host) for _, host in records):
            # RFC 7505 §3: the null MX, whose exchange is the root. §4: no
            # delivery is attempted, and the sender learns at once.
            raise NullMX(Reply(556, "5.1.10", f"{domain} does not accept mail (null MX)"))
        candidates = _in_order(records, random)
    candidates = _before_ourselves(domain, candidates, ours)
    hosts, temporary = await _addresses(resolver, candidates, max_addresses)
    if hosts:
        return hosts
    if temporary:
        reason = f"address lookup failed for {', '.join(temporary)}"
        if implicit:
            raise DNSTemporaryError(domain, reason)
        raise NoReachableHost(Reply(451, "4.4.4", f"No MX host of {domain} is usable: {reason}"))
    if implicit:
        raise NoMailHost(Reply(550, "5.4.4", f"{domain} has no MX record and no address"))
    raise NoReachableHost(Reply(451, "4.4.4", f"No MX host of {domain} has an address"))


def _in_order(records: list[tuple[int, str]], random: _random.Random) -> list[tuple[int, str]]:
    """
    Usable records by preference, each group of equal preference shuffled
    (RFC 5321 §5.1: "the SMTP client SHOULD randomize them"). Hosts that
    cannot be a name (the root, an empty or invalid name) and repeated
    hosts are dropped; a host listed twice keeps its best preference.
    """
    best: dict[str, int] = {}
    for preference, host in records:
        if _is_root(host):
            continue
        try:
            key = ascii_name(host)
        except ValueError:
            continue
        if key not in best or preference < best[key]:
            best[key] = preference
    ordered: list[tuple[int, str]] = []
    by_preference = sorted(best.items(), key=lambda item: item[1])
    for preference, group in groupby(by_preference, key=lambda item: item[1]):
        hosts = [host for host, _ in group]
        random.shuffle(hosts)
        ordered.extend((preference, host) for host in hosts)
    return ordered


def _before_ourselves(
    domain: str, candidates: list[tuple[int, str]], ours: set[str]
) -> list[tuple[int, str]]:
    """
    RFC 5321 §5.1: when we are an MX host, "all MX records with a
    preference value equal to or greater than" ours are discarded; if that
    leaves none, it is a routing loop.
    """
    own = [preference for preference, host in candidates if host in ours]
    if not own:
        return candidates
    cutoff = min(own)
    left = [(preference, host) for preference, host in candidates if preference < cutoff]
    if not left:
        raise RoutingLoop(Reply(554, "5.4.6", f"Mail for {domain} loops back to myself"))
    return left


async def _addresses(
    resolver: IResolver, candidates: list[tuple[int, str]], max_addresses: int
) -> tuple[list[MXHost], list[str]]:
    """
    Look up the candidates in order, in rounds of as many hosts as addresses
    are still wanted, until *max_addresses* addresses are found.

    :return: the hosts with addresses, and the hosts whose lookups failed
        for now.
    """
    hosts: list[MXHost] = []
    temporary: list[str] = []
    seen: set[str] = set()
    wanted = max_addresses
    index = 0
    while wanted > 0 and index < len(candidates):
        batch = candidates[index : index + wanted]
        index += len(batch)
        answers: list[tuple[bool, Any]] = await DeferredList(
            [resolver.lookup_address(host) for _, host in batch], consumeErrors=True
        )
        for (preference, host), (ok, answer) in zip(batch, answers, strict=True):
            if not ok:
                if answer.check(DNSTemporaryError):
                    temporary.append(host)
                elif not answer.check(DNSNameNotFound):
                    answer.raiseException()
                continue
            fresh = [address for address in _usable(answer) if address not in seen]
            take = fresh[:wanted]
            if not take:
                continue
            hosts.append(MXHost(preference, host, tuple(take)))
            seen.update(take)
            wanted -= len(take)
            if wanted == 0:
                break
    return hosts, temporary


def _usable(addresses: list[str]) -> list[str]:
    """The addresses that parse as IPv6 or IPv4, each once, in order."""
    out: list[str] = []
    for address in addresses:
        try:
            text = str(ipaddress.ip_address(address))
        except ValueError:
            continue
        if text not in out:
            out.append(text)
    return out


def _is_root(host: str) -> bool:
    return host in ("", ".")


def _host_key(name: str) -> str:
    try:
        return ascii_name(name)
    except ValueError:
        return name.lower().rstrip(".")

"""
resolve_mx over MemoryResolver: RFC 5321 §5.1 and RFC 7505, without a
network. The same lookups against a real nameserver are in test_server.py.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mailframe.errors import PermanentDeliveryError, TransientDeliveryError
from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError
from mailframe.routing.mx import (
    DEFAULT_MAX_ADDRESSES,
    MXHost,
    NoMailHost,
    NoReachableHost,
    NullMX,
    RoutingLoop,
    resolve_mx,
)
from mailframe.testing import MemoryResolver

OURS = ("mta.example.net",)


def plain() -> MemoryResolver:
    return MemoryResolver(
        mx={
            "example.com": [
                (20, "mx3.example.com"),
                (10, "mx1.example.com"),
                (10, "mx2.example.com"),
            ]
        },
        addresses={
            "example.com": ["192.0.2.80"],
            "mx1.example.com": ["2001:db8::1", "192.0.2.1"],
            "mx2.example.com": ["192.0.2.2"],
            "mx3.example.com": ["2001:db8::3"],
        },
        strict=True,
    )


class ResolveMXTests(SynchronousTestCase):
    def hosts(
        self, resolver: MemoryResolver, domain: str, seed: int = 0, **options: Any
    ) -> list[MXHost]:
        ours = options.pop("ours", OURS)
        d = resolve_mx(resolver, domain, ours, random.Random(seed), **options)
        return self.successResultOf(d)  # type: ignore[no-any-return]

    def error(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        return self.failureResultOf(d, kind).value

    def resolve(self, resolver: MemoryResolver, domain: str, **options: Any) -> Deferred[Any]:
        ours = options.pop("ours", OURS)
        return resolve_mx(resolver, domain, ours, random.Random(0), **options)

    def test_by_preference_with_addresses(self) -> None:
        hosts = self.hosts(plain(), "example.com")
        self.assertEqual([h.preference for h in hosts], [10, 10, 20])
        self.assertEqual(
            {h.host: h.addresses for h in hosts},
            {
                "mx1.example.com": ("2001:db8::1", "192.0.2.1"),
                "mx2.example.com": ("192.0.2.2",),
                "mx3.example.com": ("2001:db8::3",),
            },
        )
        self.assertEqual(hosts[2].host, "mx3.example.com")

    def test_equal_preferences_shuffled_by_the_random_given(self) -> None:
        orders = {
            tuple(h.host for h in self.hosts(plain(), "example.com", seed)) for seed in range(20)
        }
        self.assertEqual(
            orders,
            {
                ("mx1.example.com", "mx2.example.com", "mx3.example.com"),
                ("mx2.example.com", "mx1.example.com", "mx3.example.com"),
            },
        )
        self.assertEqual(
            self.hosts(plain(), "example.com", 3), self.hosts(plain(), "example.com", 3)
        )

    def test_null_mx(self) -> None:
        resolver = MemoryResolver(
            mx={"example.com": [(0, ".")]}, addresses={"example.com": ["192.0.2.80"]}
        )
        error = self.error(self.resolve(resolver, "example.com"), NullMX)
        self.assertIsInstance(error, PermanentDeliveryError)
        self.assertEqual((error.reply.code, error.reply.status), (556, "5.1.10"))
        self.assertEqual(resolver.queries, [("mx", "example.com")], "no address lookup")

    def test_root_among_other_hosts_is_skipped(self) -> None:
        resolver = plain()
        resolver.mx["example.com"].append((5, "."))
        hosts = self.hosts(resolver, "example.com")
        self.assertEqual(len(hosts), 3)
        self.assertNotIn(("address", "."), resolver.queries)

    def test_mx_through_cname(self) -> None:
        resolver = plain()
        resolver.cnames["alias.example"] = "example.com"
        self.assertEqual(len(self.hosts(resolver, "alias.example")), 3)

    def test_implicit_mx(self) -> None:
        resolver = MemoryResolver(addresses={"example.org": ["2001:db8::80", "192.0.2.80"]})
        self.assertEqual(
            self.hosts(resolver, "Example.ORG."),
            [MXHost(0, "example.org", ("2001:db8::80", "192.0.2.80"))],
        )

    def test_no_mx_and_no_address(self) -> None:
        resolver = MemoryResolver(txt={"example.org": ["v=spf1 -all"]}, strict=True)
        error = self.error(self.resolve(resolver, "example.org"), NoMailHost)
        self.assertEqual((error.reply.code, error.reply.status), (550, "5.4.4"))

    def test_no_mx_and_address_lookup_fails(self) -> None:
        resolver = MemoryResolver(failing=[("example.org", "address")])
        error = self.error(self.resolve(resolver, "example.org"), DNSTemporaryError)
        self.assertEqual(error.reply.status, "4.4.3")

    def test_own_addresses_unused_when_mx_exists(self) -> None:
        resolver = plain()
        resolver.nxdomain.update({"mx1.example.com", "mx2.example.com", "mx3.example.com"})
        self.error(self.resolve(resolver, "example.com"), NoReachableHost)
        self.assertNotIn(("address", "example.com"), resolver.queries)

    def test_domain_does_not_exist(self) -> None:
        resolver = MemoryResolver(strict=True)
        error = self.error(self.resolve(resolver, "gone.example"), DNSNameNotFound)
        self.assertEqual((error.reply.code, error.reply.status), (550, "5.1.2"))

    def test_dns_failure(self) -> None:
        resolver = MemoryResolver(failing=["example.com"])
        error = self.error(self.resolve(resolver, "example.com"), DNSTemporaryError)
        self.assertIsInstance(error, TransientDeliveryError)
        self.assertEqual((error.reply.code, error.reply.status), (451, "4.4.3"))

    def test_host_that_does_not_exist_is_skipped(self) -> None:
        resolver = plain()
        resolver.nxdomain.add("mx1.example.com")
        resolver.addresses["mx2.example.com"] = []
        self.assertEqual(
            self.hosts(resolver, "example.com"), [MXHost(20, "mx3.example.com", ("2001:db8::3",))]
        )

    def test_every_host_skipped(self) -> None:
        resolver = plain()
        resolver.nxdomain.update({"mx1.example.com", "mx3.example.com"})
        resolver.failing.add("mx2.example.com")
        error = self.error(self.resolve(resolver, "example.com"), NoReachableHost)
        self.assertEqual((error.reply.code, error.reply.status), (451, "4.4.4"))
        self.assertIn("mx2.example.com", str(error))

    def test_address_cap_across_hosts(self) -> None:
        hosts = self.hosts(plain(), "example.com", max_addresses=2)
        self.assertEqual(sum(len(h.addresses) for h in hosts), 2)
        hosts = self.hosts(plain(), "example.com", max_addresses=3)
        self.assertEqual([h.preference for h in hosts], [10, 10])
        self.assertEqual(DEFAULT_MAX_ADDRESSES, 5)

    def test_lookups_only_as_needed(self) -> None:
        names = [f"mx{n}.example.com" for n in range(10)]
        resolver = MemoryResolver(
            mx={"example.com": [(n, name) for n, name in enumerate(names)]},
            addresses={name: [f"192.0.2.{n}"] for n, name in enumerate(names)},
            nxdomain=names[:2],
        )
        hosts = self.hosts(resolver, "example.com", max_addresses=2)
        self.assertEqual([h.host for h in hosts], names[2:4])
        self.assertEqual([n for kind, n in resolver.queries if kind == "address"], names[:4])

    def test_repeated_addresses_tried_once(self) -> None:
        resolver = plain()
        resolver.addresses["mx3.example.com"] = ["192.0.2.1", "192.0.2.3"]
        hosts = self.hosts(resolver, "example.com")
        self.assertEqual(hosts[-1], MXHost(20, "mx3.example.com", ("192.0.2.3",)))

    def test_ourselves_drops_equal_and_worse(self) -> None:
        resolver = plain()
        resolver.mx["example.com"] += [(5, "mx0.example.com"), (10, "MTA.example.NET.")]
        resolver.addresses["mx0.example.com"] = ["192.0.2.10"]
        self.assertEqual(
            self.hosts(resolver, "example.com"), [MXHost(5, "mx0.example.com", ("192.0.2.10",))]
        )
        self.assertNotIn(("address", "mta.example.net"), resolver.queries)

    def test_ourselves_best_is_a_loop(self) -> None:
        resolver = plain()
        resolver.mx["example.com"].append((10, "mta.example.net"))
        error = self.error(
            self.resolve(resolver, "example.com", ours=["MTA.Example.Net."]), RoutingLoop
        )
        self.assertEqual((error.reply.code, error.reply.status), (554, "5.4.6"))
        self.assertEqual([kind for kind, _ in resolver.queries], ["mx"])

    def test_ourselves_as_implicit_mx_is_a_loop(self) -> None:
        resolver = MemoryResolver(addresses={"mta.example.net": ["192.0.2.25"]})
        self.error(self.resolve(resolver, "mta.example.net"), RoutingLoop)

    def test_ourselves_by_a_label(self) -> None:
        resolver = MemoryResolver(
            mx={"example.com": [(10, "xn--bcher-kva.example"), (20, "mx.example.com")]},
            addresses={"mx.example.com": ["192.0.2.1"]},
        )
        self.error(self.resolve(resolver, "example.com", ours=["bücher.example"]), RoutingLoop)

    def test_u_label_domain_queried_as_a_label(self) -> None:
        resolver = MemoryResolver(
            mx={"xn--bcher-kva.example": [(10, "mx.example.com")]},
            addresses={"mx.example.com": ["192.0.2.1"]},
        )
        self.hosts(resolver, "Bücher.example")
        self.assertEqual(resolver.queries[0], ("mx", "xn--bcher-kva.example"))

    def test_invalid_domain(self) -> None:
        resolver = MemoryResolver()
        self.error(self.resolve(resolver, "a..example"), DNSNameNotFound)
        self.assertEqual(resolver.queries, [])

    def test_max_addresses_at_least_one(self) -> None:
        with self.assertRaises(ValueError):
            self.resolve(plain(), "example.com", max_addresses=0)


class MXHostTests(SynchronousTestCase):
    def test_valid(self) -> None:
        host = MXHost(10, "mx.example.com", ["192.0.2.1"])  # type: ignore[arg-type]
        self.assertEqual(host.addresses, ("192.0.2.1",))

    def test_invalid(self) -> None:
        for preference, name, addresses in [
            (-1, "mx.example", ("192.0.2.1",)),
            (65536, "mx.example", ("192.0.2.1",)),
            (10, "mx.example.", ("192.0.2.1",)),
            (10, "", ("192.0.2.1",)),
            (10, "mx.example", ()),
            (10, "mx.example", ("mx.example",)),
        ]:
            with self.assertRaises(ValueError):
                MXHost(preference, name, addresses)


MX_LISTS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 30)),
    min_size=1,
    max_size=12,
    unique_by=lambda record: record[1],
).map(lambda records: [(pref, f"mx{n}.example.com") for pref, n in records])


def resolver_for(records: list[tuple[int, str]]) -> MemoryResolver:
    return MemoryResolver(
        mx={"example.com": records},
        addresses={host: [f"192.0.2.{int(host[2:].split('.')[0])}"] for _, host in records},
    )


@given(records=MX_LISTS, seed=st.integers(0, 2**32))
def test_shuffling_keeps_preference_order(records: list[tuple[int, str]], seed: int) -> None:
    d = resolve_mx(
        resolver_for(records), "example.com", OURS, random.Random(seed), max_addresses=100
    )
    hosts: list[MXHost] = []
    d.addCallback(hosts.extend)
    preferences = [h.preference for h in hosts]
    assert preferences == sorted(preferences)
    assert sorted((h.preference, h.host) for h in hosts) == sorted(records)


@given(records=MX_LISTS, ours=st.integers(0, 3), seed=st.integers(0, 2**32))
def test_ourselves_cuts_the_list(records: list[tuple[int, str]], ours: int, seed: int) -> None:
    resolver = resolver_for(records)
    resolver.mx["example.com"].append((ours, "mta.example.net"))
    d = resolve_mx(resolver, "example.com", OURS, random.Random(seed), max_addresses=100)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    better = [record for record in records if record[0] < ours]
    if better:
        assert sorted((h.preference, h.host) for h in outcome[0]) == sorted(better)
    else:
        assert outcome[0].check(RoutingLoop)

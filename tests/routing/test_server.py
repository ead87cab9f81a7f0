"""
The resolver and the MX lookup against a real nameserver on loopback
(tests/routing/_dnsserver.py), through the real reactor: UDP with a fresh
port for each query, TCP after truncation, timeouts, spoofed answers.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError
from mailframe.routing.mx import (
    MXHost,
    NoMailHost,
    NoReachableHost,
    NullMX,
    RoutingLoop,
    resolve_mx,
)
from mailframe.routing.resolver import DNSResolver
from mailframe.testing import ResolverContract
from tests.routing._dnsserver import DNSTestServer
from tests.routing._zone import BIG_TXT, MANY_V6, name

PLAIN_MX = [
    (10, name("mx1.plain")),
    (10, name("mx2.plain")),
    (20, name("mx3.plain")),
]
#: Short enough for a quick test, long enough for a loaded machine.
TIMEOUT = 0.5


class ServerTestCase(TestCase):
    """A nameserver on loopback for each test, stopped in cleanup."""

    def setUp(self) -> None:
        self.server = DNSTestServer()
        self.server.start()
        self.addCleanup(self.server.stop)

    def resolver(self, **options: Any) -> DNSResolver:
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("attempts", 1)
        options.setdefault("nameservers", [self.server.address])
        return DNSResolver(reactor, random=random.Random(5452), **options)

    async def fails(self, d: Deferred[Any], error: type[Exception]) -> Any:
        try:
            answer = await d
        except error as failure:
            return failure
        self.fail(f"expected {error.__name__}, got {answer!r}")


class DNSResolverContractTests(ResolverContract, ServerTestCase):
    def make_resolver(self) -> DNSResolver:
        return self.resolver()

    def wait(self, d: Deferred[None]) -> Deferred[None]:
        return d

    def mx_name(self) -> tuple[str, list[tuple[int, str]]]:
        return name("plain"), PLAIN_MX

    def null_mx_name(self) -> str:
        return name("nullmx")

    def alias_name(self) -> tuple[str, list[tuple[int, str]]]:
        return name("chain"), PLAIN_MX

    def address_name(self) -> tuple[str, list[str]]:
        return name("mx1.plain"), ["2001:db8::1", "192.0.2.1"]

    def txt_name(self) -> tuple[str, list[str]]:
        return name("txt"), ["v=spf1 -all", "hello world"]

    def nodata_name(self) -> str:
        return name("nodata")

    def nxdomain_name(self) -> str:
        return name("gone")

    def failing_name(self) -> str:
        return name("servfail")


class ResolverOverTheNetworkTests(ServerTestCase):
    async def test_truncated_txt_asked_again_over_tcp(self) -> None:
        answer = await self.resolver().lookup_txt(name("big"))
        self.assertEqual(sorted(answer), sorted(BIG_TXT))
        self.assertIn(("udp", name("big"), "TXT"), self.server.asked("udp"))
        self.assertIn(("tcp", name("big"), "TXT"), self.server.asked("tcp"))

    async def test_truncated_aaaa_asked_again_over_tcp(self) -> None:
        answer = await self.resolver().lookup_address(name("manyv6"))
        self.assertEqual(sorted(answer), sorted(MANY_V6))
        self.assertEqual(self.server.asked("tcp"), [("tcp", name("manyv6"), "AAAA")])

    async def test_small_answers_stay_on_udp(self) -> None:
        await self.resolver().lookup_mx(name("plain"))
        self.assertEqual(self.server.asked("tcp"), [])

    async def test_timeout(self) -> None:
        resolver = self.resolver(timeout=0.2, attempts=2)
        started = time.monotonic()
        failure = await self.fails(resolver.lookup_mx(name("timeout")), DNSTemporaryError)
        self.assertGreaterEqual(time.monotonic() - started, 0.4)
        self.assertEqual(failure.reply.status, "4.4.3")
        self.assertIn("no answer", failure.reason)
        self.assertEqual(len(self.server.asked()), 2, "one query for each attempt")

    async def test_silent_server_then_the_next(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
            hole.bind(("127.0.0.1", 0))
            resolver = self.resolver(nameservers=[hole.getsockname(), self.server.address])
            answer = await resolver.lookup_mx(name("plain"))
        self.assertEqual(sorted(answer), PLAIN_MX)

    async def test_wrong_id_ignored(self) -> None:
        answer = await self.resolver().lookup_address(name("spoof-id"))
        self.assertEqual(answer, ["192.0.2.53"])

    async def test_wrong_question_ignored(self) -> None:
        answer = await self.resolver().lookup_address(name("spoof-question"))
        self.assertEqual(answer, ["192.0.2.53"])

    async def test_wrong_source_ignored(self) -> None:
        answer = await self.resolver().lookup_address(name("spoof-source"))
        self.assertEqual(answer, ["192.0.2.53"])

    async def test_only_spoofed_answers_time_out(self) -> None:
        resolver = self.resolver(timeout=0.2)
        await self.fails(resolver.lookup_address(name("spoof-only")), DNSTemporaryError)
        await self.fails(resolver.lookup_mx(name("spoof-only")), DNSTemporaryError)
        await self.fails(resolver.lookup_txt(name("spoof-only")), DNSTemporaryError)

    async def test_malformed_answer(self) -> None:
        failure = await self.fails(self.resolver().lookup_mx(name("malformed")), DNSTemporaryError)
        self.assertIn("malformed", failure.reason)

    async def test_unfinished_cname_chain_asked_again(self) -> None:
        answer = await self.resolver().lookup_mx(name("nochase"))
        self.assertEqual(sorted(answer), PLAIN_MX)
        asked = self.server.asked()
        self.assertEqual(
            [(n, t) for _, n, t in asked], [(name("nochase"), "MX"), (name("plain"), "MX")]
        )

    async def test_cname_loop(self) -> None:
        failure = await self.fails(self.resolver().lookup_mx(name("loop1")), DNSTemporaryError)
        self.assertIn("CNAME", failure.reason)

    async def test_cname_to_nowhere(self) -> None:
        await self.fails(self.resolver().lookup_address(name("dangling")), DNSNameNotFound)

    async def test_internationalized_name(self) -> None:
        answer = await self.resolver().lookup_mx("Bücher." + name("").lstrip("."))
        self.assertEqual(answer, [(10, name("mx1.plain"))])

    async def test_answers_cached(self) -> None:
        resolver = self.resolver()
        first = await resolver.lookup_address(name("mx1.plain"))
        second = await resolver.lookup_address(name("MX1.plain"))
        self.assertEqual(first, second)
        self.assertEqual(len(self.server.asked()), 2, "AAAA and A, once each")

    async def test_negative_answers_cached(self) -> None:
        resolver = self.resolver()
        for _ in range(3):
            await self.fails(resolver.lookup_mx(name("gone")), DNSNameNotFound)
            self.assertEqual(await resolver.lookup_mx(name("nodata")), [])
        self.assertEqual(len(self.server.asked()), 2)

    async def test_concurrent_lookups_share_one_query(self) -> None:
        resolver = self.resolver()
        lookups = [resolver.lookup_mx(name("plain")) for _ in range(5)]
        for lookup in lookups:
            self.assertEqual(sorted(await lookup), PLAIN_MX)
        self.assertEqual(len(self.server.asked()), 1)


class ResolveMXOverTheNetworkTests(ServerTestCase):
    def resolve(self, domain: str, ours: tuple[str, ...] = ("mta.example",)) -> Deferred[Any]:
        return resolve_mx(self.resolver(), domain, ours, random.Random(7))

    async def test_equal_preferences_then_worse(self) -> None:
        hosts = await self.resolve(name("plain"))
        self.assertEqual({h.host for h in hosts[:2]}, {name("mx1.plain"), name("mx2.plain")})
        self.assertEqual(hosts[2], MXHost(20, name("mx3.plain"), ("2001:db8::3",)))
        by_host = {h.host: h.addresses for h in hosts}
        self.assertEqual(by_host[name("mx1.plain")], ("2001:db8::1", "192.0.2.1"))

    async def test_null_mx(self) -> None:
        failure = await self.fails(self.resolve(name("nullmx")), NullMX)
        self.assertEqual((failure.reply.code, failure.reply.status), (556, "5.1.10"))
        self.assertEqual([t for _, _, t in self.server.asked()], ["MX"])

    async def test_mx_through_cname(self) -> None:
        hosts = await self.resolve(name("alias"))
        self.assertEqual(len(hosts), 3)

    async def test_implicit_mx(self) -> None:
        hosts = await self.resolve(name("implicit"))
        self.assertEqual(hosts, [MXHost(0, name("implicit"), ("2001:db8::10", "192.0.2.10"))])

    async def test_no_mx_and_no_address(self) -> None:
        failure = await self.fails(self.resolve(name("nohost")), NoMailHost)
        self.assertEqual(failure.reply.status, "5.4.4")

    async def test_domain_does_not_exist(self) -> None:
        failure = await self.fails(self.resolve(name("gone")), DNSNameNotFound)
        self.assertEqual((failure.reply.code, failure.reply.status), (550, "5.1.2"))

    async def test_mx_host_does_not_exist(self) -> None:
        hosts = await self.resolve(name("badhost"))
        self.assertEqual(hosts, [MXHost(20, name("mx2.plain"), ("192.0.2.2",))])

    async def test_no_mx_host_has_an_address(self) -> None:
        failure = await self.fails(self.resolve(name("allbad")), NoReachableHost)
        self.assertEqual((failure.reply.code, failure.reply.status), (451, "4.4.4"))

    async def test_servfail(self) -> None:
        failure = await self.fails(self.resolve(name("servfail")), DNSTemporaryError)
        self.assertEqual(failure.reply.status, "4.4.3")

    async def test_mx_host_servfail(self) -> None:
        await self.fails(self.resolve(name("mxservfail")), NoReachableHost)

    async def test_timeout(self) -> None:
        await self.fails(self.resolve(name("timeout")), DNSTemporaryError)

    async def test_ourselves_with_better_hosts(self) -> None:
        hosts = await self.resolve(name("ours-better"), ours=(name("mx.ours") + ".",))
        self.assertEqual(hosts, [MXHost(5, name("mx1.plain"), ("2001:db8::1", "192.0.2.1"))])

    async def test_ourselves_best(self) -> None:
        failure = await self.fails(
            self.resolve(name("ours-only"), ours=(name("MX.OURS"),)), RoutingLoop
        )
        self.assertEqual((failure.reply.code, failure.reply.status), (554, "5.4.6"))

    async def test_internationalized_domain(self) -> None:
        hosts = await self.resolve("bücher." + name("").lstrip("."))
        self.assertEqual([h.host for h in hosts], [name("mx1.plain")])

"""
DNSResolver without sockets or real time: a fake network of scripted
nameservers on a Clock (tests/routing/_fakenet.py). Query shape, RFC 5452
matching, retries and timeouts, CNAME chains, and the cache's TTLs.
"""

from __future__ import annotations

import random
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailframe.interfaces import IResolver
from mailframe.routing import resolver as resolver_module
from mailframe.routing._dnserrors import MAX_CNAME_CHAIN, DNSNameNotFound, DNSTemporaryError
from mailframe.routing.resolver import EDNS_PAYLOAD, MAX_NEGATIVE_TTL, DNSResolver
from tests.routing._fakenet import LATENCY, FakeNetwork, answers, rcode_server, zone_server
from tests.routing._zone import Zone, udp_wire

SERVER = ("192.0.2.53", 53)
SERVER2 = ("2001:db8::53", 5353)
SOA = "@ 300 SOA ns hostmaster 1 3600 600 86400 60\n"


def zone(records: str, soa: str = SOA) -> Zone:
    return Zone(soa + "@ 300 NS ns\n" + records, origin="example.")


BASIC = zone(
    """
mx        300 MX    10 mail
mail      300 A     192.0.2.25
mail      300 AAAA  2001:db8::25
txt       300 TXT   "a" "b"
txt       300 TXT   "c"
alias      30 CNAME mail
chain     300 CNAME alias
empty     300 HINFO "x" "y"
"""
)


class ResolverTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = FakeNetwork()

    def resolver(self, served: Zone | None = BASIC, **options: Any) -> DNSResolver:
        if served is not None:
            self.net.nameservers[SERVER] = zone_server(served)
        options.setdefault("nameservers", [SERVER])
        options.setdefault("random", random.Random(1))
        return DNSResolver(self.net, **options)

    def settle(self, d: Deferred[Any], limit: float = 60.0) -> None:
        """Run the clock until *d* has fired."""
        waited = 0.0
        while not d.called and waited < limit:
            self.net.advance(LATENCY)
            waited += LATENCY

    def answer(self, d: Deferred[Any]) -> Any:
        self.settle(d)
        return self.successResultOf(d)

    def failure(self, d: Deferred[Any], *errors: type[Exception]) -> Any:
        self.settle(d)
        return self.failureResultOf(d, *errors).value


class QueryTests(ResolverTestCase):
    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.resolver()))

    def test_query_shape(self) -> None:
        expected_id = random.Random(1).getrandbits(16)
        self.answer(self.resolver().lookup_mx("MX.example"))
        [sent] = self.net.sent
        query = sent.query
        self.assertEqual(query.id, expected_id)
        self.assertTrue(query.flags & dns.flags.RD)
        self.assertEqual(query.edns, 0)
        self.assertEqual(query.payload, EDNS_PAYLOAD)
        self.assertEqual(query.question[0].name, dns.name.from_text("mx.example."))
        self.assertEqual(query.question[0].rdtype, dns.rdatatype.MX)
        self.assertEqual(sent.to, SERVER)

    def test_no_search_domain(self) -> None:
        self.assertEqual(
            self.answer(self.resolver().lookup_mx("mx.example")), [(10, "mail.example")]
        )
        self.assertEqual(self.net.asked(), [("mx.example", "MX")])

    def test_fresh_port_for_each_query_closed_after(self) -> None:
        resolver = self.resolver()
        self.answer(resolver.lookup_address("mail.example"))
        self.answer(resolver.lookup_mx("mx.example"))
        ports = [sent.port for sent in self.net.sent]
        self.assertEqual(len(ports), 3)
        self.assertEqual(len(set(ports)), 3)
        self.assertEqual(self.net.open_ports(), [])
        self.assertEqual(self.net.getDelayedCalls(), [])

    def test_ipv6_nameserver_gets_an_ipv6_port(self) -> None:
        self.net.nameservers[SERVER2] = zone_server(BASIC)
        resolver = self.resolver(None, nameservers=[SERVER2])
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])
        self.assertEqual(self.net.sent[0].interface, "::")

    def test_values(self) -> None:
        resolver = self.resolver()
        self.assertEqual(
            self.answer(resolver.lookup_address("mail.example")), ["2001:db8::25", "192.0.2.25"]
        )
        self.assertEqual(sorted(self.answer(resolver.lookup_txt("txt.example"))), ["ab", "c"])

    def test_nxdomain_and_nodata(self) -> None:
        resolver = self.resolver()
        error = self.failure(resolver.lookup_mx("gone.example"), DNSNameNotFound)
        self.assertEqual(error.name, "gone.example")
        self.assertEqual(self.answer(resolver.lookup_mx("empty.example")), [])

    def test_invalid_name_does_not_exist(self) -> None:
        resolver = self.resolver()
        for bad in ("", "a..example", "x" * 64 + ".example"):
            self.failure(resolver.lookup_mx(bad), DNSNameNotFound)
        self.assertEqual(self.net.sent, [])

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            self.resolver(nameservers=[])
        with self.assertRaises(ValueError):
            self.resolver(timeout=0)
        with self.assertRaises(ValueError):
            self.resolver(nameservers=[("not-an-address", 53)])

    def test_system_nameservers(self) -> None:
        class Configured:
            def __init__(self, configure: bool) -> None:
                self.nameservers = ["192.0.2.1", "https://dns.example/dns-query", "2001:db8::1"]

        self.patch(resolver_module.dns.resolver, "Resolver", Configured)
        resolver = DNSResolver(self.net)
        self.assertEqual(resolver.nameservers, (("192.0.2.1", 53), ("2001:db8::1", 53)))


class MatchingTests(ResolverTestCase):
    """RFC 5452 §9.1: only the server's own answer to our own question counts."""

    def spoofing(self, *forgeries: Any) -> DNSResolver:
        true = zone_server(BASIC)

        def serve(query: dns.message.Message) -> list[Any]:
            return [forge(query) for forge in forgeries] + true(query)

        self.net.nameservers[SERVER] = serve
        return self.resolver(None)

    def forged(self, query: dns.message.Message, **changes: Any) -> bytes:
        response = zone("mx 300 MX 10 evil.example.\n").respond(query)
        for attribute, value in changes.items():
            setattr(response, attribute, value)
        return response.to_wire()

    def test_wrong_id(self) -> None:
        resolver = self.spoofing(lambda q: (self.forged(q, id=(q.id + 1) % 65536), None))
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_wrong_source_address_or_port(self) -> None:
        resolver = self.spoofing(
            lambda q: (self.forged(q), ("192.0.2.66", 53)),
            lambda q: (self.forged(q), (SERVER[0], 5353)),
        )
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_wrong_question(self) -> None:
        def other_question(query: dns.message.Message) -> tuple[bytes, None]:
            other = dns.message.make_query("evil.example.", "MX", id=query.id)
            return self.forged(other), None

        def other_type(query: dns.message.Message) -> tuple[bytes, None]:
            other = dns.message.make_query(query.question[0].name, "TXT", id=query.id)
            return self.forged(other), None

        resolver = self.spoofing(other_question, other_type)
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_not_a_response(self) -> None:
        resolver = self.spoofing(lambda q: (q.to_wire(), None), lambda q: (b"\x00garbage", None))
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_only_forgeries_time_out(self) -> None:
        self.net.nameservers[SERVER] = answers(
            lambda q: self.forged(q, id=(q.id + 1) % 65536),
            lambda q: (self.forged(q), ("192.0.2.66", 53)),
        )
        resolver = self.resolver(None, timeout=2.0, attempts=1)
        d = resolver.lookup_mx("mx.example")
        self.net.advance(1.98)
        self.assertNoResult(d)
        self.net.advance(0.02)
        self.assertIn("no answer", self.failureResultOf(d, DNSTemporaryError).value.reason)

    def test_malformed_answer_moves_on(self) -> None:
        def broken(query: dns.message.Message) -> bytes:
            wire = BASIC.respond(query).to_wire()
            return wire[:-3]

        self.net.nameservers[SERVER] = answers(broken)
        self.net.nameservers[SERVER2] = zone_server(BASIC)
        resolver = self.resolver(None, nameservers=[SERVER, SERVER2])
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])
        self.assertEqual([s.to for s in self.net.sent], [SERVER, SERVER2])


class RetryTests(ResolverTestCase):
    def test_servers_in_turn_then_again(self) -> None:
        resolver = self.resolver(None, nameservers=[SERVER, SERVER2], timeout=2.0, attempts=2)
        d = resolver.lookup_mx("mx.example")
        self.net.pump([0.5] * 15)
        self.assertNoResult(d)
        self.net.advance(0.5)
        self.failureResultOf(d, DNSTemporaryError)
        self.assertEqual([s.to for s in self.net.sent], [SERVER, SERVER2, SERVER, SERVER2])
        self.assertEqual(len({s.query.id for s in self.net.sent}), 4, "a fresh id each time")
        self.assertEqual(self.net.open_ports(), [])

    def test_servfail_and_refused_move_on(self) -> None:
        for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP):
            self.net = FakeNetwork()
            self.net.nameservers[SERVER] = rcode_server(rcode)
            self.net.nameservers[SERVER2] = zone_server(BASIC)
            resolver = self.resolver(None, nameservers=[SERVER, SERVER2])
            self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_servfail_everywhere(self) -> None:
        self.net.nameservers[SERVER] = rcode_server(dns.rcode.SERVFAIL)
        error = self.failure(
            self.resolver(None, attempts=3).lookup_mx("mx.example"), DNSTemporaryError
        )
        self.assertIn("SERVFAIL", error.reason)
        self.assertEqual((error.reply.code, error.reply.status), (451, "4.4.3"))
        self.assertEqual(len(self.net.sent), 3)

    def test_address_lookup_keeps_what_it_found(self) -> None:
        def aaaa_fails(query: dns.message.Message) -> list[Any]:
            if query.question[0].rdtype == dns.rdatatype.AAAA:
                return rcode_server(dns.rcode.SERVFAIL)(query)
            return zone_server(BASIC)(query)

        self.net.nameservers[SERVER] = aaaa_fails
        resolver = self.resolver(None)
        self.assertEqual(self.answer(resolver.lookup_address("mail.example")), ["192.0.2.25"])
        self.failure(resolver.lookup_address("empty.example"), DNSTemporaryError)
        # NXDOMAIN says the name does not exist, whatever the other type said.
        self.failure(resolver.lookup_address("gone.example"), DNSNameNotFound)


class TCPTests(ResolverTestCase):
    def test_truncated_answer_asked_again_over_tcp(self) -> None:
        many = zone("".join(f"many 300 AAAA 2001:db8::{n:x}\n" for n in range(1, 100)))
        self.net.nameservers[SERVER] = zone_server(many)
        d = self.resolver(None).lookup_address("many.example")
        self.net.advance(LATENCY)
        host, port, factory, _, _ = self.net.tcpClients[-1]
        self.assertEqual((host, port), SERVER)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        sent = transport.value()
        self.assertEqual(int.from_bytes(sent[:2], "big"), len(sent) - 2)
        query = dns.message.from_wire(sent[2:])
        wire = many.respond(query).to_wire(max_size=65535)
        self.assertTrue(dns.message.from_wire(udp_wire(many.respond(query))).flags & dns.flags.TC)
        for byte in range(len(wire) + 2):  # one octet at a time
            protocol.dataReceived((len(wire).to_bytes(2, "big") + wire)[byte : byte + 1])
        self.settle(d)
        self.assertEqual(len(self.successResultOf(d)), 99)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_tcp_connection_refused(self) -> None:
        self.net.nameservers[SERVER] = answers(
            lambda q: udp_wire(
                zone("".join(f'm 300 TXT "{"x" * 200}{n}"\n' for n in range(9))).respond(q)
            )
        )
        d = self.resolver(None, attempts=1).lookup_txt("m.example")
        self.net.advance(LATENCY)
        connector = self.net.connectors[-1]
        _, _, factory, _, _ = self.net.tcpClients[-1]
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        error = self.failure(d, DNSTemporaryError)
        self.assertIn("TCP", error.reason)

    def test_tcp_timeout(self) -> None:
        self.net.nameservers[SERVER] = answers(
            lambda q: udp_wire(
                zone("".join(f'm 300 TXT "{"x" * 200}{n}"\n' for n in range(9))).respond(q)
            )
        )
        d = self.resolver(None, timeout=1.0, attempts=1).lookup_txt("m.example")
        self.net.advance(LATENCY)
        self.assertEqual(len(self.net.tcpClients), 1)
        self.net.advance(1.0)
        self.assertIn("TCP", self.failureResultOf(d, DNSTemporaryError).value.reason)


class CNAMETests(ResolverTestCase):
    def test_followed_within_the_answer(self) -> None:
        resolver = self.resolver()
        self.assertEqual(
            self.answer(resolver.lookup_address("chain.example")), ["2001:db8::25", "192.0.2.25"]
        )
        self.assertEqual(len(self.net.sent), 2)

    def test_unfinished_chain_asked_again(self) -> None:
        self.net.nameservers[SERVER] = zone_server(BASIC, chase=False)
        resolver = self.resolver(None)
        self.assertEqual(self.answer(resolver.lookup_mx("chain.example")), [])
        self.assertEqual(
            self.net.asked(),
            [("chain.example", "MX"), ("alias.example", "MX"), ("mail.example", "MX")],
        )

    def test_loop(self) -> None:
        looping = zone("a 300 CNAME b\nb 300 CNAME a\n")
        error = self.failure(self.resolver(looping).lookup_mx("a.example"), DNSTemporaryError)
        self.assertIn("loop", error.reason)

    def test_loop_across_queries(self) -> None:
        looping = zone("a 300 CNAME b\nb 300 CNAME a\n")
        self.net.nameservers[SERVER] = zone_server(looping, chase=False)
        error = self.failure(self.resolver(None).lookup_mx("a.example"), DNSTemporaryError)
        self.assertIn("loop", error.reason)

    def test_chain_too_long(self) -> None:
        links = MAX_CNAME_CHAIN + 1
        chained = zone(
            "".join(f"c{n} 300 CNAME c{n + 1}\n" for n in range(links)) + f"c{links} 300 MX 0 .\n"
        )
        error = self.failure(self.resolver(chained).lookup_mx("c0.example"), DNSTemporaryError)
        self.assertIn("too long", error.reason)
        self.assertEqual(self.answer(self.resolver(chained).lookup_mx("c1.example")), [(0, ".")])

    def test_nxdomain_at_the_end(self) -> None:
        dangling = zone("a 300 CNAME gone\n")
        self.failure(self.resolver(dangling).lookup_mx("a.example"), DNSNameNotFound)


class CacheTests(ResolverTestCase):
    """TTLs on the Clock; every lookup that asks the network shows in ``sent``."""

    def lookups(
        self, resolver: DNSResolver, name: str, at: list[float], kind: str = "mx"
    ) -> list[int]:
        """Look *name* up at each time of *at*; the number of queries sent after each."""
        counts = []
        for when in at:
            self.net.advance(when - self.net.seconds())
            d = getattr(resolver, f"lookup_{kind}")(name)
            self.settle(d)
            d.addErrback(lambda failure: None)
            counts.append(len(self.net.sent))
        return counts

    def test_positive_ttl(self) -> None:
        resolver = self.resolver()
        self.assertEqual(self.lookups(resolver, "mx.example", [0, 100, 300.02]), [1, 1, 2])

    def test_ttl_capped_by_max_ttl(self) -> None:
        long = zone("mx 604800 MX 10 mail\n")
        resolver = self.resolver(long, max_ttl=60)
        self.assertEqual(self.lookups(resolver, "mx.example", [0, 59, 60.02]), [1, 1, 2])

    def test_chain_keeps_the_least_ttl(self) -> None:
        resolver = self.resolver()
        # alias has a TTL of 30 seconds, mail of 300.
        self.assertEqual(self.lookups(resolver, "chain.example", [0, 29, 30.02], "txt"), [1, 1, 2])

    def test_zero_ttl_not_kept(self) -> None:
        resolver = self.resolver(zone("mx 0 MX 10 mail\n"))
        self.assertEqual(self.lookups(resolver, "mx.example", [0, 0.5]), [1, 2])

    def test_nxdomain_kept_for_the_soa_minimum(self) -> None:
        resolver = self.resolver()  # SOA TTL 300, MINIMUM 60
        self.assertEqual(self.lookups(resolver, "gone.example", [0, 59, 60.02]), [1, 1, 2])

    def test_nodata_kept_for_the_soa_ttl_when_lower(self) -> None:
        low = zone("empty 300 HINFO x y\n", soa="@ 20 SOA ns hostmaster 1 3600 600 86400 600\n")
        resolver = self.resolver(low)
        self.assertEqual(self.lookups(resolver, "empty.example", [0, 19, 20.02]), [1, 1, 2])

    def test_negative_ttl_capped(self) -> None:
        high = zone("", soa="@ 604800 SOA ns hostmaster 1 3600 600 86400 604800\n")
        resolver = self.resolver(high)
        times = [0, MAX_NEGATIVE_TTL - 1, MAX_NEGATIVE_TTL + 0.02]
        self.assertEqual(self.lookups(resolver, "gone.example", times), [1, 1, 2])

    def test_negative_without_soa_not_kept(self) -> None:
        def bare_nxdomain(query: dns.message.Message) -> bytes:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()

        self.net.nameservers[SERVER] = answers(bare_nxdomain)
        resolver = self.resolver(None)
        self.assertEqual(self.lookups(resolver, "gone.example", [0, 1]), [1, 2])

    def test_failures_kept_for_failure_ttl(self) -> None:
        self.net.nameservers[SERVER] = rcode_server(dns.rcode.SERVFAIL)
        resolver = self.resolver(None, attempts=1, failure_ttl=5.0)
        self.assertEqual(self.lookups(resolver, "mx.example", [0, 4.9, 5.1]), [1, 1, 2])

    def test_timeouts_kept_for_failure_ttl(self) -> None:
        resolver = self.resolver(None, attempts=1, timeout=1.0, failure_ttl=5.0)
        d = resolver.lookup_mx("mx.example")
        self.net.advance(1.0)
        self.failureResultOf(d, DNSTemporaryError)
        self.net.advance(4.0)
        self.failureResultOf(resolver.lookup_mx("mx.example"), DNSTemporaryError)
        self.assertEqual(len(self.net.sent), 1)

    def test_failures_not_kept(self) -> None:
        self.net.nameservers[SERVER] = rcode_server(dns.rcode.SERVFAIL)
        resolver = self.resolver(None, attempts=1, failure_ttl=0)
        self.assertEqual(self.lookups(resolver, "mx.example", [0, 0.1]), [1, 2])

    def test_answer_replaces_failure(self) -> None:
        resolver = self.resolver(None, attempts=1, failure_ttl=5.0)
        self.net.nameservers[SERVER] = rcode_server(dns.rcode.SERVFAIL)
        self.failure(resolver.lookup_mx("mx.example"), DNSTemporaryError)
        self.net.nameservers[SERVER] = zone_server(BASIC)
        self.net.advance(5)
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

    def test_cached_target_ends_a_chain(self) -> None:
        self.net.nameservers[SERVER] = zone_server(BASIC, chase=False)
        resolver = self.resolver(None)
        self.answer(resolver.lookup_address("mail.example"))
        before = len(self.net.sent)
        self.assertEqual(self.answer(resolver.lookup_txt("mail.example")), [])
        self.assertEqual(
            self.answer(resolver.lookup_address("alias.example")), ["2001:db8::25", "192.0.2.25"]
        )
        self.assertEqual(
            self.net.asked()[before + 1 :], [("alias.example", "AAAA"), ("alias.example", "A")]
        )

    def test_bounded_size(self) -> None:
        resolver = self.resolver(cache_size=2)
        for name in ("mx.example", "empty.example", "gone.example"):
            self.lookups(resolver, name, [0])
        self.assertEqual(len(self.net.sent), 3)
        self.lookups(resolver, "gone.example", [0])
        self.assertEqual(len(self.net.sent), 3)
        self.lookups(resolver, "mx.example", [0])
        self.assertEqual(len(self.net.sent), 4, "the oldest answer made room")

    def test_concurrent_lookups_share_one_query(self) -> None:
        resolver = self.resolver()
        lookups = [resolver.lookup_mx("mx.example") for _ in range(4)]
        lookups[1].cancel()
        self.settle(lookups[0])
        self.assertEqual(len(self.net.sent), 1)
        for index in (0, 2, 3):
            self.assertEqual(self.successResultOf(lookups[index]), [(10, "mail.example")])
        self.failureResultOf(lookups[1])

    def test_results_are_copies(self) -> None:
        resolver = self.resolver()
        self.answer(resolver.lookup_mx("mx.example")).append((0, "x"))
        self.assertEqual(self.answer(resolver.lookup_mx("mx.example")), [(10, "mail.example")])

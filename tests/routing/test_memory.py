"""
MemoryResolver, the reference IResolver of mailframe.testing: the contract
suite, and the failures it can script.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailframe.routing._dnserrors import MAX_CNAME_CHAIN, DNSNameNotFound, DNSTemporaryError
from mailframe.testing import MemoryResolver, ResolverContract

PLAIN_MX = [(10, "mx1.example.com"), (10, "mx2.example.com"), (20, "mx3.example.com")]


def example_resolver(**options: object) -> MemoryResolver:
    return MemoryResolver(
        mx={"example.com": PLAIN_MX, "null.example": [(0, ".")]},
        addresses={"mx1.example.com": ["2001:db8::1", "192.0.2.1"]},
        # A name that exists with no records: strict resolvers know it.
        txt={"example.com": ["v=spf1 -all", "hello world"], "nodata.example": []},
        cnames={"alias.example": "www.example", "www.example": "example.com"},
        nxdomain=["gone.example"],
        failing=["servfail.example"],
        **options,  # type: ignore[arg-type]
    )


class MemoryResolverContractTests(ResolverContract, SynchronousTestCase):
    def make_resolver(self) -> MemoryResolver:
        return example_resolver()

    def mx_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "example.com", PLAIN_MX

    def null_mx_name(self) -> str:
        return "null.example"

    def alias_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "alias.example", PLAIN_MX

    def address_name(self) -> tuple[str, list[str]]:
        return "mx1.example.com", ["2001:db8::1", "192.0.2.1"]

    def txt_name(self) -> tuple[str, list[str]]:
        return "example.com", ["v=spf1 -all", "hello world"]

    def nodata_name(self) -> str:
        return "nodata.example"

    def nxdomain_name(self) -> str:
        return "gone.example"

    def failing_name(self) -> str:
        return "servfail.example"


class StrictMemoryResolverContractTests(MemoryResolverContractTests):
    def make_resolver(self) -> MemoryResolver:
        return example_resolver(strict=True)


class ScriptingTests(SynchronousTestCase):
    def test_unknown_names_are_empty_unless_strict(self) -> None:
        self.assertEqual(self.successResultOf(MemoryResolver().lookup_mx("x.example")), [])
        strict = MemoryResolver(strict=True)
        self.failureResultOf(strict.lookup_mx("x.example"), DNSNameNotFound)

    def test_failure_of_one_kind(self) -> None:
        resolver = MemoryResolver(
            mx={"example.com": [(10, "mx.example.com")]},
            addresses={"mx.example.com": ["192.0.2.1"]},
            failing=[("mx.example.com", "address")],
        )
        self.successResultOf(resolver.lookup_mx("mx.example.com"))
        error = self.failureResultOf(resolver.lookup_address("mx.example.com"), DNSTemporaryError)
        self.assertEqual((error.value.reply.code, error.value.reply.status), (451, "4.4.3"))

    def test_nxdomain_reply(self) -> None:
        resolver = MemoryResolver(nxdomain=["Gone.Example."])
        error = self.failureResultOf(resolver.lookup_address("gone.example"), DNSNameNotFound)
        self.assertEqual((error.value.reply.code, error.value.reply.status), (550, "5.1.2"))

    def test_names_compared_by_a_label(self) -> None:
        resolver = MemoryResolver(mx={"Bücher.example": [(10, "mx.example")]})
        self.assertEqual(
            self.successResultOf(resolver.lookup_mx("xn--bcher-kva.example.")), [(10, "mx.example")]
        )
        self.assertEqual(
            self.successResultOf(resolver.lookup_mx("BÜCHER.example")), [(10, "mx.example")]
        )

    def test_invalid_name(self) -> None:
        self.failureResultOf(MemoryResolver().lookup_mx("a..example"), DNSNameNotFound)

    def test_cname_loop_is_temporary(self) -> None:
        resolver = MemoryResolver(cnames={"a.example": "b.example", "b.example": "a.example"})
        self.failureResultOf(resolver.lookup_mx("a.example"), DNSTemporaryError)

    def test_cname_chain_bounded(self) -> None:
        links = {f"c{n}.example": f"c{n + 1}.example" for n in range(MAX_CNAME_CHAIN + 1)}
        end = f"c{MAX_CNAME_CHAIN + 1}.example"
        resolver = MemoryResolver(mx={end: [(0, ".")]}, cnames=links)
        self.failureResultOf(resolver.lookup_mx("c0.example"), DNSTemporaryError)
        self.assertEqual(self.successResultOf(resolver.lookup_mx("c1.example")), [(0, ".")])

    def test_queries_recorded(self) -> None:
        resolver = MemoryResolver()
        resolver.lookup_mx("Example.COM.")
        resolver.lookup_address("mx.example.com")
        resolver.lookup_txt("_dmarc.example.com")
        self.assertEqual(
            resolver.queries,
            [("mx", "example.com"), ("address", "mx.example.com"), ("txt", "_dmarc.example.com")],
        )

    def test_tables_can_change(self) -> None:
        resolver = MemoryResolver()
        resolver.nxdomain.add("late.example")
        self.failureResultOf(resolver.lookup_mx("late.example"), DNSNameNotFound)

"""
The ``dnsbl`` policy: query names, answers, failures and replies on a
MemoryResolver and a task.Clock, then once through the real resolver against
the test nameserver on loopback.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext, Config
from mailframe.envelope import ClientInfo
from mailframe.policies.dnsbl import (
    DEFAULT_TIMEOUT,
    LISTED_ANSWERS,
    DNSBLPolicy,
    dnsbl_maker,
    query_name,
)
from mailframe.policies.relay import LOOPBACK
from mailframe.routing.resolver import DNSResolver
from mailframe.testing import ComponentMakerContract, MemoryResolver, PolicyContract
from mailframe.verdict import Action, Verdict
from tests.routing._dnsserver import DNSTestServer
from tests.routing._zone import Zone

ZONE = "bl.example"
OTHER_ZONE = "other.example"
CLIENT = ClientInfo(address="192.0.2.99", port=4000, listener="smtp")
LISTED_NAME = "99.2.0.192.bl.example"
V6 = "2001:db8::1"
V6_NAME = "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.example"
SENDER = Mailbox("sender", "example.com")
RECIPIENT = Mailbox("alice", "example.net")
POSTMASTER = Mailbox("postmaster", "example.net")
BLOCKED = "Service unavailable; Client host [192.0.2.99] blocked using bl.example"


def client(address: str) -> ClientInfo:
    return ClientInfo(address=address, port=4000, listener="smtp")


class NeverAnswers:
    """A resolver whose lookups never finish, unless cancelled."""

    def __init__(self) -> None:
        self.pending: list[Deferred[list[str]]] = []

    def _pending(self, name: str) -> Deferred[list[str]]:
        d: Deferred[list[str]] = Deferred()
        self.pending.append(d)
        return d

    lookup_mx = lookup_address = lookup_txt = _pending


class QueryNameTests(SynchronousTestCase):
    def test_ipv4_octets_reversed(self) -> None:
        self.assertEqual(query_name(ipaddress.ip_address("192.0.2.99"), ZONE), LISTED_NAME)

    def test_ipv6_nibbles_reversed(self) -> None:
        name = query_name(ipaddress.ip_address(V6), ZONE)
        self.assertEqual(name, V6_NAME)
        self.assertEqual(len(name.split(".")), 32 + 2)

    def test_ipv4_mapped_is_ipv4(self) -> None:
        self.assertEqual(query_name(ipaddress.ip_address("::ffff:192.0.2.99"), ZONE), LISTED_NAME)

    def test_trailing_dot(self) -> None:
        self.assertEqual(query_name(ipaddress.ip_address("192.0.2.99"), ZONE + "."), LISTED_NAME)


class DNSBLContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> DNSBLPolicy:
        return DNSBLPolicy(MemoryResolver(), [ZONE], Clock())


class DNSBLRcptContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> DNSBLPolicy:
        resolver = MemoryResolver({}, {"1.2.0.192." + ZONE: ["127.0.0.2"]})
        return DNSBLPolicy(resolver, [ZONE], Clock(), at="rcpt")


class DNSBLMakerContractTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return dnsbl_maker

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=Clock(), random=random.Random(0), resolver=MemoryResolver())


class PolicyTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.resolver = MemoryResolver(strict=True)

    def policy(self, zones: list[str] | None = None, **options: Any) -> DNSBLPolicy:
        options.setdefault("log", Logger(observer=self.events.append))
        return DNSBLPolicy(self.resolver, zones or [ZONE], self.clock, **options)

    def verdict(self, answer: Any) -> Verdict:
        if isinstance(answer, Deferred):
            result = self.successResultOf(answer)
            assert isinstance(result, Verdict)
            return result
        assert isinstance(answer, Verdict)
        return answer

    def refusal(self, answer: Any) -> tuple[int, str | None, str]:
        verdict = self.verdict(answer)
        self.assertEqual(verdict.action, Action.REJECT)
        reply = verdict.effective_reply
        assert reply is not None
        return reply.code, reply.status, "\n".join(reply.text)

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"].name in ("warn", "error", "critical")]


class ListedTests(PolicyTestCase):
    def test_listed_at_connect(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.assertEqual(self.refusal(self.policy().connect(CLIENT)), (554, "5.7.1", BLOCKED))
        self.assertEqual(self.resolver.queries, [("address", LISTED_NAME)])
        [event] = self.events
        self.assertEqual(
            (event["address"], event["zone"], event["answers"]), ("192.0.2.99", ZONE, "127.0.0.2")
        )

    def test_verdict_reason_names_the_list(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)).reason, "listed in bl.example")

    def test_not_listed(self) -> None:
        self.resolver.strict = False  # the name exists, without A records
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)), Verdict())

    def test_nxdomain_is_not_listed(self) -> None:
        self.resolver.nxdomain.add(LISTED_NAME)
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)), Verdict())
        self.assertEqual(self.warnings(), [])

    def test_other_hooks_continue(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        policy = self.policy()
        self.assertEqual(policy.helo(CLIENT, "x"), Verdict())
        self.assertEqual(policy.mail(CLIENT, SENDER, {}), Verdict())
        self.assertEqual(policy.rcpt(CLIENT, SENDER, RECIPIENT, {}), Verdict())
        self.assertEqual(policy.end_of_data(None, b"", None), Verdict())
        self.assertEqual(self.resolver.queries, [])

    def test_ipv6_client(self) -> None:
        self.resolver.addresses[V6_NAME] = ["127.0.0.2"]
        _, _, text = self.refusal(self.policy().connect(client(V6)))
        self.assertEqual(text, f"Service unavailable; Client host [{V6}] blocked using {ZONE}")
        self.assertEqual(self.resolver.queries, [("address", V6_NAME)])

    def test_ipv4_mapped_client(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.assertEqual(
            self.refusal(self.policy().connect(client("::ffff:192.0.2.99"))),
            (554, "5.7.1", BLOCKED),
        )

    def test_client_without_ip_address(self) -> None:
        for address in ("", "not-an-address"):
            self.assertEqual(self.verdict(self.policy().connect(client(address))), Verdict())
        self.assertEqual(self.resolver.queries, [])

    def test_first_list_in_order_replies(self) -> None:
        first, second = "99.2.0.192." + OTHER_ZONE, LISTED_NAME
        self.resolver.addresses[first] = ["127.0.0.4"]
        self.resolver.addresses[second] = ["127.0.0.2"]
        _, _, text = self.refusal(self.policy([OTHER_ZONE, ZONE]).connect(CLIENT))
        self.assertTrue(text.endswith("blocked using other.example"), text)
        self.assertEqual(self.resolver.queries, [("address", first), ("address", second)])

    def test_second_list_lists(self) -> None:
        self.resolver.nxdomain.add("99.2.0.192." + OTHER_ZONE)
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.assertEqual(
            self.refusal(self.policy([OTHER_ZONE, ZONE]).connect(CLIENT)), (554, "5.7.1", BLOCKED)
        )

    def test_lists_asked_at_once(self) -> None:
        resolver = NeverAnswers()
        policy = DNSBLPolicy(resolver, [ZONE, OTHER_ZONE], self.clock)
        d = policy.connect(CLIENT)
        self.assertEqual(len(resolver.pending), 2)
        resolver.pending[1].callback(["127.0.0.2"])
        self.assertNoResult(d)
        resolver.pending[0].callback([])
        _, _, text = self.refusal(d)
        self.assertTrue(text.endswith("blocked using other.example"), text)


class AnswerTests(PolicyTestCase):
    def test_codes_filter(self) -> None:
        policy = self.policy(
            codes=[ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("127.0.0.8/30")]
        )
        for answer, listed in [
            ("127.0.0.2", True),
            ("127.0.0.3", False),
            ("127.0.0.10", True),
            ("127.0.0.12", False),
        ]:
            self.resolver.addresses[LISTED_NAME] = [answer]
            action = self.verdict(policy.connect(CLIENT)).action
            self.assertEqual(action, Action.REJECT if listed else Action.CONTINUE, answer)

    def test_any_code_that_matches(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.3", "127.0.0.2"]
        policy = self.policy(codes=[ipaddress.ip_network("127.0.0.2/32")])
        self.assertEqual(self.refusal(policy.connect(CLIENT))[0], 554)
        self.assertEqual(self.events[-1]["answers"], "127.0.0.2")

    def test_default_codes_are_loopback(self) -> None:
        self.assertEqual(LISTED_ANSWERS, (ipaddress.ip_network("127.0.0.0/8"),))
        # A resolver that answers a web server's address for every name.
        self.resolver.addresses[LISTED_NAME] = ["198.51.100.80"]
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)), Verdict())

    def test_error_codes_never_list(self) -> None:
        for answer in ("127.255.255.252", "127.255.255.254", "127.255.255.255"):
            self.events.clear()
            self.resolver.addresses[LISTED_NAME] = [answer]
            policy = self.policy(codes=[ipaddress.ip_network("127.0.0.0/8")])
            self.assertEqual(self.verdict(policy.connect(CLIENT)), Verdict(), answer)
            [warning] = self.warnings()
            self.assertEqual(warning["answer"], answer)

    def test_ipv6_answers_ignored(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["::ffff:127.0.0.2", "::1"]
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)), Verdict())


class FailureTests(PolicyTestCase):
    def test_temporary_error_is_not_listed(self) -> None:
        self.resolver.failing.add(LISTED_NAME)
        self.assertEqual(self.verdict(self.policy().connect(CLIENT)), Verdict())
        [warning] = self.warnings()
        self.assertEqual(warning["name"], LISTED_NAME)
        self.assertIn("SERVFAIL", warning["reason"])

    def test_one_list_failing_another_listing(self) -> None:
        self.resolver.failing.add("99.2.0.192." + OTHER_ZONE)
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.assertEqual(
            self.refusal(self.policy([OTHER_ZONE, ZONE]).connect(CLIENT)), (554, "5.7.1", BLOCKED)
        )

    def test_timeout_is_not_listed(self) -> None:
        resolver = NeverAnswers()
        policy = DNSBLPolicy(resolver, [ZONE], self.clock, log=Logger(observer=self.events.append))
        d = policy.connect(CLIENT)
        self.clock.advance(DEFAULT_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.verdict(d), Verdict())
        [pending] = resolver.pending
        self.assertTrue(pending.called)  # the lookup was cancelled
        [warning] = self.warnings()
        self.assertEqual(warning["reason"], "no answer in time")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_in_time_leaves_no_timer(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        self.refusal(self.policy(use_txt=True).connect(CLIENT))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unexpected_error_is_not_listed(self) -> None:
        class Broken(MemoryResolver):
            def lookup_address(self, host: str) -> Deferred[list[str]]:
                raise RuntimeError("bug")

        policy = DNSBLPolicy(Broken(), [ZONE], self.clock, log=Logger(observer=self.events.append))
        self.assertEqual(self.verdict(policy.connect(CLIENT)), Verdict())
        [error] = self.warnings()
        self.assertEqual(error["log_failure"].type, RuntimeError)


class TXTTests(PolicyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]

    def test_reason_from_txt(self) -> None:
        self.resolver.txt[LISTED_NAME] = ["https://bl.example/query/192.0.2.99"]
        _, _, text = self.refusal(self.policy(use_txt=True).connect(CLIENT))
        self.assertEqual(text, BLOCKED + "; https://bl.example/query/192.0.2.99")

    def test_txt_not_asked_without_use_txt(self) -> None:
        self.resolver.txt[LISTED_NAME] = ["why"]
        self.assertEqual(self.refusal(self.policy().connect(CLIENT))[2], BLOCKED)
        self.assertEqual([kind for kind, _ in self.resolver.queries], ["address"])

    def test_records_joined(self) -> None:
        self.resolver.txt[LISTED_NAME] = ["first", "", "second"]
        _, _, text = self.refusal(self.policy(use_txt=True).connect(CLIENT))
        self.assertEqual(text, BLOCKED + "; first / second")

    def test_reason_made_printable(self) -> None:
        self.resolver.txt[LISTED_NAME] = ["listed\r\n550 forged\tline \x00 caf\u00e9"]
        _, _, text = self.refusal(self.policy(use_txt=True).connect(CLIENT))
        self.assertEqual(text, BLOCKED + "; listed 550 forged line ? caf?")

    def test_long_reason_cut_to_one_reply_line(self) -> None:
        self.resolver.txt[LISTED_NAME] = ["x" * 2000]
        _, _, text = self.refusal(self.policy(use_txt=True).connect(CLIENT))
        self.assertEqual(len("554 5.7.1 " + text + "\r\n"), 512)

    def test_txt_failure_leaves_reason_out(self) -> None:
        self.resolver.failing.add((LISTED_NAME, "txt"))
        self.assertEqual(self.refusal(self.policy(use_txt=True).connect(CLIENT))[2], BLOCKED)

    def test_no_txt_record(self) -> None:
        self.assertEqual(self.refusal(self.policy(use_txt=True).connect(CLIENT))[2], BLOCKED)


class ExemptionTests(PolicyTestCase):
    def test_loopback_exempt_by_default(self) -> None:
        policy = self.policy()
        for address in ("127.0.0.2", "::1", "::ffff:127.0.0.2"):
            self.assertEqual(self.verdict(policy.connect(client(address))), Verdict())
        self.assertEqual(self.resolver.queries, [])

    def test_exempt_networks(self) -> None:
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]
        policy = self.policy(exempt=[ipaddress.ip_network("192.0.2.0/24")])
        self.assertEqual(self.verdict(policy.connect(CLIENT)), Verdict())
        self.assertEqual(self.resolver.queries, [])


class AtRcptTests(PolicyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.resolver.addresses[LISTED_NAME] = ["127.0.0.2"]

    def test_refused_at_rcpt_not_connect(self) -> None:
        policy = self.policy(at="rcpt")
        self.assertEqual(self.verdict(policy.connect(CLIENT)), Verdict())
        self.assertEqual(self.resolver.queries, [])
        self.assertEqual(
            self.refusal(policy.rcpt(CLIENT, SENDER, RECIPIENT, {})), (554, "5.7.1", BLOCKED)
        )

    def test_postmaster_let_through(self) -> None:
        policy = self.policy(at="rcpt")
        self.assertEqual(self.verdict(policy.rcpt(CLIENT, SENDER, POSTMASTER, {})), Verdict())
        self.assertEqual(self.resolver.queries, [])

    def test_postmaster_refused_when_asked(self) -> None:
        policy = self.policy(at="rcpt", allow_postmaster=False)
        self.assertEqual(self.refusal(policy.rcpt(CLIENT, SENDER, POSTMASTER, {}))[0], 554)

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            self.policy(at="mail")
        with self.assertRaises(ValueError):
            self.policy(timeout=0)


class MakerTests(SynchronousTestCase):
    def context(self, resolver: Any = None) -> ComponentContext:
        return ComponentContext(
            reactor=Clock(),
            random=random.Random(0),
            resolver=resolver if resolver is not None else MemoryResolver(),
            config=Config(),
        )

    def test_defaults(self) -> None:
        context = self.context()
        policy = dnsbl_maker.build({"zones": ["zen.spamhaus.org."]}, context)
        self.assertIsInstance(policy, DNSBLPolicy)
        self.assertEqual(policy.zones, ("zen.spamhaus.org",))
        self.assertIs(policy.resolver, context.resolver)
        self.assertIs(policy.clock, context.reactor)
        self.assertEqual(policy.at, "connect")
        self.assertEqual(policy.codes, LISTED_ANSWERS)
        self.assertEqual(policy.exempt, LOOPBACK)
        self.assertFalse(policy.use_txt)
        self.assertEqual(policy.timeout, DEFAULT_TIMEOUT)
        self.assertTrue(policy.allow_postmaster)

    def test_settings(self) -> None:
        policy = dnsbl_maker.build(
            {
                "zones": ["bl.example", "other.example"],
                "at": "rcpt",
                "codes": ["127.0.0.2", "127.0.0.4/30"],
                "exempt": ["10.0.0.0/8"],
                "use_txt": True,
                "timeout": "3s",
                "allow_postmaster": False,
            },
            self.context(),
        )
        self.assertEqual(policy.zones, ("bl.example", "other.example"))
        self.assertEqual(policy.at, "rcpt")
        self.assertEqual(
            policy.codes,
            (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("127.0.0.4/30")),
        )
        self.assertEqual(policy.exempt, (ipaddress.ip_network("10.0.0.0/8"),))
        self.assertTrue(policy.use_txt)
        self.assertEqual(policy.timeout, 3.0)
        self.assertFalse(policy.allow_postmaster)

    def test_bad_settings(self) -> None:
        for settings, key in [
            ({}, "zones"),
            ({"zones": []}, "zones"),
            ({"zones": "bl.example"}, "zones"),
            ({"zones": ["bad..zone"]}, "zones"),
            ({"zones": ["x" * 190 + ".example"]}, "zones"),
            ({"zones": [ZONE], "at": "data"}, "at"),
            ({"zones": [ZONE], "codes": ["::1"]}, "codes"),
            ({"zones": [ZONE], "use_txt": "yes"}, "use_txt"),
            ({"zones": [ZONE], "timeout": 0}, "timeout"),
        ]:
            with self.assertRaises(SettingError, msg=str(settings)) as caught:
                dnsbl_maker.build(settings, self.context())
            self.assertEqual(caught.exception.key, key)

    def test_needs_a_resolver(self) -> None:
        context = ComponentContext(reactor=Clock(), random=random.Random(0))
        with self.assertRaises(SettingError):
            dnsbl_maker.build({"zones": [ZONE]}, context)


BL_ORIGIN = "bl.test."
BL_ZONE = f"""
$TTL 300
@             SOA   ns hostmaster 1 3600 600 86400 60
@             NS    ns
ns            A     127.0.0.1
99.2.0.192    A     127.0.0.2
99.2.0.192    TXT   "Listed: see https://bl.test/192.0.2.99"
{V6_NAME.removesuffix("." + ZONE)} A 127.0.0.3
"""


class RealResolverTests(TestCase):
    """Through DNSResolver, against the nameserver of tests/routing on loopback."""

    def setUp(self) -> None:
        self.server = DNSTestServer(Zone(BL_ZONE, BL_ORIGIN))
        self.server.start()
        self.addCleanup(self.server.stop)
        resolver = DNSResolver(
            reactor,
            nameservers=[self.server.address],
            random=random.Random(5782),
            timeout=0.5,
            attempts=1,
        )
        self.policy = dnsbl_maker.build(
            {"zones": ["bl.test"], "use_txt": True},
            ComponentContext(reactor=reactor, random=random.Random(0), resolver=resolver),
        )

    async def verdict(self, address: str) -> Verdict:
        answer = self.policy.connect(client(address))
        return await answer if isinstance(answer, Deferred) else answer

    def test_listed_and_not(self) -> Deferred[None]:
        async def check() -> None:
            verdict = await self.verdict("192.0.2.99")
            self.assertEqual(verdict.action, Action.REJECT)
            assert verdict.reply is not None
            self.assertEqual(
                verdict.reply.text,
                (
                    "Service unavailable; Client host [192.0.2.99] blocked using bl.test;"
                    " Listed: see https://bl.test/192.0.2.99",
                ),
            )
            self.assertEqual((await self.verdict(V6)).action, Action.REJECT)
            # NXDOMAIN: not listed.
            self.assertEqual(await self.verdict("192.0.2.100"), Verdict())
            asked = {(name, kind) for _, name, kind in self.server.asked()}
            self.assertIn(("99.2.0.192.bl.test", "A"), asked)
            self.assertIn(("99.2.0.192.bl.test", "TXT"), asked)
            self.assertIn(("100.2.0.192.bl.test", "A"), asked)

        return Deferred.fromCoroutine(check())

    def test_refused_lookup_is_not_listed(self) -> Deferred[None]:
        # The server refuses names outside its zone, as a broken list would.
        self.policy.zones = ("elsewhere.test",)

        async def check() -> None:
            self.assertEqual(await self.verdict("192.0.2.99"), Verdict())

        return Deferred.fromCoroutine(check())

"""
The ``limits`` policy on a task.Clock: each rate, the window, exemptions,
address aggregation, the bounded table, and the table shared by the
listeners of one server.
"""

from __future__ import annotations

import gc
import ipaddress
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext, Config, ListenerConfig
from mailframe.envelope import ClientInfo
from mailframe.policies.limits import (
    RateLimitPolicy,
    RateLimits,
    RateTable,
    limits_maker,
    shared_table,
)
from mailframe.testing import ComponentMakerContract, MemoryResolver, PolicyContract
from mailframe.verdict import Action, Verdict

CLIENT = ClientInfo(address="192.0.2.1", port=4000, listener="smtp")
OTHER = ClientInfo(address="192.0.2.2", port=4000, listener="smtp")
SENDER = Mailbox("sender", "example.com")
RECIPIENT = Mailbox("rcpt", "example.net")


def client(address: str) -> ClientInfo:
    return ClientInfo(address=address, port=4000, listener="smtp")


def context(config: Any = None, clock: Clock | None = None, **fields: Any) -> ComponentContext:
    return ComponentContext(
        reactor=clock if clock is not None else Clock(),
        random=random.Random(0),
        resolver=MemoryResolver(),
        config=config,
        **fields,
    )


class LimitsContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RateLimitPolicy:
        return RateLimitPolicy(RateLimits(1, 1, 1), RateTable(Clock()))


class LimitsMakerContractTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return limits_maker

    def make_context(self) -> ComponentContext:
        return context(Config(hostname="mx.example"))


class PolicyTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []

    def policy(self, limits: RateLimits, **options: Any) -> RateLimitPolicy:
        options.setdefault("hostname", "mx.example")
        options.setdefault("log", Logger(observer=self.events.append))
        return RateLimitPolicy(limits, RateTable(self.clock), **options)

    def connects(self, policy: RateLimitPolicy, count: int, who: ClientInfo = CLIENT) -> list[Any]:
        return [policy.connect(who).action for _ in range(count)]


class ConnectionRateTests(PolicyTestCase):
    def test_over_the_limit_gets_421(self) -> None:
        policy = self.policy(RateLimits(connections=3))
        self.assertEqual(self.connects(policy, 3), [Action.CONTINUE] * 3)
        verdict = policy.connect(CLIENT)
        self.assertEqual(verdict.action, Action.TEMPFAIL)
        reply = verdict.effective_reply
        assert reply is not None
        self.assertEqual((reply.code, reply.status), (421, "4.7.0"))
        self.assertEqual(reply.text, ("mx.example Error: too many connections from 192.0.2.1",))

    def test_without_hostname(self) -> None:
        policy = self.policy(RateLimits(connections=1), hostname="")
        policy.connect(CLIENT)
        reply = policy.connect(CLIENT).effective_reply
        assert reply is not None
        self.assertEqual(reply.text, ("Error: too many connections from 192.0.2.1",))

    def test_clients_counted_apart(self) -> None:
        policy = self.policy(RateLimits(connections=1))
        self.assertEqual(policy.connect(CLIENT).action, Action.CONTINUE)
        self.assertEqual(policy.connect(OTHER).action, Action.CONTINUE)
        self.assertEqual(policy.connect(CLIENT).action, Action.TEMPFAIL)

    def test_logged_as_postfix_does(self) -> None:
        policy = self.policy(RateLimits(connections=1))
        self.connects(policy, 3)
        [first, second] = self.events
        self.assertEqual(first["log_level"].name, "warn")
        self.assertIn("Connection rate limit exceeded", first["log_format"])
        self.assertEqual(
            (first["rate"], first["address"], first["listener"]), (2, "192.0.2.1", "smtp")
        )
        self.assertEqual(second["rate"], 3)

    def test_other_hooks_do_not_count_connections(self) -> None:
        policy = self.policy(RateLimits(connections=1))
        policy.helo(CLIENT, "client.example")
        policy.mail(CLIENT, SENDER, {})
        policy.rcpt(CLIENT, SENDER, RECIPIENT, {})
        self.assertEqual(policy.connect(CLIENT).action, Action.CONTINUE)


class MessageAndRecipientRateTests(PolicyTestCase):
    def test_message_rate(self) -> None:
        policy = self.policy(RateLimits(messages=2))
        answers = [policy.mail(CLIENT, SENDER, {}) for _ in range(3)]
        self.assertEqual([a.action for a in answers[:2]], [Action.CONTINUE] * 2)
        reply = answers[2].effective_reply
        assert reply is not None
        self.assertEqual((reply.code, reply.status), (450, "4.7.1"))
        self.assertEqual(reply.text, ("Error: too much mail from 192.0.2.1",))
        self.assertIn("Message delivery request rate limit exceeded", self.events[0]["log_format"])

    def test_recipient_rate(self) -> None:
        policy = self.policy(RateLimits(recipients=2))
        answers = [policy.rcpt(CLIENT, SENDER, RECIPIENT, {}) for _ in range(3)]
        self.assertEqual([a.action for a in answers[:2]], [Action.CONTINUE] * 2)
        reply = answers[2].effective_reply
        assert reply is not None
        self.assertEqual((reply.code, reply.status), (450, "4.7.1"))
        self.assertEqual(reply.text, ("Error: too many recipients from 192.0.2.1",))
        self.assertIn("Recipient address rate limit exceeded", self.events[0]["log_format"])

    def test_counts_are_separate(self) -> None:
        policy = self.policy(RateLimits(connections=1, messages=1, recipients=1))
        self.assertEqual(policy.connect(CLIENT).action, Action.CONTINUE)
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.CONTINUE)
        self.assertEqual(policy.rcpt(CLIENT, SENDER, RECIPIENT, {}).action, Action.CONTINUE)
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.TEMPFAIL)
        self.assertEqual(policy.rcpt(CLIENT, SENDER, RECIPIENT, {}).action, Action.TEMPFAIL)

    def test_zero_is_no_limit_and_counts_nothing(self) -> None:
        table = RateTable(self.clock)
        policy = RateLimitPolicy(RateLimits(), table)
        for _ in range(1000):
            self.assertEqual(policy.connect(CLIENT).action, Action.CONTINUE)
            self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.CONTINUE)
            self.assertEqual(policy.rcpt(CLIENT, SENDER, RECIPIENT, {}).action, Action.CONTINUE)
        self.assertEqual(len(table), 0)

    def test_helo_and_end_of_data_continue(self) -> None:
        policy = self.policy(RateLimits(1, 1, 1))
        self.assertEqual(policy.helo(CLIENT, "x").action, Action.CONTINUE)
        self.assertEqual(policy.end_of_data(None, b"", None), Verdict())


class WindowTests(PolicyTestCase):
    def test_counts_start_again_after_the_period(self) -> None:
        policy = self.policy(RateLimits(connections=2, period=60))
        self.connects(policy, 2)
        self.clock.advance(59.9)
        self.assertEqual(policy.connect(CLIENT).action, Action.TEMPFAIL)
        self.clock.advance(0.1)
        self.assertEqual(self.connects(policy, 2), [Action.CONTINUE] * 2)
        self.assertEqual(policy.connect(CLIENT).action, Action.TEMPFAIL)

    def test_window_opens_at_first_event(self) -> None:
        policy = self.policy(RateLimits(messages=2, period=60))
        policy.mail(CLIENT, SENDER, {})
        self.clock.advance(50)
        policy.mail(CLIENT, SENDER, {})
        # The window opened at 0, not at 50: at 60 the count is 0 again.
        self.clock.advance(10)
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.CONTINUE)
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.CONTINUE)
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.TEMPFAIL)

    def test_refused_attempts_count(self) -> None:
        policy = self.policy(RateLimits(connections=1, period=60))
        policy.connect(CLIENT)
        for _ in range(5):
            self.clock.advance(10)
            self.assertEqual(policy.connect(CLIENT).action, Action.TEMPFAIL)
        self.clock.advance(10)
        self.assertEqual(policy.connect(CLIENT).action, Action.CONTINUE)

    def test_one_window_for_all_counts(self) -> None:
        policy = self.policy(RateLimits(connections=1, messages=1, period=60))
        policy.connect(CLIENT)
        self.clock.advance(30)
        policy.mail(CLIENT, SENDER, {})
        self.clock.advance(30)
        # Both counts began at the window's start, 60 seconds ago.
        self.assertEqual(policy.mail(CLIENT, SENDER, {}).action, Action.CONTINUE)


class ExemptionTests(PolicyTestCase):
    def test_loopback_exempt_by_default(self) -> None:
        table = RateTable(self.clock)
        policy = RateLimitPolicy(RateLimits(connections=1), table)
        for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            self.assertEqual(self.connects(policy, 3, client(address)), [Action.CONTINUE] * 3)
        self.assertEqual(len(table), 0)

    def test_exempt_networks(self) -> None:
        policy = self.policy(
            RateLimits(connections=1),
            exempt=[ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")],
        )
        self.assertEqual(self.connects(policy, 3), [Action.CONTINUE] * 3)
        self.assertEqual(self.connects(policy, 3, client("2001:db8::5")), [Action.CONTINUE] * 3)
        self.assertEqual(
            self.connects(policy, 2, client("198.51.100.1")), [Action.CONTINUE, Action.TEMPFAIL]
        )
        # Loopback is no longer exempt when the list is given.
        self.assertEqual(
            self.connects(policy, 2, client("127.0.0.1")), [Action.CONTINUE, Action.TEMPFAIL]
        )

    def test_client_without_ip_address(self) -> None:
        policy = self.policy(RateLimits(connections=1))
        for address in ("", "unix-socket"):
            self.assertEqual(self.connects(policy, 3, client(address)), [Action.CONTINUE] * 3)


class AggregationTests(PolicyTestCase):
    def test_ipv6_counted_by_prefix(self) -> None:
        policy = self.policy(RateLimits(connections=2))
        # 2001:db8::1 and 2001:db8::fff:1 share their first 84 bits.
        self.assertEqual(policy.connect(client("2001:db8::1")).action, Action.CONTINUE)
        self.assertEqual(policy.connect(client("2001:db8::fff:1")).action, Action.CONTINUE)
        verdict = policy.connect(client("2001:db8::2"))
        self.assertEqual(verdict.action, Action.TEMPFAIL)
        reply = verdict.effective_reply
        assert reply is not None
        self.assertEqual(reply.text, ("mx.example Error: too many connections from 2001:db8::2",))
        # Another /84 is another client.
        self.assertEqual(policy.connect(client("2001:db8:0:0:1::1")).action, Action.CONTINUE)

    def test_prefixes(self) -> None:
        policy = self.policy(RateLimits(connections=1), ipv4_prefix=24, ipv6_prefix=128)
        self.assertEqual(policy.key(client("192.0.2.77")), "192.0.2.0/24")
        self.assertEqual(policy.key(client("2001:DB8::1")), "2001:db8::1")
        self.assertEqual(policy.key(client("::ffff:192.0.2.77")), "192.0.2.0/24")
        self.assertEqual(policy.connect(client("192.0.2.1")).action, Action.CONTINUE)
        self.assertEqual(policy.connect(client("192.0.2.200")).action, Action.TEMPFAIL)

    def test_default_keys(self) -> None:
        policy = self.policy(RateLimits(connections=1))
        self.assertEqual(policy.key(client("192.0.2.77")), "192.0.2.77")
        self.assertEqual(policy.key(client("2001:db8::abcd:1")), "2001:db8::/84")

    def test_bad_prefixes(self) -> None:
        with self.assertRaises(ValueError):
            self.policy(RateLimits(), ipv4_prefix=33)
        with self.assertRaises(ValueError):
            self.policy(RateLimits(), ipv6_prefix=129)


class RateTableTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        clock = Clock()
        table = RateTable(clock, max_clients=3)
        for key in ("a", "b", "c", "d"):
            table.count(key, 60).connections += 1
            clock.advance(1)
        self.assertEqual(len(table), 3)
        self.assertNotIn("a", table)
        # A client seen again goes to the end, and is evicted last.
        table.count("b", 60)
        table.count("e", 60)
        self.assertEqual([k for k in "abcde" if k in table], ["b", "d", "e"])

    def test_evicted_client_starts_afresh(self) -> None:
        clock = Clock()
        table = RateTable(clock, max_clients=1)
        table.count("a", 60).messages += 5
        table.count("b", 60)
        self.assertEqual(table.count("a", 60).messages, 0)

    def test_idle_clients_dropped(self) -> None:
        clock = Clock()
        table = RateTable(clock)
        table.count("a", 60)
        clock.advance(30)
        table.count("b", 60)
        clock.advance(30)
        table.count("c", 60)
        self.assertEqual([k for k in "abc" if k in table], ["b", "c"])
        clock.advance(61)
        table.count("d", 60)
        self.assertEqual([k for k in "abcd" if k in table], ["d"])

    def test_many_clients_in_bounded_memory(self) -> None:
        clock = Clock()
        table = RateTable(clock, max_clients=100)
        policy = RateLimitPolicy(RateLimits(connections=1), table)
        for n in range(5000):
            policy.connect(client(str(ipaddress.IPv4Address(0xC6336400 + n))))
        self.assertEqual(len(table), 100)

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            RateTable(Clock(), max_clients=0)
        with self.assertRaises(ValueError):
            RateLimits(connections=-1)
        with self.assertRaises(ValueError):
            RateLimits(period=0)


class MakerTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = Config(hostname="mx.example")
        policy = limits_maker.build({}, context(config))
        self.assertIsInstance(policy, RateLimitPolicy)
        self.assertEqual(policy.limits, RateLimits(60, 100, 500, 60.0))
        self.assertEqual(policy.exempt, config.connection_limit_exemptions)
        self.assertEqual(policy.hostname, "mx.example")
        self.assertEqual((policy.ipv4_prefix, policy.ipv6_prefix), (32, 84))

    def test_settings(self) -> None:
        clock = Clock()
        policy = limits_maker.build(
            {
                "connection_rate": 2,
                "message_rate": 0,
                "recipient_rate": 7,
                "rate_period": "5m",
                "exempt": ["10.0.0.0/8"],
                "ipv4_prefix": 24,
                "ipv6_prefix": 64,
            },
            context(clock=clock),
        )
        self.assertEqual(policy.limits, RateLimits(2, 0, 7, 300.0))
        self.assertEqual(policy.exempt, (ipaddress.ip_network("10.0.0.0/8"),))
        self.assertEqual((policy.ipv4_prefix, policy.ipv6_prefix), (24, 64))
        self.assertIs(policy.table.clock, clock)
        self.assertEqual(policy.hostname, "")

    def test_exempt_follows_the_server(self) -> None:
        config = Config(connection_limit_exemptions=(ipaddress.ip_network("192.0.2.0/24"),))
        policy = limits_maker.build({"connection_rate": 1}, context(config))
        self.assertEqual([policy.connect(CLIENT).action for _ in range(3)], [Action.CONTINUE] * 3)
        self.assertEqual(policy.connect(client("127.0.0.1")).action, Action.CONTINUE)
        self.assertEqual(policy.connect(client("127.0.0.1")).action, Action.TEMPFAIL)

    def test_bad_settings(self) -> None:
        for settings, key in [
            ({"connection_rate": -1}, "connection_rate"),
            ({"message_rate": "many"}, "message_rate"),
            ({"rate_period": 0}, "rate_period"),
            ({"exempt": ["not a network"]}, "exempt"),
            ({"ipv4_prefix": 33}, "ipv4_prefix"),
            ({"ipv6_prefix": 129}, "ipv6_prefix"),
            ({"burst": 1}, "burst"),
        ]:
            with self.assertRaises(SettingError) as caught:
                limits_maker.build(settings, context())
            self.assertEqual(caught.exception.key, key)

    def test_listeners_of_one_server_share_counts(self) -> None:
        config = Config()
        clock = Clock()
        smtp = limits_maker.build(
            {"connection_rate": 1}, context(config, clock, listener=ListenerConfig("tcp:25"))
        )
        submission = limits_maker.build(
            {"connection_rate": 1}, context(config, clock, listener=ListenerConfig("tcp:587"))
        )
        self.assertIs(smtp.table, submission.table)
        self.assertEqual(smtp.connect(CLIENT).action, Action.CONTINUE)
        self.assertEqual(submission.connect(CLIENT).action, Action.TEMPFAIL)

    def test_another_server_counts_apart(self) -> None:
        first = limits_maker.build({}, context(Config()))
        second = limits_maker.build({}, context(Config()))
        self.assertIsNot(first.table, second.table)
        self.assertIsNot(
            limits_maker.build({}, context()).table, limits_maker.build({}, context()).table
        )

    def test_table_goes_with_its_config(self) -> None:
        from mailframe.policies import limits

        config = Config()
        table = shared_table(config, Clock())
        self.assertIs(shared_table(config, Clock()), table)
        self.assertIn(id(config), limits._TABLES)
        key = id(config)
        del config
        gc.collect()
        self.assertNotIn(key, limits._TABLES)

"""
Contract suites: mixins of ``test_*`` methods that any implementation of a
contract runs. Combine one with a :class:`unittest.TestCase` subclass (for
example :class:`twisted.trial.unittest.SynchronousTestCase`) and supply the
``make_*`` method it names.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.envelope import ClientInfo, DeliveryStatus, Route
from mailframe.interfaces import (
    IComponentMaker,
    IDeliveryTransport,
    IPolicy,
    IResolver,
    IRouter,
)
from mailframe.testing._fakes import envelope
from mailframe.verdict import Verdict

__all__ = [
    "ComponentMakerContract",
    "PolicyContract",
    "ResolverContract",
    "RouterContract",
    "TransportContract",
]


class _Base:
    """Helpers shared by the suites; the test case supplies the asserts."""

    assertEqual: Any
    assertIsInstance: Any
    assertTrue: Any
    successResultOf: Any

    def resolve(self, value: Any) -> Any:
        """The value of *value*, waiting on a Deferred that has fired."""
        if isinstance(value, Deferred):
            return self.successResultOf(value)
        return value


class PolicyContract(_Base):
    """Needs ``make_policy()``; every hook answers a Verdict (or Deferred)."""

    def make_policy(self) -> Any:
        raise NotImplementedError

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IPolicy, self.make_policy()))

    def test_hooks_answer_verdicts(self) -> None:
        policy = self.make_policy()
        client = ClientInfo(address="192.0.2.1", port=4000, helo="client.example")
        sender = Mailbox("sender", "example.com")
        recipient = Mailbox("postmaster", "example.com")
        answers = [
            policy.connect(client),
            policy.helo(client, "client.example"),
            policy.mail(client, sender, {}),
            policy.rcpt(client, sender, recipient, {}),
            policy.end_of_data(envelope("sender@example.com", "postmaster@example.com"),
                               b"Subject: hi\r\n\r\n", None),
        ]
        for answer in answers:
            self.assertIsInstance(self.resolve(answer), Verdict)


class RouterContract(_Base):
    """
    Needs ``make_router()`` and ``sample_recipient()``; routes are lists of
    ``(recipient, original, Route)`` with the original preserved.
    """

    def make_router(self) -> Any:
        raise NotImplementedError

    def sample_recipient(self) -> Mailbox:
        return Mailbox("alice", "example.com")

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IRouter, self.make_router()))

    def test_route_shape(self) -> None:
        recipient = self.sample_recipient()
        routes = self.resolve(self.make_router().route(envelope(), recipient))
        self.assertTrue(routes, "a router must answer at least one route")
        for final, original, route in routes:
            self.assertIsInstance(final, Mailbox)
            self.assertEqual(original, recipient)
            self.assertIsInstance(route, Route)


class TransportContract(_Base):
    """
    Needs ``make_transport()`` and ``sample_delivery()`` returning
    ``(entry, recipients, route)``; the result has one RecipientResult per
    recipient, in order.
    """

    def make_transport(self) -> Any:
        raise NotImplementedError

    def sample_delivery(self) -> Any:
        raise NotImplementedError

    def wait(self, d: Any) -> Any:
        """Overridable: how to wait on the transport's Deferred."""
        return self.resolve(d)

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IDeliveryTransport, self.make_transport()))

    def test_one_result_per_recipient(self) -> None:
        entry, recipients, route = self.sample_delivery()
        results = self.wait(ensureDeferred(self._deliver(entry, recipients, route)))
        self.assertEqual([r.recipient for r in results], [r for r, _ in recipients])
        for result in results:
            self.assertIsInstance(result.status, DeliveryStatus)

    async def _deliver(self, entry: Any, recipients: Any, route: Any) -> Any:
        return await self.make_transport().deliver(entry, recipients, route)


class ResolverContract(_Base):
    """Needs ``make_resolver()``; a name that does not exist gives ``[]``."""

    def make_resolver(self) -> Any:
        raise NotImplementedError

    def missing_name(self) -> str:
        return "nonexistent.invalid"

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.make_resolver()))

    def test_missing_names_are_empty(self) -> None:
        resolver = self.make_resolver()
        name = self.missing_name()
        for lookup in (resolver.lookup_mx, resolver.lookup_address, resolver.lookup_txt):
            self.assertEqual(self.resolve(lookup(name)), [])


class ComponentMakerContract(_Base):
    """Needs ``make_maker()`` and ``make_context()``."""

    def make_maker(self) -> Any:
        raise NotImplementedError

    def make_context(self) -> Any:
        raise NotImplementedError

    def test_provides(self) -> None:
        maker = self.make_maker()
        self.assertTrue(verifyObject(IComponentMaker, maker))
        self.assertTrue(maker.kind in ("policy", "router", "transport", "store"))
        self.assertTrue(maker.name and maker.description)

    def test_unknown_setting_refused(self) -> None:
        maker = self.make_maker()
        try:
            maker.build({"no-such-setting-anywhere": 1}, self.make_context())
        except (ValueError, KeyError, TypeError):
            return
        raise AssertionError("a maker must refuse settings its schema does not list")

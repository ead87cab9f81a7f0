"""
Contract suites: mixins of ``test_*`` methods that any implementation of a
contract runs. Combine one with a :class:`unittest.TestCase` subclass (for
example :class:`twisted.trial.unittest.SynchronousTestCase`) and supply the
``make_*`` method it names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Coroutine
from typing import Any, TypeVar
from unittest import SkipTest

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
from mailframe.routing._dnserrors import DNSNameNotFound, DNSTemporaryError
from mailframe.testing._fakes import envelope
from mailframe.verdict import Verdict

__all__ = [
    "ComponentMakerContract",
    "PolicyContract",
    "ResolverContract",
    "RouterContract",
    "TransportContract",
]

_V = TypeVar("_V")


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
    """
    Needs ``make_resolver()``. The other hooks name what the resolver knows;
    a hook that returns ``None`` (the default) skips the tests that need it.

    The tests wait on lookups with :meth:`wait`, which by default takes the
    result of a Deferred that has already fired. A resolver that goes to the
    network runs the suite in a :class:`twisted.trial.unittest.TestCase`
    and overrides :meth:`wait` to return the Deferred, which trial waits on.
    """

    fail: Any

    def make_resolver(self) -> Any:
        raise NotImplementedError

    def wait(self, d: Deferred[None]) -> Any:
        """Overridable: how a test waits on its Deferred."""
        self.successResultOf(d)
        return None

    def mx_name(self) -> tuple[str, list[tuple[int, str]]] | None:
        """A domain with MX records, and those records, in any order."""
        return None

    def null_mx_name(self) -> str | None:
        """A domain whose only MX record is the null MX of RFC 7505."""
        return None

    def alias_name(self) -> tuple[str, list[tuple[int, str]]] | None:
        """A name whose CNAME leads to a domain with MX records, and those records."""
        return None

    def address_name(self) -> tuple[str, list[str]] | None:
        """A host with both IPv6 and IPv4 addresses, and those addresses."""
        return None

    def txt_name(self) -> tuple[str, list[str]] | None:
        """A name with TXT records, and their strings, in any order."""
        return None

    def nodata_name(self) -> str | None:
        """A name that exists with no MX, AAAA, A or TXT records."""
        return None

    def nxdomain_name(self) -> str | None:
        """A name that does not exist."""
        return None

    def failing_name(self) -> str | None:
        """A name whose lookups fail for now (SERVFAIL)."""
        return None

    def _need(self, value: _V | None, hook: str) -> _V:
        if value is None:
            raise SkipTest(f"{hook}() names nothing for this resolver")
        return value

    def _checked(self, check: Coroutine[Any, Any, None]) -> Any:
        return self.wait(Deferred.fromCoroutine(check))

    def test_provides(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.make_resolver()))

    def test_mx(self) -> Any:
        name, expected = self._need(self.mx_name(), "mx_name")
        return self._checked(self._check_mx(name, expected))

    def test_mx_any_case_and_trailing_dot(self) -> Any:
        name, expected = self._need(self.mx_name(), "mx_name")
        return self._checked(self._check_mx(name.upper() + ".", expected))

    def test_null_mx(self) -> Any:
        name = self._need(self.null_mx_name(), "null_mx_name")
        return self._checked(self._check_mx(name, [(0, ".")]))

    def test_cname_followed(self) -> Any:
        name, expected = self._need(self.alias_name(), "alias_name")
        return self._checked(self._check_mx(name, expected))

    async def _check_mx(self, name: str, expected: list[tuple[int, str]]) -> None:
        answer = await self.make_resolver().lookup_mx(name)
        self.assertIsInstance(answer, list)
        for preference, host in answer:
            self.assertIsInstance(preference, int)
            self.assertIsInstance(host, str)
            self.assertTrue(host == "." or not host.endswith("."), host)
        self.assertEqual(sorted(answer), sorted(expected))

    def test_addresses(self) -> Any:
        name, expected = self._need(self.address_name(), "address_name")
        return self._checked(self._check_addresses(name, expected))

    async def _check_addresses(self, name: str, expected: list[str]) -> None:
        answer = await self.make_resolver().lookup_address(name)
        self.assertIsInstance(answer, list)
        parsed = [ipaddress.ip_address(address) for address in answer]
        self.assertEqual(sorted(map(str, parsed)), sorted(answer))
        self.assertEqual(set(parsed), {ipaddress.ip_address(a) for a in expected})
        versions = [address.version for address in parsed]
        self.assertEqual(versions, sorted(versions, reverse=True), "IPv6 comes before IPv4")

    def test_txt(self) -> Any:
        name, expected = self._need(self.txt_name(), "txt_name")
        return self._checked(self._check_txt(name, expected))

    async def _check_txt(self, name: str, expected: list[str]) -> None:
        answer = await self.make_resolver().lookup_txt(name)
        self.assertIsInstance(answer, list)
        for text in answer:
            self.assertIsInstance(text, str)
        self.assertEqual(sorted(answer), sorted(expected))

    def test_answers_are_fresh_lists(self) -> Any:
        name, _ = self._need(self.mx_name(), "mx_name")
        return self._checked(self._check_fresh(name))

    async def _check_fresh(self, name: str) -> None:
        resolver = self.make_resolver()
        first = await resolver.lookup_mx(name)
        kept = list(first)
        first.clear()
        self.assertEqual(sorted(await resolver.lookup_mx(name)), sorted(kept))

    def test_nodata_is_empty(self) -> Any:
        name = self._need(self.nodata_name(), "nodata_name")
        return self._checked(self._check_nodata(name))

    async def _check_nodata(self, name: str) -> None:
        resolver = self.make_resolver()
        for lookup in (resolver.lookup_mx, resolver.lookup_address, resolver.lookup_txt):
            self.assertEqual(await lookup(name), [])

    def test_nxdomain_fails(self) -> Any:
        name = self._need(self.nxdomain_name(), "nxdomain_name")
        return self._checked(self._check_fails(name, DNSNameNotFound, "5.1.2"))

    def test_temporary_failure(self) -> Any:
        name = self._need(self.failing_name(), "failing_name")
        return self._checked(self._check_fails(name, DNSTemporaryError, "4.4.3"))

    async def _check_fails(self, name: str, error: type[Exception], status: str) -> None:
        resolver = self.make_resolver()
        for lookup in (resolver.lookup_mx, resolver.lookup_address, resolver.lookup_txt):
            try:
                answer = await lookup(name)
            except error as failure:
                reply = getattr(failure, "reply", None)
                self.assertEqual(reply.status if reply is not None else None, status)
            else:
                self.fail(f"{lookup.__name__}({name!r}) answered {answer!r}")


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

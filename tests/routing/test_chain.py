"""
The ``chain`` router: order, asynchronous routers, failures, and
validation by the router that decides.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext
from mailframe.envelope import Route
from mailframe.interfaces import IRecipientValidator, IRouter
from mailframe.reply import Reply
from mailframe.routing.chain import ChainRouter, IPartialRouter, chain_maker
from mailframe.routing.routers import MXRouter
from mailframe.routing.table import TableRouter
from mailframe.testing import ComponentMakerContract, RouterContract, StaticRouter, envelope

RouteList = list[tuple[Mailbox, Mailbox, Route]]


@implementer(IRouter)
class ScriptedRouter:
    """
    Answers each route with the next of *answers*: a list of routes for the
    recipient (empty for "not mine"), a Deferred the test fires, or an
    exception. Records the recipients it was asked about.
    """

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[Mailbox] = []

    def route(self, envelope: Any, recipient: Mailbox) -> Any:
        self.asked.append(recipient)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Deferred):
            return answer
        return succeed([(recipient, recipient, route) for route in answer])


@implementer(IRouter, IRecipientValidator)
class ValidatingRouter(StaticRouter):
    """A static router whose validator answers *reply* (or a Deferred)."""

    def __init__(self, route: Route, reply: Any = None) -> None:
        super().__init__({}, route)
        self.reply = reply
        self.validated: list[Mailbox] = []

    def validate(self, recipient: Mailbox) -> Any:
        self.validated.append(recipient)
        return self.reply


@implementer(IRouter, IPartialRouter, IRecipientValidator)
class PartialRouter(ValidatingRouter):
    """Decides only the domains it was given; the answer may be a Deferred."""

    def __init__(self, domains: Any, route: Route, reply: Any = None) -> None:
        super().__init__(route, reply)
        self.domains = domains

    def decides(self, recipient: Mailbox) -> Any:
        if isinstance(self.domains, Deferred):
            return self.domains
        return recipient.domain in self.domains


def first(router: ChainRouter, test: SynchronousTestCase, address: str) -> Route:
    [(_, _, route)] = test.successResultOf(router.route(envelope(), Mailbox.parse(address)))
    return route


class ChainContractTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> ChainRouter:
        return ChainRouter([TableRouter({"example.net": "smtp:[relay.example]"}), MXRouter()])

    def test_provides_the_validator(self) -> None:
        self.assertTrue(verifyObject(IRecipientValidator, self.make_router()))


class ChainRouteTests(SynchronousTestCase):
    def test_first_that_decides_wins(self) -> None:
        one, two, three = (ScriptedRouter([]), ScriptedRouter([Route("b")]),
                           ScriptedRouter([Route("c")]))
        router = ChainRouter([one, two, three])
        self.assertEqual(first(router, self, "x@example.com"), Route("b"))
        self.assertEqual([len(r.asked) for r in (one, two, three)], [1, 1, 0])

    def test_table_then_mx(self) -> None:
        router = ChainRouter([
            TableRouter({"example.com": "maildir:/srv/mail", "spam.example": "reject"}),
            MXRouter(),
        ])
        self.assertEqual(first(router, self, "a@example.com"),
                         Route("maildir", {"directory": "/srv/mail/a"}))
        self.assertEqual(first(router, self, "a@example.org"),
                         Route("smtp", {"domain": "example.org"}))
        self.assertIsNotNone(first(router, self, "a@spam.example").reject)

    def test_expansions_pass_through(self) -> None:
        router = ChainRouter([TableRouter({"a@example.com": "alias:b@example.org,c@example.org",
                                           "example.org": "smtp"})])
        answer = self.successResultOf(router.route(envelope(), Mailbox.parse("a@example.com")))
        self.assertEqual([(str(f), str(o)) for f, o, _ in answer],
                         [("b@example.org", "a@example.com"), ("c@example.org", "a@example.com")])

    def test_none_decides(self) -> None:
        router = ChainRouter([ScriptedRouter([]), ScriptedRouter([])])
        route = first(router, self, "x@example.com")
        assert route.reject is not None
        self.assertEqual((route.reject.code, route.reject.status), (550, "5.4.4"))
        self.assertIn("<x@example.com>", route.reject.text[0])

    def test_asynchronous_routers_in_order(self) -> None:
        later_nothing: Deferred[RouteList] = Deferred()
        later_route: Deferred[RouteList] = Deferred()
        one, two = ScriptedRouter(later_nothing), ScriptedRouter(later_route)
        three = ScriptedRouter([Route("c")])
        router = ChainRouter([one, two, three])
        recipient = Mailbox.parse("x@example.com")
        d = router.route(envelope(), recipient)
        self.assertNoResult(d)
        self.assertEqual([len(r.asked) for r in (one, two, three)], [1, 0, 0])
        later_nothing.callback([])
        self.assertNoResult(d)
        self.assertEqual([len(r.asked) for r in (one, two, three)], [1, 1, 0])
        later_route.callback([(recipient, recipient, Route("b"))])
        self.assertEqual(self.successResultOf(d), [(recipient, recipient, Route("b"))])
        self.assertEqual(len(three.asked), 0)

    def test_failure_stops_the_chain(self) -> None:
        later: Deferred[RouteList] = Deferred()
        after = ScriptedRouter([Route("c")])
        router = ChainRouter([ScriptedRouter(later), after])
        d = router.route(envelope(), Mailbox.parse("x@example.com"))
        later.errback(RuntimeError("directory down"))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(after.asked, [])

    def test_synchronous_exception(self) -> None:
        router = ChainRouter([ScriptedRouter(RuntimeError("bug")), ScriptedRouter([Route("c")])])
        self.failureResultOf(router.route(envelope(), Mailbox.parse("x@example.com")),
                             RuntimeError)

    def test_needs_a_router(self) -> None:
        self.assertRaises(ValueError, ChainRouter, [])

    def test_nested_chain(self) -> None:
        inner = ChainRouter([ScriptedRouter([])])
        router = ChainRouter([inner, ScriptedRouter([Route("never")])])
        self.assertEqual(first(router, self, "x@example.com").reject is not None, True)

    def test_reload_reaches_the_routers(self) -> None:
        reloaded: list[str] = []

        class Reloading(StaticRouter):
            def reload(self) -> None:
                reloaded.append("yes")

        ChainRouter([Reloading({}), MXRouter()]).reload()
        self.assertEqual(reloaded, ["yes"])


class ChainValidateTests(SynchronousTestCase):
    def validate(self, router: ChainRouter, address: str) -> Reply | None:
        reply: Reply | None = self.successResultOf(router.validate(Mailbox.parse(address)))
        return reply

    def test_partial_router_that_does_not_decide_is_skipped(self) -> None:
        refused = Reply(550, "5.1.1", "Unknown")
        table = PartialRouter({"example.com"}, Route("a"), refused)
        later = ValidatingRouter(Route("b"), None)
        router = ChainRouter([table, later])
        self.assertEqual(self.validate(router, "x@example.com"), refused)
        self.assertEqual(later.validated, [])
        self.assertIsNone(self.validate(router, "x@example.org"))
        self.assertEqual([str(r) for r in table.validated], ["x@example.com"])
        self.assertEqual([str(r) for r in later.validated], ["x@example.org"])

    def test_first_deciding_router_answers_even_when_it_accepts(self) -> None:
        refused = Reply(550, "5.1.1", "Unknown")
        router = ChainRouter([PartialRouter({"example.com"}, Route("a"), None),
                              ValidatingRouter(Route("b"), refused)])
        self.assertIsNone(self.validate(router, "x@example.com"))
        self.assertEqual(self.validate(router, "x@example.org"), refused)

    def test_router_without_validator_accepts_and_ends_the_walk(self) -> None:
        refused = Reply(550, "5.1.1", "Unknown")
        after = ValidatingRouter(Route("b"), refused)
        router = ChainRouter([MXRouter(), after])
        self.assertIsNone(self.validate(router, "x@example.com"))
        self.assertEqual(after.validated, [])

    def test_none_decides_is_refused(self) -> None:
        router = ChainRouter([TableRouter({"example.com": "smtp"})])
        reply = self.validate(router, "x@example.org")
        self.assertEqual((reply.code, reply.status) if reply else None, (550, "5.4.4"))
        self.assertIsNone(self.validate(router, "x@example.com"))

    def test_table_refusals(self) -> None:
        router = ChainRouter([
            TableRouter({"gone@example.com": "reject:550 5.1.1 Gone",
                         "a@example.com": "alias:b@example.com",
                         "b@example.com": "alias:a@example.com"}),
            MXRouter(),
        ])
        self.assertEqual(self.validate(router, "gone@example.com"), Reply(550, "5.1.1", "Gone"))
        reply = self.validate(router, "a@example.com")
        self.assertEqual(reply.status if reply else None, "5.4.6")
        self.assertIsNone(self.validate(router, "other@example.com"))

    def test_asynchronous_decides_and_validate(self) -> None:
        decided: Deferred[bool] = Deferred()
        answer: Deferred[Reply | None] = Deferred()
        router = ChainRouter([PartialRouter(decided, Route("a"), answer), MXRouter()])
        d = router.validate(Mailbox.parse("x@example.com"))
        self.assertNoResult(d)
        decided.callback(True)
        self.assertNoResult(d)
        refused = Reply(550, "5.7.1", "No")
        answer.callback(refused)
        self.assertEqual(self.successResultOf(d), refused)

    def test_validator_failure_fails(self) -> None:
        router = ChainRouter([ValidatingRouter(Route("a"), fail(RuntimeError("down")))])
        self.failureResultOf(router.validate(Mailbox.parse("x@example.com")), RuntimeError)


class ChainMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> object:
        return chain_maker

    def make_context(self) -> ComponentContext:
        self.built: list[tuple[str, str]] = []
        routers = {"table": TableRouter({"example.com": "smtp:[relay.example]"}),
                   "mx": MXRouter()}

        def component(kind: str, name: str) -> Any:
            self.built.append((kind, name))
            return routers[name]

        return ComponentContext(reactor=Clock(), random=random.Random(1), component=component)

    def test_builds_through_the_context(self) -> None:
        router = chain_maker.build({"routers": ["table", "mx"]}, self.make_context())
        self.assertEqual(self.built, [("router", "table"), ("router", "mx")])
        self.assertEqual(first(router, self, "x@example.com"),
                         Route("smtp", {"nexthop": "relay.example:25"}))
        self.assertEqual(first(router, self, "x@example.org"),
                         Route("smtp", {"domain": "example.org"}))

    def test_settings_checked(self) -> None:
        for settings, key in (({}, "routers"), ({"routers": []}, "routers"),
                              ({"routers": "table"}, "routers"),
                              ({"routers": ["table", "chain"]}, "routers")):
            error = self.assertRaises(SettingError, chain_maker.build, settings,
                                      self.make_context())
            self.assertEqual(error.key, key)

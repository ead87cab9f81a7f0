"""
The ``table`` router: keys and their precedence, every route spec, the
file format and its errors, reloading, and aliases.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext
from mailframe.envelope import Route
from mailframe.interfaces import IRecipientValidator, IRouter
from mailframe.reply import Reply
from mailframe.routing.chain import IPartialRouter
from mailframe.routing.routers import MXRouter
from mailframe.routing.table import (
    MAX_ALIAS_ADDRESSES,
    MAX_ALIAS_DEPTH,
    RELOAD_CHECK_INTERVAL,
    RouteSpec,
    TableError,
    TableRouter,
    parse_route_spec,
    table_maker,
)
from mailframe.testing import ComponentMakerContract, RouterContract, StaticRouter, envelope

PRECEDENCE = {
    "alice@example.com": "smtp:[a.example]",
    "example.com": "smtp:[b.example]",
    ".example.com": "smtp:[c.example]",
    ".sub.example.com": "smtp:[d.example]",
    "*": "smtp:[e.example]",
}


def temp_file(test: SynchronousTestCase) -> str:
    """A path in a directory removed after *test* (trial's mktemp() is relative to the cwd)."""
    directory = tempfile.mkdtemp(prefix="mailframe-table-")
    test.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "table")


def mailbox(text: str) -> Mailbox:
    return Mailbox.parse(text, utf8=True)


def routes(router: Any, address: str, test: SynchronousTestCase) -> list[tuple[str, str, Route]]:
    """The routes of *address*, with the addresses as text."""
    answer = test.successResultOf(router.route(envelope(), mailbox(address)))
    return [(str(final), str(original), route) for final, original, route in answer]


def route_of(router: Any, address: str, test: SynchronousTestCase) -> Route:
    """The one route of *address*, which the router must not expand."""
    [(final, original, route)] = routes(router, address, test)
    test.assertEqual((final, original), (address, address))
    return route


def nexthop(host: str) -> Route:
    return Route("smtp", {"nexthop": host})


def status(reply: Reply | None) -> tuple[int, str | None] | None:
    return None if reply is None else (reply.code, reply.status)


class TableContractTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> TableRouter:
        return TableRouter({"example.com": "smtp"})

    def test_provides_the_validator_and_partial_router(self) -> None:
        router = self.make_router()
        self.assertTrue(verifyObject(IRouter, router))
        self.assertTrue(verifyObject(IRecipientValidator, router))
        self.assertTrue(verifyObject(IPartialRouter, router))


class KeyTests(SynchronousTestCase):
    def test_precedence(self) -> None:
        router = TableRouter(PRECEDENCE)
        cases = {
            "alice@example.com": "a.example:25",
            "ALICE@Example.COM": "a.example:25",
            "bob@example.com": "b.example:25",
            "x@sub.example.com": "c.example:25",
            "x@deep.er.example.com": "c.example:25",
            "x@a.sub.example.com": "d.example:25",
            "x@b.a.sub.example.com": "d.example:25",
            "x@example.org": "e.example:25",
            "x@notexample.com": "e.example:25",
            "alice@sub.example.com": "c.example:25",
        }
        for address, host in cases.items():
            self.assertEqual(route_of(router, address, self), nexthop(host), address)

    def test_unknown_is_not_decided(self) -> None:
        router = TableRouter({k: v for k, v in PRECEDENCE.items() if k != "*"})
        recipient = mailbox("x@example.org")
        self.assertEqual(self.successResultOf(router.route(envelope(), recipient)), [])
        self.assertFalse(router.decides(recipient))
        self.assertIsNone(self.successResultOf(router.validate(recipient)))
        self.assertTrue(router.decides(mailbox("x@example.com")))

    def test_postmaster_without_domain_is_not_decided(self) -> None:
        router = TableRouter({"*": "reject"})
        postmaster = Mailbox("postmaster", "")
        self.assertEqual(self.successResultOf(router.route(envelope(), postmaster)), [])
        self.assertFalse(router.decides(postmaster))
        self.assertIsNone(self.successResultOf(router.validate(postmaster)))

    def test_international_domains_by_a_label(self) -> None:
        router = TableRouter({"bücher.example": "smtp:[a.example]",
                              ".xn--bcher-kva.example": "smtp:[b.example]"})
        self.assertEqual(route_of(router, "x@xn--bcher-kva.example", self),
                         nexthop("a.example:25"))
        self.assertEqual(route_of(router, "x@Bücher.example", self), nexthop("a.example:25"))
        self.assertEqual(route_of(router, "x@sub.bücher.example", self), nexthop("b.example:25"))

    def test_address_literal_domain(self) -> None:
        router = TableRouter({"[192.0.2.1]": "smtp:[a.example]", "*": "smtp:[b.example]"})
        self.assertEqual(route_of(router, "x@[192.0.2.1]", self), nexthop("a.example:25"))
        self.assertEqual(route_of(router, "x@[192.0.2.2]", self), nexthop("b.example:25"))

    def test_address_keys_with_literals_and_quotes(self) -> None:
        router = TableRouter({"Bob@[192.0.2.1]": "smtp:[a.example]",
                              '"john doe"@example.com': "smtp:[b.example]"})
        self.assertEqual(route_of(router, "bob@[192.0.2.1]", self), nexthop("a.example:25"))
        recipient = Mailbox("John Doe", "example.com")
        [(_, _, route)] = self.successResultOf(router.route(envelope(), recipient))
        self.assertEqual(route, nexthop("b.example:25"))

    def test_bad_keys(self) -> None:
        for key in ("user@", "@example.com", ".", "..example.com", "*.example.com",
                    "exa mple.com", "example.com.", "a@b@c", ".[192.0.2.1]", "",
                    "a b@example.com", "x@[bad"):
            error = self.assertRaises(TableError, TableRouter, {key: "smtp"})
            self.assertEqual(error.setting, "map")
            self.assertIn(repr(key), str(error))


class RouteSpecTests(SynchronousTestCase):
    def test_smtp(self) -> None:
        router = TableRouter({
            "a.example": "smtp",
            "b.example": "SMTP:",
            "c.example": "smtp:relay.example",
            "d.example": "smtp:relay.example:587",
            "e.example": "smtp:[relay.example]:2525",
            "f.example": "smtp:[2001:db8::25]:25",
            "g.example": "smtp:[192.0.2.25]",
        })
        self.assertEqual(route_of(router, "x@A.example", self),
                         Route("smtp", {"domain": "a.example"}))
        self.assertEqual(route_of(router, "x@b.example", self),
                         Route("smtp", {"domain": "b.example"}))
        expected = {
            "c": "relay.example:25", "d": "relay.example:587", "e": "relay.example:2525",
            "f": "[2001:db8::25]:25", "g": "192.0.2.25:25",
        }
        for label, host in expected.items():
            self.assertEqual(route_of(router, f"x@{label}.example", self), nexthop(host))

    def test_smtp_for_a_wildcard_routes_by_the_recipients_domain(self) -> None:
        router = TableRouter({".example.com": "smtp", "*": "smtp"})
        self.assertEqual(route_of(router, "x@Sub.Example.com", self),
                         Route("smtp", {"domain": "sub.example.com"}))
        self.assertEqual(route_of(router, "x@bücher.example", self),
                         Route("smtp", {"domain": "xn--bcher-kva.example"}))

    def test_lmtp_pipe_and_third_party(self) -> None:
        router = TableRouter({
            "lmtp.example": "lmtp:unix:path=/run/dovecot/lmtp",
            "tcp.example": "lmtp:tcp:host=127.0.0.1:port=24",
            "pipe.example": "pipe:/usr/bin/procmail -d ${user}",
            "acme.example": "acme:queue 7 # not a comment",
            "empty.example": "acme:",
        })
        self.assertEqual(route_of(router, "x@lmtp.example", self),
                         Route("lmtp", {"endpoint": "unix:path=/run/dovecot/lmtp"}))
        self.assertEqual(route_of(router, "x@tcp.example", self),
                         Route("lmtp", {"endpoint": "tcp:host=127.0.0.1:port=24"}))
        self.assertEqual(route_of(router, "x@pipe.example", self),
                         Route("pipe", {"command": "/usr/bin/procmail -d ${user}"}))
        self.assertEqual(route_of(router, "x@acme.example", self),
                         Route("acme", {"args": "queue 7 # not a comment"}))
        self.assertEqual(route_of(router, "x@empty.example", self), Route("acme", {"args": ""}))

    def test_maildir_by_address_and_by_domain(self) -> None:
        router = TableRouter({
            "boss@example.com": "maildir:/srv/boss",
            "example.com": "maildir:/srv/mail/example.com",
            ".example.com": "maildir:/srv/mail/subs",
            "*": "maildir:/srv/mail/other",
        })
        self.assertEqual(route_of(router, "Boss@example.com", self),
                         Route("maildir", {"directory": "/srv/boss"}))
        self.assertEqual(route_of(router, "Alice@example.com", self),
                         Route("maildir", {"directory": "/srv/mail/example.com/alice"}))
        self.assertEqual(route_of(router, "bob@a.example.com", self),
                         Route("maildir", {"directory": "/srv/mail/subs/bob"}))
        self.assertEqual(route_of(router, "carol@example.org", self),
                         Route("maildir", {"directory": "/srv/mail/other/carol"}))

    def test_maildir_never_takes_a_bad_local_part_as_a_path(self) -> None:
        router = TableRouter({"example.com": "maildir:/srv/mail"})
        for local in ("../etc", ".profile", "a/b", "a..b", "a%b"):
            recipient = Mailbox(local, "example.com")
            [(_, _, route)] = self.successResultOf(router.route(envelope(), recipient))
            self.assertEqual(status(route.reject), (550, "5.1.1"), local)
            self.assertEqual(status(self.successResultOf(router.validate(recipient))),
                             (550, "5.1.1"))

    def test_reject(self) -> None:
        router = TableRouter({
            "gone@example.com": "reject",
            "spam.example": "reject:554 5.7.1 No mail from you",
            "plain.example": "reject:550",
            "text.example": "reject:553 Mailbox name not allowed",
            "example.com": "maildir:/srv/mail",
        })
        reply = route_of(router, "gone@example.com", self).reject
        self.assertEqual(reply,
                         Reply(550, "5.1.1", "<gone@example.com>: Recipient address rejected"))
        self.assertEqual(route_of(router, "x@spam.example", self).reject,
                         Reply(554, "5.7.1", "No mail from you"))
        self.assertEqual(route_of(router, "x@plain.example", self).reject,
                         Reply(550, "5.0.0", "Recipient address rejected"))
        self.assertEqual(route_of(router, "x@text.example", self).reject,
                         Reply(553, "5.0.0", "Mailbox name not allowed"))
        self.assertEqual(self.successResultOf(router.validate(mailbox("gone@example.com"))),
                         reply)
        self.assertIsNone(self.successResultOf(router.validate(mailbox("bob@example.com"))))

    def test_parse(self) -> None:
        self.assertEqual(parse_route_spec("  smtp  "), RouteSpec("smtp", "smtp"))
        self.assertEqual(parse_route_spec("alias: a@example.com , <B@example.org>,a@example.com"),
                         RouteSpec("alias: a@example.com , <B@example.org>,a@example.com", None,
                                   targets=(Mailbox("a", "example.com"),
                                            Mailbox("B", "example.org"))))

    def test_bad_specs(self) -> None:
        for spec in ("", "discard", "smtpp", "error", "reject:450 4.1.1 Try later",
                     "reject:550 4.1.1 Wrong class", "reject:Go away", "reject:5500",
                     "reject:550 5.1.1 two\nlines", "lmtp:", "maildir:", "pipe:  ",
                     "alias:", "alias:a@example.com,,b@example.com", "alias:not an address",
                     "alias:postmaster", "Bad_Name!:x", "smtp:[relay.example",
                     "smtp:relay.example:99999", "smtp:two words"):
            self.assertRaises(ValueError, parse_route_spec, spec)
            error = self.assertRaises(TableError, TableRouter, {"example.com": spec})
            self.assertIn("'example.com'", str(error))

    def test_map_value_must_be_a_string(self) -> None:
        # A TOML key with dots that is not quoted becomes a nested table.
        error = self.assertRaises(TableError, TableRouter, {"example": {"com": "smtp"}})
        self.assertIn("quote", str(error))


class FileTests(SynchronousTestCase):
    def write(self, text: str | bytes, path: str | None = None) -> str:
        path = path or temp_file(self)
        with open(path, "wb") as file:
            file.write(text.encode() if isinstance(text, str) else text)
        return path

    def test_format(self) -> None:
        path = self.write(
            "# The transport map\n"
            "\n"
            "   # an indented comment\n"
            "alice@example.com\tmaildir:/srv/alice\n"
            "example.com    pipe:/usr/bin/deliver -f $sender # kept\r\n"
            "  *   smtp:[relay.example]:587  \n"
        )
        router = TableRouter(path=path)
        self.assertEqual(route_of(router, "alice@example.com", self),
                         Route("maildir", {"directory": "/srv/alice"}))
        self.assertEqual(route_of(router, "bob@example.com", self),
                         Route("pipe", {"command": "/usr/bin/deliver -f $sender # kept"}))
        self.assertEqual(route_of(router, "x@example.org", self), nexthop("relay.example:587"))

    def test_map_and_file_together(self) -> None:
        path = self.write("example.com smtp:[a.example]\n")
        router = TableRouter({"example.org": "smtp:[b.example]"}, path)
        self.assertEqual(route_of(router, "x@example.com", self), nexthop("a.example:25"))
        self.assertEqual(route_of(router, "x@example.org", self), nexthop("b.example:25"))

    def assert_error(self, text: str | bytes, *expected: str) -> TableError:
        path = self.write(text)
        error: TableError = self.assertRaises(TableError, TableRouter, path=path)
        self.assertEqual(error.setting, "file")
        self.assertIn(path, str(error))
        for part in expected:
            self.assertIn(part, str(error))
        return error

    def test_errors_name_the_line(self) -> None:
        self.assert_error("# ok\nexample.com smtp\nexample.org smtpp\n", ", line 3:", "smtpp")
        self.assert_error("example.com\n", ", line 1:", "no route spec")
        self.assert_error("\n\nuser@ smtp\n", ", line 3:", "'user@'")
        self.assert_error("a.example smtp\nb.example alias:nobody\n", ", line 2:", "nobody")
        self.assert_error("a.example smtp\nb.example reject:450 later\n", ", line 2:")
        self.assert_error(b"a.example smtp\nb.example pipe:caf\xe9\n", ", line 2:", "UTF-8")

    def test_duplicate_keys(self) -> None:
        self.assert_error("example.com smtp\n# x\nEXAMPLE.com reject\n",
                          ", line 3:", ", line 1", "'example.com'")
        self.assert_error("Bob@example.com smtp\nbob@EXAMPLE.COM smtp\n", ", line 2:")
        path = self.write("example.com smtp\n")
        error = self.assertRaises(TableError, TableRouter, {"Example.COM": "reject"}, path)
        self.assertEqual(error.setting, "file")
        self.assertIn(f"{path}, line 1", str(error))
        self.assertIn("map key 'Example.COM'", str(error))

    def test_missing_file(self) -> None:
        path = temp_file(self)
        error = self.assertRaises(TableError, TableRouter, path=path)
        self.assertIn(path, str(error))


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = temp_file(self)
        self.mtime = 1_000_000
        self.write("example.com smtp:[one.example]\n")
        self.events: list[dict[str, Any]] = []
        self.router = TableRouter(path=self.path, clock=self.clock,
                                  log=Logger(observer=cast(ILogObserver, self.events.append)))

    def write(self, text: str) -> None:
        with open(self.path, "w") as file:
            file.write(text)
        # A new modification time each time, however fast the test runs.
        self.mtime += 10
        os.utime(self.path, (self.mtime, self.mtime))

    def host(self) -> str:
        route = route_of(self.router, "x@example.com", self)
        if route.reject is not None:
            return "rejected"
        return route.arguments["nexthop"]

    def errors(self) -> list[str]:
        return [event["error"] for event in self.events if "error" in event]

    def test_changed_file_read_after_the_interval(self) -> None:
        self.assertEqual(self.host(), "one.example:25")
        self.write("example.com smtp:[two.example]\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL / 2)
        self.assertEqual(self.host(), "one.example:25")
        self.clock.advance(RELOAD_CHECK_INTERVAL / 2)
        self.assertEqual(self.host(), "two.example:25")

    def test_checked_on_validate_and_decides_too(self) -> None:
        self.write("example.com reject\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        reply = self.successResultOf(self.router.validate(mailbox("x@example.com")))
        self.assertEqual(status(reply), (550, "5.1.1"))
        self.write("example.org smtp\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertFalse(self.router.decides(mailbox("x@example.com")))

    def test_stat_at_most_once_per_interval(self) -> None:
        stats: list[str] = []
        real = os.stat

        def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            stats.append(path)
            return real(path, *args, **kwargs)

        self.patch(os, "stat", counting)
        for _ in range(5):
            self.host()
        self.assertEqual(stats, [])
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        for _ in range(5):
            self.host()
        self.assertEqual(stats, [self.path])

    def test_reload_now(self) -> None:
        self.write("example.com smtp:[two.example]\n")
        self.assertTrue(self.router.reload())
        self.assertEqual(self.host(), "two.example:25")

    def test_bad_file_keeps_the_old_table(self) -> None:
        self.write("example.com smtp:[two.example]\nexample.org smtpp\n")
        self.assertFalse(self.router.reload())
        self.assertEqual(self.host(), "one.example:25")
        [error] = self.errors()
        self.assertIn(f"{self.path}, line 2:", error)
        # The bad file is not read again every second...
        self.clock.advance(RELOAD_CHECK_INTERVAL * 5)
        self.assertEqual(self.host(), "one.example:25")
        self.assertEqual(len(self.errors()), 1)
        # ...only once it changes.
        self.write("example.com smtp:[three.example]\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(self.host(), "three.example:25")

    def test_bad_file_found_by_the_check(self) -> None:
        self.write("example.com smtp:[two.example\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(self.host(), "one.example:25")
        self.assertEqual(len(self.errors()), 1)

    def test_removed_file_keeps_the_old_table(self) -> None:
        os.remove(self.path)
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(self.host(), "one.example:25")
        [error] = self.errors()
        self.assertIn(self.path, error)
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(self.host(), "one.example:25")
        self.assertEqual(len(self.errors()), 1)
        self.write("example.com smtp:[back.example]\n")
        self.clock.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(self.host(), "back.example:25")

    def test_map_entries_kept_across_reloads(self) -> None:
        router = TableRouter({"example.net": "smtp"}, self.path, clock=self.clock)
        self.write("example.com smtp:[two.example]\n")
        self.assertTrue(router.reload())
        self.assertEqual(route_of(router, "x@example.net", self),
                         Route("smtp", {"domain": "example.net"}))
        self.write("example.net smtp\n")
        self.assertFalse(router.reload())


@implementer(IRouter, IRecipientValidator)
class LaterRouter:
    """Routes every recipient to *route*, once the test fires the Deferred."""

    def __init__(self, route: Route, refuse: Mapping[str, Reply] | None = None) -> None:
        self.routes = route
        self.refuse = dict(refuse or {})
        self.waiting: list[Deferred[Any]] = []

    def route(self, envelope: Any, recipient: Mailbox) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.addCallback(lambda _: [(recipient, recipient, self.routes)])
        self.waiting.append(d)
        return d

    def validate(self, recipient: Mailbox) -> Deferred[Reply | None]:
        return succeed(self.refuse.get(str(recipient)))


class AliasTests(SynchronousTestCase):
    def test_fan_out_keeps_the_original(self) -> None:
        router = TableRouter({
            "team@example.com": "alias:alice@example.com, bob@example.org,carol@example.com",
            "carol@example.com": "alias:carol@example.net",
            "example.com": "maildir:/srv/mail",
            "*": "smtp",
        })
        self.assertEqual(routes(router, "Team@example.com", self), [
            ("alice@example.com", "Team@example.com",
             Route("maildir", {"directory": "/srv/mail/alice"})),
            ("bob@example.org", "Team@example.com", Route("smtp", {"domain": "example.org"})),
            ("carol@example.net", "Team@example.com", Route("smtp", {"domain": "example.net"})),
        ])
        self.assertIsNone(self.successResultOf(router.validate(mailbox("team@example.com"))))

    def test_domain_alias(self) -> None:
        router = TableRouter({"example.net": "alias:catch@example.com",
                              "example.com": "maildir:/srv/mail"})
        self.assertEqual(routes(router, "x@example.net", self), [
            ("catch@example.com", "x@example.net",
             Route("maildir", {"directory": "/srv/mail/catch"})),
        ])

    def test_keep_a_copy(self) -> None:
        router = TableRouter({
            "alice@example.com": "alias:alice@example.com,alice@example.org",
            "example.com": "maildir:/srv/mail",
            "*": "smtp",
        })
        self.assertEqual(routes(router, "alice@example.com", self), [
            ("alice@example.com", "alice@example.com",
             Route("maildir", {"directory": "/srv/mail/alice"})),
            ("alice@example.org", "alice@example.com", Route("smtp", {"domain": "example.org"})),
        ])

    def test_keep_a_copy_past_a_domain_alias(self) -> None:
        router = TableRouter({
            "example.com": "alias:postmaster@example.com",
            ".com": "maildir:/srv/com",
        })
        self.assertEqual(routes(router, "x@example.com", self), [
            ("postmaster@example.com", "x@example.com",
             Route("maildir", {"directory": "/srv/com/postmaster"})),
        ])

    def test_diamond_delivered_once(self) -> None:
        router = TableRouter({
            "a@example.com": "alias:b@example.com,c@example.com",
            "b@example.com": "alias:d@example.com",
            "c@example.com": "alias:D@example.com,e@example.com",
            "example.com": "smtp",
        })
        self.assertEqual([final for final, _, _ in routes(router, "a@example.com", self)],
                         ["d@example.com", "e@example.com"])

    def test_loop_refused(self) -> None:
        router = TableRouter({
            "a@example.com": "alias:b@example.com",
            "b@example.com": "alias:c@example.com,A@example.com",
            "c@example.com": "maildir:/srv/c",
        })
        [delivered, looped] = routes(router, "a@example.com", self)
        self.assertEqual(delivered, ("c@example.com", "a@example.com",
                                     Route("maildir", {"directory": "/srv/c"})))
        self.assertEqual(looped[:2], ("A@example.com", "a@example.com"))
        self.assertEqual(status(looped[2].reject), (550, "5.4.6"))
        self.assertIn("Routing loop", looped[2].reject.text[0] if looped[2].reject else "")
        # Refused at RCPT, since the loop would bounce.
        self.assertEqual(status(self.successResultOf(router.validate(mailbox("a@example.com")))),
                         (550, "5.4.6"))
        self.assertEqual(status(self.successResultOf(router.validate(mailbox("c@example.com")))),
                         None)

    def test_self_loop_through_a_domain(self) -> None:
        router = TableRouter({"a@example.com": "alias:b@example.com",
                              "example.com": "alias:a@example.com"})
        [(final, original, route)] = routes(router, "a@example.com", self)
        self.assertEqual((final, original), ("a@example.com", "a@example.com"))
        self.assertEqual(status(route.reject), (550, "5.4.6"))

    def chain(self, length: int) -> TableRouter:
        entries = {f"a{i}@example.com": f"alias:a{i + 1}@example.com" for i in range(length)}
        entries["example.com"] = "maildir:/srv/mail"
        return TableRouter(entries)

    def test_depth_bound(self) -> None:
        deepest = routes(self.chain(MAX_ALIAS_DEPTH), "a0@example.com", self)
        self.assertEqual(deepest, [
            (f"a{MAX_ALIAS_DEPTH}@example.com", "a0@example.com",
             Route("maildir", {"directory": f"/srv/mail/a{MAX_ALIAS_DEPTH}"})),
        ])
        router = self.chain(MAX_ALIAS_DEPTH + 1)
        [(_, original, route)] = routes(router, "a0@example.com", self)
        self.assertEqual(original, "a0@example.com")
        self.assertEqual(status(route.reject), (550, "5.4.6"))
        self.assertEqual(status(self.successResultOf(router.validate(mailbox("a0@example.com")))),
                         (550, "5.4.6"))

    def test_fan_out_bound(self) -> None:
        def targets(count: int) -> str:
            return "alias:" + ",".join(f"u{i}@example.org" for i in range(count))

        router = TableRouter({"most@example.com": targets(MAX_ALIAS_ADDRESSES),
                              "many@example.com": targets(MAX_ALIAS_ADDRESSES + 1),
                              "*": "smtp"})
        self.assertEqual(len(routes(router, "most@example.com", self)), MAX_ALIAS_ADDRESSES)
        [(final, original, route)] = routes(router, "many@example.com", self)
        self.assertEqual((final, original), ("many@example.com", "many@example.com"))
        self.assertEqual(status(route.reject), (550, "5.5.3"))
        self.assertEqual(
            status(self.successResultOf(router.validate(mailbox("many@example.com")))),
            (550, "5.5.3"))

    def test_fan_out_bound_counts_every_level(self) -> None:
        # 32 * 32 = 1024 addresses in two levels of 32.
        entries = {"top@example.com": "alias:" + ",".join(f"m{i}@example.com" for i in range(32))}
        for i in range(32):
            entries[f"m{i}@example.com"] = "alias:" + ",".join(
                f"u{i}.{j}@example.org" for j in range(32))
        entries["*"] = "smtp"
        [(_, _, route)] = routes(TableRouter(entries), "top@example.com", self)
        self.assertEqual(status(route.reject), (550, "5.5.3"))

    def test_any_refused_target_refuses_at_rcpt(self) -> None:
        router = TableRouter({
            "list@example.com": "alias:ok@example.com,gone@example.com",
            "gone@example.com": "reject:550 5.1.1 Gone away",
            "example.com": "maildir:/srv/mail",
        })
        self.assertEqual(self.successResultOf(router.validate(mailbox("list@example.com"))),
                         Reply(550, "5.1.1", "Gone away"))

    def test_target_not_in_the_table_without_fallback(self) -> None:
        router = TableRouter({"a@example.com": "alias:b@example.org"})
        [(final, original, route)] = routes(router, "a@example.com", self)
        self.assertEqual((final, original), ("b@example.org", "a@example.com"))
        self.assertEqual(status(route.reject), (550, "5.4.4"))
        self.assertEqual(status(self.successResultOf(router.validate(mailbox("a@example.com")))),
                         (550, "5.4.4"))

    def test_target_not_in_the_table_goes_to_the_fallback(self) -> None:
        router = TableRouter({"a@example.com": "alias:a@example.com,b@example.org",
                              "example.org": "reject"},
                             fallback=StaticRouter({}, Route("local")))
        self.assertEqual(routes(router, "a@example.com", self)[0],
                         ("a@example.com", "a@example.com", Route("local")))

    def test_fallback_may_answer_later(self) -> None:
        later = LaterRouter(Route("maildir", {"directory": "/m"}))
        router = TableRouter({"a@example.com": "alias:x@example.org,y@example.org"},
                             fallback=later)
        d = router.route(envelope(), mailbox("a@example.com"))
        self.assertNoResult(d)
        later.waiting.pop(0).callback(None)
        self.assertNoResult(d)
        later.waiting.pop(0).callback(None)
        self.assertEqual([(str(f), str(o)) for f, o, _ in self.successResultOf(d)],
                         [("x@example.org", "a@example.com"), ("y@example.org", "a@example.com")])

    def test_fallback_failure_fails_the_route(self) -> None:
        later = LaterRouter(Route("local"))
        router = TableRouter({"a@example.com": "alias:x@example.org"}, fallback=later)
        d = router.route(envelope(), mailbox("a@example.com"))
        later.waiting[0].errback(RuntimeError("database down"))
        self.failureResultOf(d, RuntimeError)

    def test_fallback_that_does_not_decide(self) -> None:
        router = TableRouter({"a@example.com": "alias:x@example.org"},
                             fallback=TableRouter({"example.net": "smtp"}))
        [(_, _, route)] = routes(router, "a@example.com", self)
        self.assertEqual(status(route.reject), (550, "5.4.4"))
        self.assertEqual(status(self.successResultOf(router.validate(mailbox("a@example.com")))),
                         (550, "5.4.4"))

    def test_fallback_validator_asked(self) -> None:
        refused = Reply(550, "5.1.1", "No such user")
        fallback = LaterRouter(Route("local"), refuse={"x@example.org": refused})
        router = TableRouter({"a@example.com": "alias:y@example.org,x@example.org",
                              "b@example.com": "alias:y@example.org"}, fallback=fallback)
        self.assertEqual(self.successResultOf(router.validate(mailbox("a@example.com"))),
                         refused)
        self.assertIsNone(self.successResultOf(router.validate(mailbox("b@example.com"))))
        # A fallback that validates nothing accepts.
        router = TableRouter({"a@example.com": "alias:x@example.org"}, fallback=MXRouter())
        self.assertIsNone(self.successResultOf(router.validate(mailbox("a@example.com"))))


class TableMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> object:
        return table_maker

    def make_context(self, **components: Any) -> ComponentContext:
        def component(kind: str, name: str) -> Any:
            assert kind == "router"
            return components[name]

        return ComponentContext(reactor=Clock(), random=random.Random(1), log=Logger(),
                                component=component)

    def test_builds_from_map_and_file(self) -> None:
        path = temp_file(self)
        with open(path, "w") as file:
            file.write("example.org smtp:[relay.example]\n")
        router = table_maker.build({"map": {"example.com": "smtp"}, "file": path},
                                   self.make_context())
        self.assertIsInstance(router, TableRouter)
        self.assertEqual(route_of(router, "x@example.org", self), nexthop("relay.example:25"))
        self.assertEqual((table_maker.kind, table_maker.name), ("router", "table"))

    def test_needs_entries(self) -> None:
        error = self.assertRaises(SettingError, table_maker.build, {}, self.make_context())
        self.assertEqual(error.key, "map")

    def test_errors_name_the_setting(self) -> None:
        error = self.assertRaises(SettingError, table_maker.build,
                                  {"map": {"example.com": "smtpp"}}, self.make_context())
        self.assertEqual(error.key, "map")
        path = temp_file(self)
        with open(path, "w") as file:
            file.write("\nexample.com nope\n")
        error = self.assertRaises(SettingError, table_maker.build, {"file": path},
                                  self.make_context())
        self.assertEqual(error.key, "file")
        self.assertIn(f"{path}, line 2:", str(error))
        self.assertIsInstance(error, ValueError)

    def test_fallback_built_by_name(self) -> None:
        local = StaticRouter({}, Route("local"))
        router = table_maker.build(
            {"map": {"a@example.com": "alias:b@example.com"}, "fallback": "local"},
            self.make_context(local=local))
        self.assertIs(router.fallback, local)
        self.assertEqual(routes(router, "a@example.com", self),
                         [("b@example.com", "a@example.com", Route("local"))])

    def test_reloads_on_the_context_clock(self) -> None:
        path = temp_file(self)
        with open(path, "w") as file:
            file.write("example.com smtp:[one.example]\n")
        context = self.make_context()
        router = table_maker.build({"file": path}, context)
        with open(path, "w") as file:
            file.write("example.com smtp:[two.example]\n")
        os.utime(path, (1, 1))
        self.assertEqual(route_of(router, "x@example.com", self), nexthop("one.example:25"))
        context.reactor.advance(RELOAD_CHECK_INTERVAL)
        self.assertEqual(route_of(router, "x@example.com", self), nexthop("two.example:25"))

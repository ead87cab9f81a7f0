"""
The reference implementations of mailframe.testing, and the built-ins,
run the contract suites they ship.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mailframe.address import Mailbox
from mailframe.components import Setting, SettingError
from mailframe.config import ComponentContext
from mailframe.core import Limits
from mailframe.envelope import EntryState, Route
from mailframe.policies import LocalRecipients, RelayControl
from mailframe.policies.relay import LOOPBACK
from mailframe.protocols.server import ServerSettings
from mailframe.reply import Reply
from mailframe.routing import LocalRouter
from mailframe.stores.memory import memory_maker
from mailframe.testing import (
    ComponentMakerContract,
    Exchange,
    FakeComponentMaker,
    MemoryQueueStore,
    MemoryResolver,
    PolicyContract,
    RecordingPolicy,
    RecordingTransport,
    ResolverContract,
    RouterContract,
    StaticRouter,
    TranscriptStalled,
    TransportContract,
    envelope,
    run_transcript,
)
from mailframe.verdict import Action, Verdict


class RecordingPolicyTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RecordingPolicy:
        return RecordingPolicy()

    def test_records_and_answers(self) -> None:
        refuse = Verdict.reject(550, "5.7.1", "no")
        policy = RecordingPolicy({"mail": refuse, "helo": lambda client, name: Verdict(
            Action.ACCEPT, reason=name)})
        self.assertIs(policy.mail(None, None, {}), refuse)
        self.assertEqual(policy.helo(None, "x.example").reason, "x.example")
        self.assertEqual([hook for hook, _ in policy.calls], ["mail", "helo"])


class RelayControlContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> RelayControl:
        return RelayControl(["example.com"], LOOPBACK)


class LocalRecipientsContractTests(PolicyContract, SynchronousTestCase):
    def make_policy(self) -> LocalRecipients:
        return LocalRecipients(["example.com"], frozenset({"alice"}))


class StaticRouterTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> StaticRouter:
        return StaticRouter({"example.com": Route("lmtp", {"host": "127.0.0.1"})})

    def test_default_route(self) -> None:
        routes = self.successResultOf(
            self.make_router().route(envelope(), Mailbox("bob", "other.example")))
        self.assertEqual(routes[0][2], Route("smtp"))


class LocalRouterContractTests(RouterContract, SynchronousTestCase):
    def make_router(self) -> LocalRouter:
        return LocalRouter({"example.com": "/srv/mail"})


class RecordingTransportTests(TransportContract, SynchronousTestCase):
    def make_transport(self) -> RecordingTransport:
        return RecordingTransport()

    def sample_delivery(self) -> Any:
        store = MemoryQueueStore(Clock())
        writer = store.open_writer()
        queue_id = self.successResultOf(writer.commit(envelope("a@b.example", "c@d.example")))
        entry = self.successResultOf(store.get(queue_id))
        rcpt = entry.envelope.recipients[0]
        return entry, [(rcpt, rcpt)], Route("x")


class MemoryResolverTests(ResolverContract, SynchronousTestCase):
    def make_resolver(self) -> MemoryResolver:
        return MemoryResolver(
            mx={"example.com": [(10, "mx.example.com")], "nullmx.example": [(0, ".")],
                "target.example": [(5, "mx.target.example")]},
            addresses={"mx.example.com": ["2001:db8::25", "192.0.2.25"]},
            txt={"example.com": ["v=spf1 -all"]},
            cnames={"alias.example": "target.example"},
            nxdomain=["gone.example"],
            failing=["servfail.example"],
        )

    def mx_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "example.com", [(10, "mx.example.com")]

    def null_mx_name(self) -> str:
        return "nullmx.example"

    def alias_name(self) -> tuple[str, list[tuple[int, str]]]:
        return "alias.example", [(5, "mx.target.example")]

    def address_name(self) -> tuple[str, list[str]]:
        return "mx.example.com", ["2001:db8::25", "192.0.2.25"]

    def txt_name(self) -> tuple[str, list[str]]:
        return "example.com", ["v=spf1 -all"]

    def nodata_name(self) -> str:
        return "nonexistent.invalid"

    def nxdomain_name(self) -> str:
        return "gone.example"

    def failing_name(self) -> str:
        return "servfail.example"

    def test_answers(self) -> None:
        resolver = self.make_resolver()
        self.assertEqual(self.successResultOf(resolver.lookup_mx("EXAMPLE.com")),
                         [(10, "mx.example.com")])
        self.assertEqual(self.successResultOf(resolver.lookup_address("mx.example.com")),
                         ["2001:db8::25", "192.0.2.25"])


class FakeComponentMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> FakeComponentMaker:
        return FakeComponentMaker(
            "policy", "greylist", "Greylists first-time senders",
            lambda settings, context: RecordingPolicy(),
            {"delay": (int, 300, "seconds before a retry is accepted")},
        )

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=Clock(), random=random.Random())

    def test_builds(self) -> None:
        built = self.make_maker().build({"delay": 60}, self.make_context())
        self.assertIsInstance(built, RecordingPolicy)


# -- run_transcript --------------------------------------------------------------


def _refuse_bob(client: Any, sender: Any, recipient: Mailbox, parameters: Any) -> Verdict:
    if recipient.local_part == "bob":
        return Verdict.reject(550, "5.1.1", "No such user: bob")
    return Verdict()


SESSION = """\
EHLO client.example
MAIL FROM:<sender@example.org>
RCPT TO:<bob@example.com>
RCPT TO:<alice@example.com>
DATA
Subject: hi

..leading dot
...
.
QUIT
"""


class _FakeTLS:
    """Stands in for ServerTLS: the transcript's handshake needs no certificate."""

    def options(self) -> None:
        return None


class RunTranscriptTests(SynchronousTestCase):
    def test_policy_refuses_a_recipient(self) -> None:
        policy = RecordingPolicy({"rcpt": _refuse_bob})
        transcript = run_transcript(SESSION, [policy])
        self.assertEqual(transcript.codes, (220, 250, 250, 550, 250, 354, 250, 221))
        self.assertEqual(transcript.reply_to("RCPT TO:<bob@"),
                         Reply(550, "5.1.1", "No such user: bob"))
        self.assertEqual(transcript.reply_to("rcpt to:<alice@").code, 250)
        self.assertEqual([hook for hook, _ in policy.calls],
                         ["connect", "helo", "mail", "rcpt", "rcpt", "end_of_data"])
        (sent,) = transcript.envelopes
        self.assertEqual(str(sent.sender), "sender@example.org")
        self.assertEqual(sent.recipients, (Mailbox("alice", "example.com"),))
        self.assertEqual(sent.client.address, "192.0.2.1")
        self.assertEqual(sent.client.helo, "client.example")
        self.assertTrue(transcript.closed)

    def test_greeting_first_and_every_line_answered(self) -> None:
        transcript = run_transcript(SESSION)
        self.assertEqual(transcript.exchanges[0].command, None)
        self.assertEqual(transcript.replies[0],
                         Reply(220, None, "mx.example.com ESMTP mailframe"))
        self.assertEqual(
            [e.command for e in transcript.exchanges[1:]],
            ["EHLO client.example", "MAIL FROM:<sender@example.org>", "RCPT TO:<bob@example.com>",
             "RCPT TO:<alice@example.com>", "DATA", ".", "QUIT"],
        )

    def test_envelopes_entries_and_messages(self) -> None:
        transcript = run_transcript(SESSION)
        (queue_id,) = transcript.queue_ids
        self.assertEqual(transcript.reply_to(".").text, (f"Ok: queued as {queue_id}",))
        (entry,) = transcript.entries
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual(entry.state, EntryState.INCOMING)
        self.assertEqual(transcript.envelopes, (entry.envelope,))
        self.assertEqual(len(entry.envelope.recipients), 2)
        stored = self.successResultOf(transcript.store.get(queue_id))
        self.assertEqual(stored, entry)

    def test_data_is_dot_unstuffed(self) -> None:
        transcript = run_transcript(SESSION)
        (message,) = transcript.messages
        received, rest = message.split(b"Subject: hi\r\n", 1)
        self.assertTrue(received.startswith(b"Received: from client.example"))
        self.assertEqual(rest, b"\r\n.leading dot\r\n..\r\n")

    def test_bytes_are_sent_exactly(self) -> None:
        # A bare LF does not end a line (RFC 5321 §2.3.8), and the server
        # refuses a message that has one; only CRLF.CRLF ends the data.
        wire = (
            b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
            b"DATA\r\nx\n.\nQUIT\r\n.\r\n"
        )
        transcript = run_transcript(wire)
        self.assertEqual(transcript.codes, (220, 250, 250, 250, 354, 550))
        self.assertEqual(transcript.reply_to(".").status, "5.5.2")
        self.assertFalse(transcript.closed)
        self.assertEqual(transcript.envelopes, ())
        self.assertIn(("C", "x\\n.\\nQUIT"), transcript.dialogue)

    def test_pipelined_groups(self) -> None:
        transcript = run_transcript(
            [
                "EHLO client.example",
                ("MAIL FROM:<sender@example.org>", "RCPT TO:<bob@example.com>",
                 "RCPT TO:<alice@example.com>", "DATA"),
                ("Subject: pipelined", "", "body", ".", "QUIT"),
            ],
            [RecordingPolicy({"rcpt": _refuse_bob})],
        )
        self.assertEqual(
            [(e.command, e.reply.code if e.reply else None) for e in transcript.exchanges],
            [(None, 220), ("EHLO client.example", 250),
             ("MAIL FROM:<sender@example.org>", 250), ("RCPT TO:<bob@example.com>", 550),
             ("RCPT TO:<alice@example.com>", 250), ("DATA", 354), (".", 250), ("QUIT", 221)],
        )
        # On the wire, a group's lines all go before the replies to them.
        sides = "".join(side for side, _ in transcript.dialogue)
        self.assertIn("CCCCSSSS", sides)
        self.assertEqual(len(transcript.envelopes), 1)

    def test_message_sent_with_data_when_data_is_refused(self) -> None:
        # Every recipient refused: DATA gets 503, and the lines sent after it
        # in the same group are read as commands, each with its reply.
        transcript = run_transcript(
            ["HELO c.example",
             ("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA", "hello", ".")],
            [RecordingPolicy({"rcpt": _refuse_bob})],
        )
        self.assertEqual([e.command for e in transcript.exchanges[-3:]], ["DATA", "hello", "."])
        self.assertEqual([r.code for r in transcript.replies[-3:]], [503, 500, 500])
        self.assertEqual(transcript.envelopes, ())

    def test_policy_answering_later(self) -> None:
        clock = MemoryReactorClock()

        def slow(client: Any, sender: Any, recipient: Any, parameters: Any) -> Deferred[Verdict]:
            return deferLater(clock, 30, lambda: Verdict.tempfail(450, "4.7.1", "Try later"))

        transcript = run_transcript(
            ["HELO c.example", ("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>",
                                "RCPT TO:<c@example.com>", "QUIT")],
            [RecordingPolicy({"rcpt": slow})],
            clock=clock,
        )
        self.assertEqual(transcript.codes, (220, 250, 250, 450, 450, 221))
        self.assertEqual(transcript.elapsed, 60.0)
        self.assertEqual(clock.seconds(), 60.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_deferred_that_never_fires(self) -> None:
        never: Deferred[Verdict] = Deferred()
        with self.assertRaises(TranscriptStalled) as caught:
            run_transcript(["HELO c.example", "MAIL FROM:<a@example.org>", "QUIT"],
                           [RecordingPolicy({"mail": never})])
        message = str(caught.exception)
        self.assertIn("did not answer 'MAIL FROM:<a@example.org>' within 600 seconds", message)
        self.assertIn("C: MAIL FROM:<a@example.org>", message)
        transcript = caught.exception.transcript
        assert transcript is not None
        self.assertEqual(transcript.exchanges[-1], Exchange("MAIL FROM:<a@example.org>", None))
        self.assertNotIn("QUIT", [e.command for e in transcript.exchanges])
        self.assertFalse(transcript.closed)
        self.assertEqual(transcript.elapsed, 600.0)

    def test_wait(self) -> None:
        clock = MemoryReactorClock()
        late = RecordingPolicy({"connect": lambda client: deferLater(clock, 700, Verdict)})
        with self.assertRaises(TranscriptStalled):
            run_transcript("QUIT", [late], clock=MemoryReactorClock())
        transcript = run_transcript("QUIT", [late], clock=clock, wait=800)
        self.assertEqual(transcript.codes, (220, 221))

    def test_render(self) -> None:
        transcript = run_transcript(["HELO client.example", ("NOOP", "RSET"), "QUIT"])
        self.assertEqual(
            transcript.render(),
            "S: 220 mx.example.com ESMTP mailframe\n"
            "C: HELO client.example\n"
            "S: 250 mx.example.com\n"
            "C: NOOP\n"
            "C: RSET\n"
            "S: 250 2.0.0 OK\n"
            "S: 250 2.0.0 OK\n"
            "C: QUIT\n"
            "S: 221 2.0.0 Bye\n"
            "-- closed by the server",
        )
        self.assertEqual(str(transcript), transcript.render())

    def test_render_unfinished_line(self) -> None:
        transcript = run_transcript([b"HELO c\r\nNOOP"])
        self.assertEqual(transcript.dialogue[-1], ("C", "NOOP [no CRLF]"))
        self.assertFalse(transcript.closed)
        self.assertEqual(transcript.codes, (220, 250))

    def test_lines_after_quit_go_unanswered(self) -> None:
        transcript = run_transcript([("QUIT", "NOOP"), "NOOP"])
        self.assertEqual(transcript.exchanges[-1], Exchange("NOOP", None))
        self.assertEqual([e.command for e in transcript.exchanges].count("NOOP"), 1)
        with self.assertRaises(LookupError):
            transcript.reply_to("NOOP")
        with self.assertRaises(LookupError):
            transcript.reply_to("EHLO")

    def test_refused_connection(self) -> None:
        refuse = RecordingPolicy({"connect": Verdict.reject(554, "5.7.1", "Go away")})
        transcript = run_transcript("HELO c.example", [refuse])
        self.assertEqual(transcript.replies, (Reply(554, None, "Go away"),))
        self.assertTrue(transcript.closed)

    def test_too_many_errors_is_a_reply_sent_unasked(self) -> None:
        settings = ServerSettings(hostname="mx.example.com", limits=Limits(max_errors=2))
        transcript = run_transcript([("FOO", "BAR", "NOOP")], settings=settings)
        self.assertEqual(
            [(e.command, e.reply.code if e.reply else None) for e in transcript.exchanges],
            [(None, 220), ("FOO", 500), ("BAR", 500), (None, 421), ("NOOP", None)],
        )
        self.assertTrue(transcript.closed)

    def test_bdat_chunks_are_not_lines(self) -> None:
        chunk = b"Subject: x\r\n\r\nQUIT\r\n"
        transcript = run_transcript([
            "EHLO c.example",
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
            + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n",
        ])
        self.assertEqual(
            [e.command for e in transcript.exchanges[-2:]], [f"BDAT {len(chunk)} LAST", "NOOP"])
        self.assertEqual(transcript.codes[-2:], (250, 250))
        self.assertTrue(transcript.messages[0].endswith(chunk))
        self.assertFalse(transcript.closed)

    def test_auth_exchange(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        settings = ServerSettings(hostname="mx.example.com", auth="required", checker=checker)
        transcript = run_transcript(
            ["EHLO c.example", "AUTH PLAIN", "AGFsaWNlAHdyb25n", "AUTH PLAIN",
             "AGFsaWNlAHMzY3JldA==", "MAIL FROM:<alice@example.com>"],
            settings=settings,
            tls=True,
        )
        self.assertEqual(transcript.codes, (220, 250, 334, 535, 334, 235, 250))
        self.assertEqual(transcript.reply_to("AGFsaWNlAHMzY3JldA==").code, 235)
        # A failed AUTH is answered after a delay (one second for the first).
        self.assertEqual(transcript.elapsed, 1.0)

    def test_tls_from_the_start(self) -> None:
        policy = RecordingPolicy()
        run_transcript(["EHLO c.example", "MAIL FROM:<a@example.org>"], [policy], tls=True)
        _, (client, _, _) = policy.calls[-1]
        self.assertEqual(client.tls, "TLS")

    def test_starttls_drops_what_was_sent_with_it(self) -> None:
        policy = RecordingPolicy()
        settings = ServerSettings(hostname="mx.example.com", tls=_FakeTLS())  # type: ignore[arg-type]
        transcript = run_transcript(
            ["EHLO c.example", ("STARTTLS", "MAIL FROM:<smuggled@example.org>"),
             "EHLO c.example", "MAIL FROM:<a@example.org>"],
            [policy], settings=settings,
        )
        self.assertEqual(
            [e.command for e in transcript.exchanges],
            [None, "EHLO c.example", "STARTTLS", "EHLO c.example", "MAIL FROM:<a@example.org>"],
        )
        mails = [args for hook, args in policy.calls if hook == "mail"]
        self.assertEqual([str(sender) for _, sender, _ in mails], ["a@example.org"])
        self.assertEqual(mails[0][0].tls, "TLS")
        self.assertNotIn("STARTTLS", transcript.replies[-2].text)

    def test_client_address_and_hostname(self) -> None:
        policy = RecordingPolicy()
        transcript = run_transcript("QUIT", [policy], client_address="2001:db8::7",
                                    client_port=2525, hostname="smtp.example.net")
        self.assertEqual(transcript.replies[0].text, ("smtp.example.net ESMTP mailframe",))
        (client,) = policy.calls[0][1]
        self.assertEqual((client.address, client.port), ("2001:db8::7", 2525))

    def test_held_message_and_own_store(self) -> None:
        clock = MemoryReactorClock()
        store = MemoryQueueStore(clock)
        hold = RecordingPolicy({"end_of_data": Verdict(Action.HOLD, reason="review")})
        transcript = run_transcript(SESSION, [hold], store=store, clock=clock)
        self.assertIs(transcript.store, store)
        self.assertEqual([entry.state for entry in transcript.entries], [EntryState.HOLD])

    def test_one_line_per_str_step(self) -> None:
        with self.assertRaises(ValueError):
            run_transcript(["HELO a\r\nQUIT"])

    def test_makers(self) -> None:
        def build(settings: Any, context: ComponentContext) -> RecordingPolicy:
            self.assertIsInstance(context.reactor, MemoryReactorClock)
            self.assertIsInstance(context.store, MemoryQueueStore)
            self.assertIsInstance(context.resolver, MemoryResolver)
            router = context.component("router", "static")
            self.assertIsInstance(router, StaticRouter)
            return RecordingPolicy({"mail": Verdict.reject(550, "5.7.1", settings["text"])})

        refuse = FakeComponentMaker("policy", "refuse", "Refuses every sender", build,
                                    {"text": (str, "No", "the text of the refusal")})
        static = FakeComponentMaker("router", "static", "Routes by domain",
                                    lambda settings, context: StaticRouter({}))
        transcript = run_transcript(
            ["HELO c.example", "MAIL FROM:<a@example.org>"],
            [RecordingPolicy({"mail": Verdict.reject(550, "5.7.1", "too late")})],
            makers=[memory_maker, refuse, static],
            plugin_settings={"refuse": {"text": "Not from you"}},
        )
        self.assertEqual(transcript.reply_to("MAIL"), Reply(550, "5.7.1", "Not from you"))
        self.assertIsInstance(transcript.store, MemoryQueueStore)

    def test_makers_context_has_the_default_store(self) -> None:
        seen: list[Any] = []

        def build(settings: Any, context: ComponentContext) -> RecordingPolicy:
            seen.append(context.store)
            return RecordingPolicy()

        maker = FakeComponentMaker("policy", "watch", "Watches", build)
        transcript = run_transcript("QUIT", makers=[maker])
        self.assertEqual(seen, [transcript.store])
        self.assertIsInstance(transcript.store, MemoryQueueStore)

    def test_makers_settings_are_checked(self) -> None:
        refuse = FakeComponentMaker("policy", "refuse", "Refuses", lambda s, c: RecordingPolicy(),
                                    {"text": (str, "No", "the text")})
        with self.assertRaises(SettingError):
            run_transcript("QUIT", makers=[refuse], plugin_settings={"refuse": {"text": 1}})
        with self.assertRaises(ValueError):
            run_transcript("QUIT", makers=[refuse], plugin_settings={"refusal": {}})
        with self.assertRaises(ValueError):
            run_transcript("QUIT", store=MemoryQueueStore(Clock()), makers=[memory_maker])


class FakeComponentMakerSchemaTests(SynchronousTestCase):
    def test_schema_becomes_settings(self) -> None:
        maker = FakeComponentMaker("policy", "greylist", "Greylists", lambda s, c: dict(s),
                                   {"delay": (int, 300, "seconds"),
                                    "exempt": Setting("networks", (), "never greylisted")})
        self.assertEqual(maker.schema["delay"], Setting("integer", 300, "seconds"))
        self.assertEqual(maker.build({}, None), {"delay": 300, "exempt": ()})
        with self.assertRaises(SettingError):
            maker.build({"delay": "soon"}, None)

    def test_bad_kind_fails_at_once(self) -> None:
        with self.assertRaises(ValueError):
            FakeComponentMaker("filter", "x", "X", lambda s, c: None)

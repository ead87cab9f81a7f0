"""Tests for Maildir delivery, on a real temporary directory."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from mailframe.address import AddressError, Mailbox
from mailframe.config import ComponentContext, ConfigError, parse_config
from mailframe.envelope import DeliveryStatus, Route
from mailframe.registry import Components, discover
from mailframe.routing import LocalRouter
from mailframe.stores._syncfs import load_syncfs
from mailframe.stores._threads import ThreadRunner
from mailframe.testing import MemoryQueueStore, RouterContract, TransportContract, envelope
from mailframe.transports.maildir import DEFAULT_THREADS, MaildirTransport, deliver_to_maildir


class MaildirFixture(TransportContract):
    """A queued message for alice, and the contract, for any way of syncing."""

    def setUp(self) -> None:
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        self.root = os.path.join(work, "mail")
        self.store = MemoryQueueStore(Clock())
        writer = self.store.open_writer()
        writer.write(b"Subject: hi\r\n\r\nline one\r\n.line two\r\n")
        self.queue_id = writer.commit(envelope("s@example.org", "alice@example.com")).result
        self.entry = self.successResultOf(self.store.get(self.queue_id))

    def make_transport(self) -> MaildirTransport:
        return MaildirTransport(self.store, reactor, reactor.getThreadPool())

    def sample_delivery(self) -> tuple[object, list[object], Route]:
        recipient = self.entry.envelope.recipients[0]
        route = Route("maildir", {"directory": os.path.join(self.root, "alice")})
        return self.entry, [(recipient, recipient)], route

    def wait(self, d: object) -> object:
        return d

    async def test_one_result_per_recipient(self) -> None:  # type: ignore[override]
        entry, recipients, route = self.sample_delivery()
        results = await self.make_transport().deliver(entry, recipients, route)
        self.assertEqual([r.recipient for r in results], [r for r, _ in recipients])


class MaildirTests(MaildirFixture, TestCase):
    def record_fsyncs(self, what: Callable[[int], str]) -> list[str]:
        """Record *what* of each descriptor that is fsynced from now on."""
        recorded: list[str] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            recorded.append(what(fd))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        return recorded

    async def test_delivers_into_new_with_trace_fields(self) -> None:
        entry, recipients, route = self.sample_delivery()
        results = await self.make_transport().deliver(entry, recipients, route)
        self.assertEqual(results[0].status, DeliveryStatus.DELIVERED)
        new = os.path.join(self.root, "alice", "new")
        names = os.listdir(new)
        self.assertEqual(len(names), 1)
        self.assertEqual(os.listdir(os.path.join(self.root, "alice", "tmp")), [])
        with open(os.path.join(new, names[0]), "rb") as handle:
            content = handle.read()
        self.assertEqual(
            content,
            b"Return-Path: <s@example.org>\nDelivered-To: alice@example.com\n"
            b"Subject: hi\n\nline one\n.line two\n",
        )

    async def test_makes_a_new_maildir_durably(self) -> None:
        """
        The parent of every directory made is fsynced, children first, before
        the message is written; a Maildir that exists costs nothing more.
        """
        fsynced = self.record_fsyncs(lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
        entry, recipients, route = self.sample_delivery()
        transport = self.make_transport()
        results = await transport.deliver(entry, recipients, route)
        self.assertEqual(results[0].status, DeliveryStatus.DELIVERED)
        alice = os.path.join(self.root, "alice")
        (name,) = os.listdir(os.path.join(alice, "new"))
        made = [alice, self.root, os.path.dirname(self.root)]
        self.assertEqual(fsynced, [*made, os.path.join(alice, "tmp", name),
                                   os.path.join(alice, "new")])
        del fsynced[:]
        await transport.deliver(entry, recipients, route)
        self.assertEqual(len(fsynced), 2)
        self.assertEqual(os.path.dirname(fsynced[0]), os.path.join(alice, "tmp"))
        self.assertEqual(fsynced[1], os.path.join(alice, "new"))

    async def test_a_maildir_seen_first_is_made_durable(self) -> None:
        """
        A Maildir that was there already, but that this process has not
        delivered into, is fsynced with its parent: whoever made it may have
        stopped before it was durable.
        """
        alice = os.path.join(self.root, "alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(alice, sub))
        fsynced = self.record_fsyncs(lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
        entry, recipients, route = self.sample_delivery()
        results = await self.make_transport().deliver(entry, recipients, route)
        self.assertEqual(results[0].status, DeliveryStatus.DELIVERED)
        (name,) = os.listdir(os.path.join(alice, "new"))
        self.assertEqual(fsynced, [alice, self.root, os.path.join(alice, "tmp", name),
                                   os.path.join(alice, "new")])

    async def test_refuses_unsafe_directories(self) -> None:
        entry, recipients, _ = self.sample_delivery()
        for bad in ("..", ".hidden", "a/b/../.."):
            route = Route("maildir", {"directory": os.path.join(self.root, bad)})
            results = await self.make_transport().deliver(entry, recipients, route)
            self.assertEqual(results[0].status, DeliveryStatus.PERMANENT)
        self.assertFalse(os.path.exists(self.root))


class MaildirOwnThreadsTests(MaildirTests):
    """The contract and the tests above, with the transport's own threads."""

    def make_transport(self) -> MaildirTransport:
        transport = MaildirTransport(self.store, reactor)
        self.addCleanup(transport.stop)
        return transport

    async def test_writes_in_its_own_threads(self) -> None:
        seen = self.record_fsyncs(lambda fd: threading.current_thread().name)
        entry, recipients, route = self.sample_delivery()
        transport = self.make_transport()
        results = await transport.deliver(entry, recipients, route)
        self.assertEqual(results[0].status, DeliveryStatus.DELIVERED)
        # The three parents of the directories made, the file, then new/:
        # all in the transport's thread.
        self.assertEqual(seen, ["mailframe-maildir-1"] * 5)
        await transport.stop()
        self.assertEqual(
            [t.name for t in threading.enumerate() if t.name.startswith("mailframe-maildir")], [])


class MaildirPluginTests(TestCase):
    """The ``maildir`` plugin as a config builds it."""

    def build(self, text: str) -> MaildirTransport:
        config = parse_config(text)
        context = ComponentContext(reactor=reactor, random=None,
                                   store=MemoryQueueStore(Clock()))
        transport = Components(config, discover(), context).get("transport", "maildir")
        self.addCleanup(transport.stop)
        return transport

    def test_four_threads_by_default(self) -> None:
        runner = self.build('transports = ["maildir"]\n')._runner
        self.assertIsInstance(runner, ThreadRunner)
        self.assertEqual(runner.size, DEFAULT_THREADS)
        self.assertEqual(DEFAULT_THREADS, 4)

    def test_threads_setting(self) -> None:
        runner = self.build('transports = ["maildir"]\n[plugins.maildir]\nthreads = 3\n')._runner
        self.assertEqual(runner.size, 3)  # type: ignore[attr-defined]

    def test_bad_threads_setting_names_its_line(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.build('transports = ["maildir"]\n\n[plugins.maildir]\nthreads = 0\n')
        self.assertEqual((caught.exception.key, caught.exception.line),
                         ("plugins.maildir.threads", 4))

    def test_sync_setting(self) -> None:
        self.assertEqual(self.build('transports = ["maildir"]\n').sync, "file")
        if load_syncfs()[0] is None:
            raise SkipTest(load_syncfs()[1])
        transport = self.build('transports = ["maildir"]\n[plugins.maildir]\nsync = "filesystem"\n')
        self.assertEqual(transport.sync, "filesystem")

    def test_bad_sync_setting_names_its_line(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.build('transports = ["maildir"]\n[plugins.maildir]\nsync = "never"\n')
        self.assertEqual((caught.exception.key, caught.exception.line),
                         ("plugins.maildir.sync", 3))


class ShortWriteTests(TestCase):
    def test_every_octet_is_written_when_write_takes_less(self) -> None:
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        real_write = os.write

        def short(fd: int, data: bytes) -> int:
            return real_write(fd, bytes(data[:7]))

        self.patch(os, "write", short)
        body = b"Subject: x\r\n\r\n" + b"a line of the body\r\n" * 50
        path = deliver_to_maildir(os.path.join(work, "m"), b"Return-Path: <>\n",
                                  io.BytesIO(body), 1e9)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(),
                             b"Return-Path: <>\n" + body.replace(b"\r\n", b"\n"))


class LocalRouterTests(RouterContract, TestCase):
    def make_router(self) -> LocalRouter:
        return LocalRouter({"Example.com": "/srv/mail"})

    def sample_recipient(self) -> object:
        return envelope("a@b.example", "Alice@EXAMPLE.com").recipients[0]

    def test_local_and_remote(self) -> None:
        router = self.make_router()
        env = envelope("a@b.example", "Alice@EXAMPLE.com", "bob@remote.example")
        [(_, _, local)] = self.successResultOf(router.route(env, env.recipients[0]))
        self.assertEqual(local, Route("maildir", {"directory": "/srv/mail/alice"}))
        [(_, _, remote)] = self.successResultOf(router.route(env, env.recipients[1]))
        self.assertEqual(remote, Route("smtp", {"domain": "remote.example"}))
        smarthost = LocalRouter({"example.com": "/srv/mail"}, smarthost="relay.example:587")
        [(_, _, relayed)] = self.successResultOf(smarthost.route(env, env.recipients[1]))
        self.assertEqual(relayed, Route("smtp", {"nexthop": "relay.example:587"}))

    def test_bad_local_parts_never_become_paths(self) -> None:
        router = self.make_router()
        env = envelope("a@b.example")
        for local in ("../etc", ".profile", "a/b", "x\x00y", "tab\there", "a..b", "a%b"):
            try:
                rcpt = Mailbox(local, "example.com")
            except AddressError:
                continue  # refused even earlier
            [(_, _, route)] = self.successResultOf(router.route(env, rcpt))
            self.assertIsNotNone(route.reject, local)

"""
A router plugin: each recipient domain to a smarthost of its own, with a
rate limit per domain.

``domain_router_maker`` is a component maker at module level, as a plugin
module in a distribution's ``mailframe/plugins/`` directory would hold it.
A config file selects it and gives its settings::

    router = "domain-router"

    [plugins.domain-router]
    rate = 100          # messages per domain in each window
    window = "1m"

    [plugins.domain-router.smarthosts]
    "example.net" = "relay-a.example.com:25"
    "example.org" = "relay-b.example.com:25"

Recipients in other domains go to another router, ``local`` by default. A
domain over its rate is not routed: the router fails with ``451 4.4.5``,
a transient error, so the queue runner keeps the recipient and tries
again on the retry schedule.

The program starts two downstream SMTP servers on free loopback ports
(mailframe's own SMTP server with no policies, keeping what it receives in
memory), and a mailframe that sends example.net to the first and
example.org to the second, at most two messages per domain every two
seconds. It sends three messages to example.net and one to example.org,
shows where each went and which one waited, and stops.

Run it with:  python examples/domain_router.py
"""

from __future__ import annotations

import collections
import email
import os
import smtplib
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.compose import build_mail_service
from mailframe.config import settings_from
from mailframe.envelope import EntryState, Envelope, Route
from mailframe.errors import TransientDeliveryError
from mailframe.interfaces import IRouter
from mailframe.protocols.server import ServerSettings, SMTPServerFactory
from mailframe.registry import Registry, discover
from mailframe.reply import Reply
from mailframe.stores.memory import MemoryQueueStore


@implementer(IRouter)
class DomainRouter:
    """
    Routes the recipients of each domain in *smarthosts* to
    ``Route("smtp", {"nexthop": host})``, and every other recipient with
    *fallback*.

    Each domain takes at most *rate* messages in any *window* seconds; a
    message counts once, however many of its recipients are in the domain.
    Over the rate, :meth:`route` fails with a transient error.

    :param smarthosts: recipient domain, in lower case, to ``host:port``.
    :param fallback: the router of the other domains.
    :param clock: the clock that the windows are measured with.
    """

    def __init__(self, smarthosts: Mapping[str, str], fallback: IRouter, rate: int,
                 window: float, clock: IReactorTime) -> None:
        self.smarthosts = dict(smarthosts)
        self.fallback = fallback
        self.rate = rate
        self.window = window
        self.clock = clock
        self._sent: dict[str, collections.deque[tuple[float, Envelope]]] = {}

    def route(self, envelope: Envelope, recipient: Any) -> Deferred[Any]:
        domain = recipient.domain.lower()
        host = self.smarthosts.get(domain)
        if host is None:
            result: Deferred[Any] = self.fallback.route(envelope, recipient)
            return result
        self._admit(domain, envelope)
        return succeed([(recipient, recipient, Route("smtp", {"nexthop": host}))])

    def _admit(self, domain: str, envelope: Envelope) -> None:
        """Count *envelope* against *domain*'s rate, or refuse it for now."""
        now = self.clock.seconds()
        sent = self._sent.setdefault(domain, collections.deque())
        while sent and sent[0][0] <= now - self.window:
            sent.popleft()
        if any(counted == envelope for _, counted in sent):
            return
        if len(sent) >= self.rate:
            wait = sent[0][0] + self.window - now
            # RFC 3463 §3.5: X.4.5, mail system congestion.
            raise TransientDeliveryError(Reply(
                451, "4.4.5", f"{domain} takes {self.rate} messages every"
                              f" {self.window:g}s; next in {wait:.1f}s"))
        sent.append((now, envelope))


_HOST_PORT = Setting("host-port", None, "")


def build_domain_router(settings: Mapping[str, Any], context: Any) -> DomainRouter:
    smarthosts = {}
    for domain, host in settings["smarthosts"].items():
        try:
            smarthosts[domain.lower()] = _HOST_PORT.parse(host)
        except ValueError as error:
            raise SettingError("smarthosts", f"{domain}: {error}") from None
    fallback = context.component("router", settings["fallback"])
    return DomainRouter(smarthosts, fallback, settings["rate"], settings["window"],
                        context.reactor)


#: The ``domain-router`` router plugin.
domain_router_maker = ComponentMaker(
    kind="router",
    name="domain-router",
    description="Each recipient domain to its own smarthost, with a rate limit per domain",
    factory=build_domain_router,
    schema={
        "smarthosts": Setting("table", None, "Recipient domain to the smarthost (host:port)"
                                             " that takes its mail.", required=True),
        "fallback": Setting("string", "local", "The router of every other domain."),
        "rate": Setting("integer", 60, "Messages one domain takes in each window.",
                        minimum=1),
        "window": Setting("duration", 60.0, "The window of the rate, such as 1m.",
                          minimum=1),
    },
)


def with_maker(registry: Registry, maker: ComponentMaker) -> Registry:
    """*registry* with *maker* added, as if a plugin module held it."""
    key = (maker.kind, maker.name)
    return Registry({**registry.makers, key: maker}, {**registry.modules, key: __name__},
                    registry.problems)


async def start_relay(name: str, received: list[str]) -> IListeningPort:
    """
    A downstream SMTP server on a free loopback port: mailframe's SMTP server
    with no policies, keeping what it receives in a memory queue that
    nothing delivers from. Appends one line to *received* for each message.
    """
    store = MemoryQueueStore(reactor)
    await store.recover()

    async def note(queue_id: str) -> None:
        entry = await store.get(queue_id)
        assert entry is not None
        message = email.message_from_binary_file(await store.open_message(queue_id))
        recipients = ", ".join(f"<{r}>" for r in entry.envelope.recipients)
        received.append(f"{name} got {message['Subject']!r} for {recipients}")

    def queued(queue_id: str) -> None:
        ensureDeferred(note(queue_id))

    factory = SMTPServerFactory(ServerSettings(hostname=name), store, [], reactor,
                                on_queued=queued)
    port: IListeningPort = await serverFromString(
        reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    return port


def send(port: int) -> None:
    messages = [("bob@example.net", "net 1"), ("carol@example.net", "net 2"),
                ("dave@example.org", "org 1"), ("erin@example.net", "net 3")]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for recipient, subject in messages:
            client.sendmail("alice@example.com", [recipient],
                            f"Subject: {subject}\r\n\r\nHello.\r\n".encode())


async def wait_for(check: Any, seconds: float = 20.0) -> Any:
    """
    Wait until *check()* gives something true (or a Deferred firing with
    it), and return that; the queue runner delivers in the background.
    """
    for _ in range(int(seconds / 0.05)):
        result = await maybeDeferred(check)
        if result:
            return result
        await deferLater(reactor, 0.05)
    raise TimeoutError("gave up waiting")


async def main(work: str) -> None:
    received: list[str] = []
    relay_a = await start_relay("relay-a.example", received)
    relay_b = await start_relay("relay-b.example", received)
    a, b = relay_a.getHost().port, relay_b.getHost().port
    config = settings_from({
        "listen": ["tcp:0:interface=127.0.0.1"],
        "hostname": "mx.example.com",
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.com": os.path.join(work, "mail")},
        "router": "domain-router",
        "retry_schedule": "1s",
        "plugins": {"domain-router": {
            "smarthosts": {"example.net": f"127.0.0.1:{a}", "example.org": f"127.0.0.1:{b}"},
            "rate": 2,
            "window": "2s",
        }},
    })
    service = build_mail_service(config, reactor,
                                 registry=with_maker(discover(), domain_router_maker))
    # Look at the queue often, so that the retry comes soon after the window.
    service.runner.poll_interval = 0.2
    service.startService()
    try:
        await service.ready
        print(f"example.net -> relay-a on port {a}, example.org -> relay-b on port {b},"
              " at most 2 messages per domain every 2s")
        await threads.deferToThread(send, service.addresses()[0].port)
        print("sent: 'net 1', 'net 2', 'org 1', 'net 3'")
        await wait_for(lambda: len(received) == 3)
        for line in sorted(received):
            print(line)
        [waiting] = await wait_for(lambda: service.store.list(state=EntryState.DEFERRED))
        print(f"waiting: {waiting.recipients[0].mailbox}: {waiting.recipients[0].reply}")
        await wait_for(lambda: len(received) == 4)
        print(f"after the window: {received[-1]}")
    finally:
        await service.stopService()
        await maybeDeferred(relay_a.stopListening)
        await maybeDeferred(relay_b.stopListening)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        failures: list[Any] = []
        d = ensureDeferred(main(work))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
        if failures:
            failures[0].printTraceback(file=sys.stderr)
            sys.exit(1)

"""
mailframe inside a larger Twisted application: the mail service and a web
page that shows its queue, side by side in one MultiService.

The page asks the queue store of the running mail service for its counts
and its entries, as any other part of the application may. Here the
smarthost that mailframe relays through is down, so a message sent to
another domain waits in the queue, deferred, and the page shows it with
the reason.

The program starts the application on free loopback ports (SMTP and HTTP)
with a temporary queue, fetches the page with twisted.web's Agent, sends
one message, fetches the page again once the message is deferred, and
stops the whole application.

Run it with:  python examples/embedding.py
"""

from __future__ import annotations

import os
import smtplib
import socket
import sys
import tempfile
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mailframe.compose import build_mail_service
from mailframe.config import settings_from
from mailframe.envelope import EntryState
from mailframe.interfaces import IQueueStore
from mailframe.services.listener import ListeningService


class QueuePage(Resource):
    """A plain-text page: the queue's counts by state, then one line per entry."""

    isLeaf = True

    def __init__(self, store: IQueueStore) -> None:
        super().__init__()
        self.store = store

    async def text(self) -> str:
        stats = await self.store.stats()
        lines = [", ".join(f"{stats[state]} {state.value}" for state in EntryState)]
        for entry in await self.store.list(limit=20):
            recipients = " ".join(f"<{mailbox}>" for mailbox in entry.pending)
            lines.append(f"{entry.queue_id} {entry.state.value} {recipients}: {entry.reason}")
        return "\n".join(lines) + "\n"

    def render_GET(self, request: Any) -> Any:
        def write(text: str) -> None:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(text.encode("utf-8"))
            request.finish()

        def failed(failure: Any) -> None:
            request.setResponseCode(500)
            request.finish()

        Deferred.fromCoroutine(self.text()).addCallbacks(write, failed)
        return NOT_DONE_YET


def unused_port() -> int:
    """A loopback port that nothing listens on: the smarthost that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.com", ["carol@example.net"],
                        b"Subject: hello\r\n\r\nHi Carol!\r\n")


class Body(Protocol):
    """Collects a response body; :attr:`done` fires with it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


async def fetch(agent: Agent, url: str) -> str:
    response = await agent.request(b"GET", url.encode("ascii"))
    body = Body()
    response.deliverBody(body)
    return (await body.done).decode("utf-8")


async def main(work: str) -> None:
    config = settings_from({
        "listen": ["tcp:0:interface=127.0.0.1"],
        "hostname": "mx.example.com",
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.com": os.path.join(work, "mail")},
        "smarthost": f"127.0.0.1:{unused_port()}",
    })
    application = MultiService()
    mail = build_mail_service(config, reactor)
    mail.setServiceParent(application)
    web = ListeningService(serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
                           Site(QueuePage(mail.store)))
    web.setServiceParent(application)

    application.startService()
    try:
        await mail.ready
        http = await web.listening
        url = f"http://127.0.0.1:{http.getHost().port}/"
        print(f"SMTP on port {mail.addresses()[0].port}, queue page at {url}")
        agent = Agent(reactor)
        print("the page, before:")
        print(await fetch(agent, url), end="")
        await threads.deferToThread(send, mail.addresses()[0].port)
        print("sent a message to carol@example.net")
        for _ in range(200):  # the queue runner tries it in the background
            page = await fetch(agent, url)
            if page.startswith("0 incoming, 0 active, 1 deferred"):
                break
            await deferLater(reactor, 0.05)
        print("the page, after:")
        print(page, end="")
    finally:
        await application.stopService()
    print("stopped")


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

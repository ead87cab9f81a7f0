"""
Embed mailframe in a Twisted program, with a policy of your own.

The policy refuses mail from one sender domain and tags every accepted
message with a header. The program starts the mail service on a free
loopback port with a temporary queue and Maildir, sends two messages with
smtplib, shows what happened, and stops.

Run it with:  python examples/custom_policy.py
"""

from __future__ import annotations

import os
import smtplib
import sys
import tempfile
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred

from mailframe.compose import build_mail_service
from mailframe.config import Config
from mailframe.policies._base import PolicyBase
from mailframe.verdict import Action, Verdict


class NoSpamFromSpamExample(PolicyBase):
    """Refuse senders in spam.example; tag everything else."""

    def mail(self, client: Any, sender: Any, parameters: Any) -> Verdict:
        if str(sender).lower().endswith("@spam.example"):
            return Verdict.reject(550, "5.7.1", "Senders from spam.example are refused")
        return Verdict()

    def end_of_data(self, envelope: Any, headers: bytes, message: Any) -> Verdict:
        return Verdict(Action.CONTINUE, headers=("X-Checked-By: NoSpamFromSpamExample",))


def send(port: int) -> list[str]:
    outcomes = []
    for sender in ("friend@good.example", "bulk@spam.example"):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            try:
                client.sendmail(sender, ["alice@example.com"], b"Subject: hello\r\n\r\nHi!\r\n")
                outcomes.append(f"{sender}: accepted")
            except smtplib.SMTPSenderRefused as refusal:
                text = refusal.smtp_error.decode()
                outcomes.append(f"{sender}: refused, {refusal.smtp_code} {text}")
    return outcomes


async def main(work: str) -> None:
    maildirs = os.path.join(work, "mail")
    config = Config(
        listen=("tcp:0:interface=127.0.0.1",),
        hostname="mx.example.com",
        queue_dir=os.path.join(work, "queue"),
        local_domains=(("example.com", maildirs),),
    )
    service = build_mail_service(config, reactor, policies=[NoSpamFromSpamExample()])
    service.startService()
    await service.ready
    port = service.addresses()[0].port
    for line in await threads.deferToThread(send, port):
        print(line)
    new = os.path.join(maildirs, "alice", "new")
    for _ in range(100):  # the queue runner delivers in the background
        if os.path.isdir(new) and os.listdir(new):
            break
        await deferLater(0.05)
    [name] = os.listdir(new)
    with open(os.path.join(new, name), encoding="utf-8") as delivered:
        print("delivered to alice:")
        print(delivered.read())
    await service.stopService()


def deferLater(seconds: float) -> Any:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds)


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

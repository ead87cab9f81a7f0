"""
An end-of-data policy that scores each message, adds the score as a
header, and holds suspicious mail in the queue for an operator.

The policy reads the header section at the end of data (before the message
is committed and the client is told ``250``), gives it a score, and adds
``X-Spam-Score:``. A message that scores 5 or more is accepted but put on
hold: it stays in the queue's ``hold`` state, where no delivery attempt
takes it, until an operator releases it (``mailframe queue release ID``,
or the store's ``release(queue_id)`` in code) or deletes it.

The program starts mailframe on a free loopback port with a temporary
queue and Maildir, sends a normal message and a suspicious one, shows that
the first was delivered and the second is on hold, releases it, shows it
delivered, and stops.

Run it with:  python examples/hold_policy.py
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import sys
import tempfile
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from mailframe.compose import build_mail_service
from mailframe.config import settings_from
from mailframe.envelope import EntryState
from mailframe.policies._base import PolicyBase
from mailframe.verdict import Action, Verdict

#: Words that make a subject suspicious, and what each adds to the score.
SUSPICIOUS = {"winner": 3.0, "free": 2.0, "urgent": 2.0, "crypto": 2.5}
#: The score from which a message is held.
HOLD_AT = 5.0


class SpamScore(PolicyBase):
    """Scores each message by its subject; holds those that score :data:`HOLD_AT` or more."""

    def score(self, headers: bytes) -> float:
        fields = email.message_from_bytes(headers, policy=email.policy.default)
        subject = str(fields.get("Subject", ""))
        score = sum(SUSPICIOUS.get(word.strip("!.,:").lower(), 0.0) for word in subject.split())
        if subject.isupper():
            score += 1.5
        return score

    def end_of_data(self, envelope: Any, headers: bytes, message: Any) -> Verdict:
        score = self.score(headers)
        header = f"X-Spam-Score: {score:.1f}"
        if score >= HOLD_AT:
            return Verdict(Action.HOLD, headers=(header,), reason=f"spam score {score:.1f}")
        return Verdict(headers=(header,))


MESSAGES = [
    ("Minutes of Monday's meeting", "The minutes are attached."),
    ("URGENT: FREE CRYPTO FOR A WINNER", "Click here."),
]


def send(port: int) -> list[str]:
    report = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        for subject, body in MESSAGES:
            message = f"From: bob@example.net\r\nSubject: {subject}\r\n\r\n{body}\r\n"
            client.mail("bob@example.net")
            client.rcpt("alice@example.com")
            code, text = client.data(message.encode())
            report.append(f'sent "{subject}": {code} {text.decode()}')
    return report


async def delivered(maildir: str, seen: set[str]) -> list[str]:
    """The messages in *maildir* not in *seen*, once there is one; adds them to *seen*."""
    new = os.path.join(maildir, "new")
    for _ in range(200):  # the queue runner delivers in the background
        if os.path.isdir(new) and set(os.listdir(new)) - seen:
            break
        await deferLater(reactor, 0.05)
    found = []
    for name in sorted(set(os.listdir(new)) - seen):
        seen.add(name)
        with open(os.path.join(new, name), "rb") as stored:
            message = email.message_from_binary_file(stored, policy=email.policy.default)
        found.append(f'"{message["Subject"]}", X-Spam-Score: {message["X-Spam-Score"]}')
    return found


async def main(work: str) -> None:
    maildir = os.path.join(work, "mail", "alice")
    config = settings_from({
        "listen": ["tcp:0:interface=127.0.0.1"],
        "hostname": "mx.example.com",
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.com": os.path.join(work, "mail")},
    })
    service = build_mail_service(config, reactor, policies=[SpamScore()])
    service.startService()
    try:
        await service.ready
        for line in await threads.deferToThread(send, service.addresses()[0].port):
            print(line)
        seen: set[str] = set()
        for line in await delivered(maildir, seen):
            print(f"delivered to alice: {line}")
        [held] = await service.store.list(state=EntryState.HOLD)
        print(f"on hold: {held.queue_id} ({held.reason}),"
              f" with {'; '.join(held.envelope.added_headers)}")
        await service.store.release(held.queue_id)
        print(f"released {held.queue_id}")
        for line in await delivered(maildir, seen):
            print(f"delivered to alice: {line}")
        stats = await service.store.stats()
        print(f"on hold now: {stats[EntryState.HOLD]}")
    finally:
        await service.stopService()


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

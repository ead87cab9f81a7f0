"""
The sample notifications of the bounces guide, rendered by
:func:`mailframe.services.dsn.render_dsn`.

Run it to write them next to this file: ``dsn-failure.eml``, a failure
that returns the whole message, and ``dsn-delay.eml``, a delay warning
that returns its header section. The tests render them again and compare.
"""

from __future__ import annotations

import pathlib

from mailframe.address import Mailbox
from mailframe.envelope import DSNOptions, Envelope
from mailframe.reply import Reply
from mailframe.services.dsn import DeliveryReport, RecipientReport, render_dsn

HERE = pathlib.Path(__file__).resolve().parent

ALICE = Mailbox("alice", "example.com")
BOB = Mailbox("bob", "example.org")
CAROL = Mailbox("carol", "example.net")
#: Mon, 30 Nov 2026 09:12:40 +0000.
RECEIVED = 1_796_029_960.0

ORIGINAL = (
    b"Received: from [192.0.2.25] (laptop.example.com [192.0.2.25])\r\n"
    b"\tby mx.example.com (mailframe) with ESMTPSA id 01KBA3Q1ZJ8W6Y0H2C\r\n"
    b"\tfor <bob@example.org>; Mon, 30 Nov 2026 09:12:40 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>, Carol <carol@example.net>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Date: Mon, 30 Nov 2026 10:12:38 +0100\r\n"
    b"Message-ID: <lunch.4f2a@example.com>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)

ENVELOPE = Envelope(
    sender=ALICE,
    recipients=(BOB, CAROL),
    received_at=RECEIVED,
    ret="FULL",
    envid="lunch-4f2a",
    dsn=((BOB, DSNOptions(orcpt="rfc822;bob@example.org")),),
)


def failure() -> bytes:
    """Bob's server refused him: the whole message goes back to Alice."""
    bob = RecipientReport(
        final_recipient=BOB,
        action="failed",
        status="5.1.1",
        original="rfc822;bob@example.org",
        remote_mta="mx1.example.org",
        diagnostic=Reply(550, "5.1.1", (
            "<bob@example.org>: Recipient address rejected: User unknown in",
            "virtual mailbox table",
        )),
        last_attempt=RECEIVED + 2,
    )
    report = DeliveryReport(
        reporting_mta="mx.example.com",
        queue_id="01KBA3Q1ZJ8W6Y0H2C",
        envelope=ENVELOPE,
        recipients=(bob,),
        created_at=RECEIVED + 2,
        message_id="<01KBA3Q1ZJ8W6Y0H2C.9c1e07b25d4f8a36@mx.example.com>",
        to=ALICE,
    )
    return b"".join(render_dsn(report, ORIGINAL, True, "=_7f3b0c9e5a1d2468bd04e6f1a2c3d5e7"))


def delay_warning() -> bytes:
    """Carol's server has been down for four hours: Alice is told once."""
    carol = RecipientReport(
        final_recipient=CAROL,
        action="delayed",
        status="4.4.1",
        diagnostic=Reply(451, "4.4.1", "connect to mx.example.net[198.51.100.7]:25:"
                         " Connection timed out"),
        last_attempt=RECEIVED + 4 * 3600 - 300,
        will_retry_until=RECEIVED + 5 * 86400,
    )
    report = DeliveryReport(
        reporting_mta="mx.example.com",
        queue_id="01KBA3Q1ZJ8W6Y0H2C",
        envelope=ENVELOPE,
        recipients=(carol,),
        created_at=RECEIVED + 4 * 3600,
        message_id="<01KBA3Q1ZJ8W6Y0H2C.2b8d4e6f0a1c3579@mx.example.com>",
        to=ALICE,
    )
    headers = ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    return b"".join(render_dsn(report, headers, False, "=_0d5c3e1f7a9b2468ce13f5a7b9d0e2c4"))


SAMPLES = {"dsn-failure.eml": failure, "dsn-delay.eml": delay_warning}


def main() -> None:
    for name, make in SAMPLES.items():
        # The guide shows them with the line ends of its own text.
        (HERE / name).write_bytes(make().replace(b"\r\n", b"\n"))


if __name__ == "__main__":
    main()

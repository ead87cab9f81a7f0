"""
Interoperation with aiosmtplib, against ``twistd -n mailframe``.

aiosmtplib (5.x) sends one command at a time and waits for each reply: it
has no PIPELINING support of its own, whatever the server advertises. So
this module sends several messages over one connection the way aiosmtplib
does, and ``test_pipelining.py`` pipelines over raw asyncio streams.
"""

from __future__ import annotations

import asyncio
import re

import aiosmtplib
import pytest

from tests.interop.conftest import Server

pytestmark = pytest.mark.interop

SENDER = "sender@example.org"

#: (recipient, message as sent, with CRLF line ends)
MESSAGES = [
    # The very first line of the data starts with a dot: the client sends
    # "..", with no CRLF before it in the stream.
    ("first@example.com",
     b".first line starts with a dot\r\nSubject: dot first\r\n\r\nbody\r\n"),
    # Dots inside: lone dots, double dots, dots at the end of lines, and
    # something that looks like the end of data.
    ("dots@example.com",
     b"Subject: dots\r\n\r\n.\r\n..\r\n...three\r\nmiddle . dot\r\nend.\r\n"
     b"\r\n.\r\n.x\r\n"),
    # A line of 5000 octets (RFC 5321 allows 1000, and says to accept more),
    # and one exactly at the edge of a likely buffer.
    ("long@example.com",
     b"Subject: long line\r\n\r\n" + b"x" * 5000 + b"\r\n" + b"." + b"y" * 1200 + b"\r\n"
     + b"z" * 65536 + b"\r\nlast\r\n"),
    # 8-bit text and a header that is folded.
    ("eight@example.com",
     "Subject: caf\u00e9\r\n continued\r\n\r\nna\u00efve \u00fcber \u2603\r\n".encode()),
]

_TRACE_LINE = re.compile(rb"(Return-Path|Delivered-To|Received): |\t")


async def send_all(port: int) -> list[str]:
    """Send every message over one connection; the replies to their final dots."""
    replies = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30,
                               local_hostname="aio.example") as client:
        assert client.supports_extension("pipelining")
        assert client.supports_extension("8bitmime")
        for recipient, message in MESSAGES:
            errors, reply = await client.sendmail(SENDER, [recipient], message,
                                                  mail_options=["BODY=8BITMIME"])
            assert errors == {}
            replies.append(reply)
        code, _ = await client.noop()
        assert code == 250
    return replies


def test_several_messages_over_one_connection(server: Server) -> None:
    replies = asyncio.run(send_all(server.port))
    ids = []
    for reply in replies:
        match = re.fullmatch(r"2\.0\.0 Ok: queued as (\S+)", reply)
        assert match is not None, reply
        ids.append(match.group(1))
    assert len(set(ids)) == len(MESSAGES)
    for (recipient, sent), queue_id in zip(MESSAGES, ids, strict=True):
        user = recipient.split("@")[0]
        [delivered] = server.wait_delivered(user, 1)
        expected = sent.replace(b"\r\n", b"\n")
        assert delivered.endswith(expected), (recipient, delivered[-300:])
        # What comes before the message is the trace the server added, and
        # only that: nothing of the message was lost or added to.
        trace = delivered[: len(delivered) - len(expected)]
        assert trace.startswith(f"Return-Path: <{SENDER}>\nDelivered-To: {recipient}\n".encode())
        assert f"with ESMTP id {queue_id}\n".encode() in trace
        assert b"\r" not in trace and trace.endswith(b"\n")
        for line in trace[:-1].split(b"\n"):
            assert _TRACE_LINE.match(line), line


def test_one_message_for_two_mailboxes(server: Server) -> None:
    async def run() -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port,
                                   timeout=30) as client:
            return await client.sendmail(SENDER, ["ok@example.com", "Also@EXAMPLE.com"],
                                         b"Subject: two\r\n\r\nto two\r\n")

    errors, reply = asyncio.run(run())
    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    for user in ("ok", "also"):
        [delivered] = server.wait_delivered(user, 1)
        assert delivered.endswith(b"Subject: two\n\nto two\n")

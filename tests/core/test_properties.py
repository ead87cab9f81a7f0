"""
Properties of the server core over generated input (STYLE point 8): message
data survives dot-stuffing and any split, every session script gives the
same transcript however it is cut, and every mailbox goes through a
command line unchanged.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from mailframe.address import Mailbox
from mailframe.core import EndOfMessage, Mail, Rcpt, parse_command
from tests.core import strategies
from tests.core.helpers import run, session

START = session(
    "EHLO client.example", "MAIL FROM:<alice@client.example>", "RCPT TO:<bob@mx.example>", "DATA"
)
ESMTP = frozenset({"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8"})


def send_message(content: bytes, chunks: list[bytes]) -> tuple[bytes, EndOfMessage]:
    transcript = run([START, *chunks, b"QUIT\r\n"])
    [(data, end)] = transcript.messages
    assert transcript.codes[-1] == 221
    return data, end


@given(strategies.data_lines, st.data())
@example([b".", b"..", b"..."], None)
def test_message_data_round_trip(lines: list[bytes], draw: st.DataObject | None) -> None:
    """Lines with CRLF ends, dot-stuffed and cut anywhere, come back exact."""
    content = b"".join(line + b"\r\n" for line in lines)
    sent = strategies.stuff(content) + b".\r\n"
    chunks = draw.draw(strategies.splits(sent)) if draw is not None else [sent]
    data, end = send_message(content, chunks)
    assert data == content
    assert end.size == len(content)
    assert end.problem is None


@given(st.binary(max_size=200), st.data())
@example(b"\n.\n", None)
@example(b"\r\n.\r", None)
def test_arbitrary_bytes_round_trip(body: bytes, draw: st.DataObject | None) -> None:
    """Any octets at all, bare CR and LF included, come back exact."""
    content = body + b"\r\n"
    sent = strategies.stuff(content) + b".\r\n"
    chunks = draw.draw(strategies.splits(sent)) if draw is not None else [sent]
    data, end = send_message(content, chunks)
    assert data == content
    bare = content.count(b"\r") != content.count(b"\r\n") or content.count(b"\n") != content.count(
        b"\r\n"
    )
    assert (end.problem is not None) == bare


SCRIPT_LINES = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<alice@client.example>\r\n",
    b"MAIL FROM:<> SIZE=99999999999\r\n",
    b"RCPT TO:<bob@mx.example>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
    b"a\nb\r\n.\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY bob\r\n",
    b"FOO\r\n",
    b"NOOP\x00\r\n",
    b"NOOP\nNOOP\r\n",
    b"X" * 600 + b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"QUIT\r\n",
]


@given(st.lists(st.sampled_from(SCRIPT_LINES), max_size=25), st.booleans(), st.data())
def test_any_split_gives_the_same_transcript(
    parts: list[bytes], eof: bool, draw: st.DataObject
) -> None:
    script = b"".join(parts)
    chunks = draw.draw(strategies.splits(script))
    assert run(chunks, eof=eof) == run([script] if script else [], eof=eof)


@given(strategies.mailboxes)
def test_mailbox_through_rcpt(mailbox: Mailbox) -> None:
    utf8 = not mailbox.is_ascii
    line = f"RCPT TO:<{mailbox.render()}>".encode()
    assert parse_command(line, ESMTP, smtputf8=utf8) == Rcpt(mailbox)


@given(strategies.mailboxes.filter(lambda m: m.domain != ""))
def test_mailbox_through_mail(mailbox: Mailbox) -> None:
    utf8 = not mailbox.is_ascii
    params = " SMTPUTF8" if utf8 else ""
    line = f"MAIL FROM:<{mailbox.render()}>{params}".encode()
    event = parse_command(line, ESMTP)
    assert isinstance(event, Mail)
    assert event.sender == mailbox

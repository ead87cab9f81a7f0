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
from mailframe.core import Auth, Bdat, EndOfMessage, Mail, Rcpt, parse_command
from mailframe.reply import Reply
from tests.core import strategies
from tests.core.helpers import by_type, run, session

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


@given(st.binary(max_size=300), st.data())
@example(b"\r\n.\r\nQUIT\r\n", None)
@example(b"", None)
def test_bdat_round_trip(body: bytes, draw: st.DataObject | None) -> None:
    """
    Any octets, cut into random BDAT chunks and the stream fed cut anywhere,
    come back exact; the message is refused only for a bare CR or LF.
    """
    chunks = draw.draw(strategies.bdat_chunks(body)) if draw is not None else [body]
    stream = START[: -len(b"DATA\r\n")] + strategies.bdat(chunks) + b"QUIT\r\n"
    pieces = draw.draw(strategies.splits(stream)) if draw is not None else [stream]
    transcript = run(pieces, extensions=("CHUNKING",))
    [(data, last)] = transcript.chunked_messages
    assert data == body
    assert last == Bdat(len(chunks[-1]), True, len(body), last.headers, last.hops, last.problem)
    bare = body.count(b"\r") != body.count(b"\r\n") or body.count(b"\n") != body.count(b"\r\n")
    assert (last.problem is not None) == bare
    assert transcript.codes[-1] == 221
    assert sum(isinstance(event, Bdat) for event in transcript.events) == len(chunks)
    assert transcript == run([stream], extensions=("CHUNKING",))


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


EXTENDED_LINES = [
    *SCRIPT_LINES,
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH PLAIN QQ\r\n",
    b"AUTH\r\n",
    b"dXNlcg==\r\n",
    b"*\r\n",
    b"@@@\r\n",
    b"BDAT 5\r\nab\r\nc",
    b"BDAT 3 LAST\r\nx\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 4 LAST\r\n.\r\n",
    b"BDAT x\r\n",
    b"MAIL FROM:<> AUTH=<>\r\n",
    b"MAIL FROM:<> RET=HDRS ENVID=a+2Bb\r\n",
    b"MAIL FROM:<> ENVID=a+0Ab\r\n",
    b"RCPT TO:<bob@mx.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+40x\r\n",
    b"RCPT TO:<bob@mx.example> NOTIFY=NEVER,DELAY\r\n",
]


@given(
    st.lists(st.sampled_from(EXTENDED_LINES), max_size=25),
    st.booleans(),
    st.sampled_from([Reply(334, None, ""), Reply(235, "2.7.0", "OK"), None]),
    st.data(),
)
def test_any_split_gives_the_same_transcript_with_auth_and_bdat(
    parts: list[bytes], eof: bool, auth_reply: Reply | None, draw: st.DataObject
) -> None:
    script = b"".join(parts)
    chunks = draw.draw(strategies.splits(script))
    replier = by_type({Auth: auth_reply} if auth_reply is not None else {})
    extensions = ("AUTH PLAIN", "CHUNKING")
    split = run(chunks, extensions=extensions, replier=replier, eof=eof)
    whole = run([script] if script else [], extensions=extensions, replier=replier, eof=eof)
    assert split == whole

"""
How :class:`~mailframe.core.ClientConnection` reads what a server sends
(RFC 5321 §4.2): anything that is not a valid reply within the limits is
one :class:`~mailframe.core.ProtocolViolation` event, never an exception
from ``next_event``, and never more buffering than the limits allow.

Every server transcript is fed whole, one byte at a time and with trailing
data (:func:`tests.core.test_client_helpers.check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailframe.address import Mailbox
from mailframe.core import (
    NEED_DATA,
    REPLY_LINE,
    ClientConnection,
    ClientData,
    ClientEhlo,
    ClientLimits,
    ClientMail,
    ClientNoop,
    ClientRcpt,
    ClientRset,
    ClientStartTls,
    ClientState,
    ConnectionClosed,
    Greeting,
    LocalProtocolError,
    ProtocolViolation,
    Response,
    Sentinel,
)
from mailframe.reply import Reply
from tests.core import strategies
from tests.core.test_client_helpers import GREETING, Group, check, feed, session

EHLO = session("250-mx.example", "250-PIPELINING", "250 STARTTLS")
NOOP: list[Group] = [[ClientNoop()]]
_EHLO = ClientEhlo("client.example")


def violation_of(script: bytes, groups: Sequence[Group] = NOOP, **kwargs: Any) -> str:
    """
    Feed *script* after the greeting, check that it ends in one violation
    (then ConnectionClosed at EOF, and nothing more), and return its reason.
    """
    transcript = check(GREETING + script, groups, eof=True, **kwargs)
    *_, violation, closed = transcript.events
    assert isinstance(violation, ProtocolViolation), transcript.events
    assert closed == ConnectionClosed()
    assert transcript.state is ClientState.CLOSED
    assert sum(isinstance(event, ProtocolViolation) for event in transcript.events) == 1
    return violation.reason


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        # RFC 5321 §4.2.1: every line of a reply has the same code.
        (session("250-first", "251 second"), "disagree on the code"),
        (session("250-first", "550 second"), "disagree on the code"),
        # Lines without a valid code.
        (session("hello"), "malformed reply line"),
        (session(""), "malformed reply line"),
        (session("25 short"), "malformed reply line"),
        (session("2500 long"), "malformed reply line"),
        (session("250_OK"), "malformed reply line"),
        (session("150 in progress"), "malformed reply line"),
        (session("650 no such class"), "malformed reply line"),
        (session("2x0 OK"), "malformed reply line"),
        (session("250-first", "OK"), "malformed reply line"),
        # RFC 5321 §2.3.8: only CRLF ends a line.
        (b"250 OK\n", "bare CR or LF"),
        (b"250 OK\nNOOP\r\n", "bare CR or LF"),
        (b"250 O\rK\r\n", "bare CR or LF"),
        (b"250-a\n250 b\r\n", "bare CR or LF"),
        # Not UTF-8.
        (b"250 caf\xe9\r\n", "not UTF-8"),
        (b"250-ok\r\n250 \xff\xfe\r\n", "not UTF-8"),
        # Too long: a line over the limit, complete or not, and too many lines.
        (b"250 " + b"x" * 4091 + b"\r\n", "longer than 4096 octets"),
        (b"250 " + b"x" * 5000, "longer than 4096 octets"),
        (session(*["250-line"] * 100, "250 last"), "more than 100 lines"),
    ],
)
def test_bad_replies(script: bytes, reason: str) -> None:
    assert reason in violation_of(script)


def test_a_reply_to_no_command() -> None:
    assert "a reply to no command" in violation_of(session("250 OK"), [])
    # One reply too many for what was sent.
    assert "a reply to no command" in violation_of(session("250 OK", "250 OK"))


@pytest.mark.parametrize(
    ("groups", "replies", "reason"),
    [
        # RFC 5321 §4.3.2: codes that the command cannot have.
        (NOOP, session("354 Go ahead"), "354 is not a reply to NOOP"),
        (NOOP, session("334 VXNlcjo="), "334 is not a reply to NOOP"),
        ([[ClientRset()]], session("354 Go"), "354 is not a reply to RSET"),
        (
            [[ClientMail(Mailbox("a", "b.example")), ClientRcpt(Mailbox("c", "d.example"))]],
            session("250 OK", "250 OK", "250 OK"),
            "a reply to no command",
        ),
        # DATA takes 354, STARTTLS 220 (RFC 5321 §4.1.1.4, RFC 3207 §4).
        (
            [
                [ClientMail(Mailbox("a", "b.example")), ClientRcpt(Mailbox("c", "d.example"))],
                [ClientData()],
            ],
            session("250 OK", "250 OK", "250 OK"),
            "250 is not a reply to DATA",
        ),
        ([[ClientStartTls()]], session("250 OK"), "250 is not a reply to STARTTLS"),
        # 354 to a DATA that the session did not let start a message.
        (
            [
                [
                    ClientMail(Mailbox("a", "b.example")),
                    ClientRcpt(Mailbox("c", "d.example")),
                    ClientData(),
                ]
            ],
            session("550 No", "503 No", "354 Go"),
            "354 to DATA in state ready",
        ),
    ],
)
def test_replies_a_command_cannot_have(groups: list[Group], replies: bytes, reason: str) -> None:
    assert reason in violation_of(EHLO + replies, [[_EHLO], *groups])


def test_a_greeting_that_is_not_220_554_or_421() -> None:
    transcript = check(session("250 mx.example"), eof=True)
    assert isinstance(transcript.events[0], ProtocolViolation)
    assert "greeting must be 220" in transcript.events[0].reason


def test_a_violation_ends_the_session() -> None:
    conn = ClientConnection()
    conn.receive_data(GREETING + b"garbage\r\n250 OK\r\n")
    assert isinstance(conn.next_event(), Greeting)
    event = conn.next_event()
    assert isinstance(event, ProtocolViolation)
    # What the server would record for the undelivered recipients.
    assert event.reply.code == 451
    assert event.reply.status == "4.5.0"
    assert conn.closed
    assert conn.buffered == 0
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"250 OK\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 0
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(ClientNoop())


def test_violation_reply_has_one_line() -> None:
    assert ProtocolViolation("a\r\nb").reply.text == ("Protocol error from the server: a b",)


def test_lines_longer_than_512_are_read_up_to_the_limit() -> None:
    """RFC 5321 §4.5.3.1.5 says 512; longer lines are read, up to reply_line."""
    line = "250 " + "x" * (4096 - 6)
    transcript = check(GREETING + session(line), NOOP)
    assert transcript.responses[0].reply == Reply(250, None, "x" * 4090)
    limits = ClientLimits(reply_line=REPLY_LINE)
    assert "longer than 512" in violation_of(session("250 " + "x" * 507), limits=limits)
    transcript = check(GREETING + session("250 " + "x" * 506), NOOP, limits=limits)
    assert transcript.codes == [250]


def test_an_unterminated_line_is_refused_at_the_limit() -> None:
    """Nothing waits for the end of a line that is already too long."""
    limits = ClientLimits(reply_line=REPLY_LINE)
    conn = ClientConnection(limits)
    conn.receive_data(GREETING)
    assert isinstance(conn.next_event(), Greeting)
    conn.send(ClientNoop())
    conn.receive_data(b"250 ")
    for _ in range(REPLY_LINE - 6):
        conn.receive_data(b"x")
        assert conn.next_event() is NEED_DATA
    # 510 octets, and a CR that may start the CRLF: still a valid line.
    conn.receive_data(b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x")
    assert isinstance(conn.next_event(), ProtocolViolation)
    assert conn.buffered == 0


def test_buffering_stays_bounded() -> None:
    """A server that sends a megabyte without a line end gets one violation."""
    conn = ClientConnection()
    conn.receive_data(GREETING)
    conn.next_event()
    conn.send(ClientNoop())
    conn.receive_data(b"250-" + b"y" * 1_000_000)
    assert isinstance(conn.next_event(), ProtocolViolation)
    assert conn.buffered == 0
    # And many short lines of one reply: cut at the line count.
    conn = ClientConnection()
    conn.receive_data(GREETING + b"250-ok\r\n" * 100_000)
    assert isinstance(conn.next_event(), Greeting)
    assert isinstance(conn.next_event(), ProtocolViolation)
    assert conn.buffered == 0


def test_a_long_multiline_reply_within_the_limits() -> None:
    lines = [f"250-{'x' * 500}"] * 99 + ["250 end"]
    transcript = check(GREETING + session(*lines), NOOP)
    assert len(transcript.responses[0].reply.text) == 100


def test_enhanced_status_codes_are_read() -> None:
    transcript = check(GREETING + session("550-5.1.1 No such user", "550 5.1.1 here"), NOOP)
    assert transcript.responses[0].reply == Reply(550, "5.1.1", ("No such user", "here"))


@given(strategies.replies())
def test_every_rendered_reply_is_read_back(reply: Reply) -> None:
    """Any reply Reply.render writes, to NOOP, comes back as Reply.parse reads it."""
    if reply.code < 300 or reply.code >= 400:
        conn = ClientConnection()
        feed(conn, GREETING)
        conn.send(ClientNoop())
        assert feed(conn, reply.render()) == [Response(ClientNoop(), Reply.parse(reply.render()))]


@given(st.binary(max_size=600), st.data())
@example(b"250-a\r\n251 b\r\n", None)
@example(b"\xff\r\n", None)
def test_arbitrary_bytes_never_raise(garbage: bytes, draw: st.DataObject | None) -> None:
    """Whatever the server sends, next_event returns events, and the buffer is bounded."""
    conn = ClientConnection(ClientLimits(reply_line=REPLY_LINE, reply_lines=3))
    conn.receive_data(GREETING)
    conn.next_event()
    conn.send(ClientNoop())
    chunks = draw.draw(strategies.splits(garbage)) if draw is not None else [garbage]
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while not isinstance(event := conn.next_event(), Sentinel):
            assert isinstance(event, Response | ProtocolViolation | ConnectionClosed)
        # What is left is part of one line, shorter than the limit.
        assert conn.buffered < REPLY_LINE
    assert conn.closed


def test_a_reply_seen_before_is_not_parsed_again() -> None:
    """
    The same octets give the very same frozen reply, from another reader
    too; a reply longer than the cache's limit is parsed each time, and the
    cache never holds more than its limit.
    """
    from mailframe.core import _client_replies as replies

    def read(data: bytes) -> Reply:
        reply = replies.ReplyReader(ClientLimits()).read(bytearray(data))
        assert reply is not None
        return reply

    first = read(b"250-2.1.0 first line\r\n250 2.1.0 Sender ok\r\n")
    assert first == Reply(250, "2.1.0", ("first line", "Sender ok"))
    assert read(b"250-2.1.0 first line\r\n250 2.1.0 Sender ok\r\n") is first
    long = b"250 2.0.0 " + b"x" * replies.PARSED_OCTETS + b"\r\n"
    assert read(long) == read(long)
    assert read(long) is not read(long)
    for number in range(replies.PARSED_REPLIES * 2):
        assert read(f"250 2.0.0 queued as {number}\r\n".encode()).text == (
            f"queued as {number}",)
        assert len(replies._PARSED) <= replies.PARSED_REPLIES

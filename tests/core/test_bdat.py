"""
CHUNKING and BDAT (RFC 3030): chunks of exactly the announced size, read
raw (no dot-stuffing, no end-of-data search), checked by the same rules as
DATA (SIZE, bare CR or LF, hops), and always read to their end, even when
refused, so that their octets are never taken for commands.

Every session script is fed whole, one byte at a time and with trailing
data (:func:`tests.core.helpers.check`).
"""

from __future__ import annotations

from typing import Any

import pytest

from mailframe.core import (
    NEED_DATA,
    PAUSED,
    BadCommand,
    Bdat,
    ConnectionClosed,
    Data,
    Limits,
    MessageData,
    Noop,
    Quit,
    Rcpt,
    ServerConnection,
    State,
)
from mailframe.core._limits import DATA_CHUNK
from mailframe.reply import Reply
from tests.core.helpers import GREETING, Transcript, answer, by_type, check, session, state

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<alice@client.example>"
RCPT = "RCPT TO:<bob@mx.example>"
CHUNKING = ("CHUNKING",)
START = session(EHLO, MAIL, RCPT)

BARE = Reply(550, "5.5.2", "Message contains a bare CR or LF; lines must end with CRLF")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunked(*chunks: bytes) -> bytes:
    """*chunks* as BDAT commands, the last one marked LAST."""
    return b"".join(bdat(chunk, index == len(chunks) - 1) for index, chunk in enumerate(chunks))


def send(script: bytes, **kwargs: Any) -> Transcript:
    kwargs.setdefault("extensions", CHUNKING)
    return check(script, **kwargs)


def one_message(*chunks: bytes, **kwargs: Any) -> tuple[bytes, Bdat]:
    transcript = send(START + chunked(*chunks) + session("QUIT"), **kwargs)
    [(data, last)] = transcript.chunked_messages
    assert transcript.codes[-1] == 221
    return data, last


# -- Chunks ----------------------------------------------------------------------------


def test_chunks_and_last() -> None:
    transcript = send(
        START + bdat(b"Subject: hi\r\n") + bdat(b"\r\nHello.\r\n", True) + b"QUIT\r\n"
    )
    assert transcript.events[3:] == [
        MessageData(b"Subject: hi\r\n"),
        Bdat(13, False, 13, b"Subject: hi\r\n", 0, None),
        MessageData(b"\r\nHello.\r\n"),
        Bdat(10, True, 23, b"Subject: hi\r\n\r\n", 0, None),
        Quit(),
    ]
    assert transcript.replies[4:] == [
        b"250 2.0.0 OK: 13 octets received\r\n",
        b"250 2.0.0 OK\r\n",
        b"221 2.0.0 Bye\r\n",
    ]
    assert transcript.errors == 0


def test_bdat_0_last() -> None:
    transcript = send(START + b"BDAT 0 LAST\r\n" + session("NOOP"))
    assert transcript.events[3:] == [Bdat(0, True, 0, b"", 0, None), Noop()]
    assert transcript.codes == [250, 250, 250, 250, 250]
    assert transcript.state is State.READY


def test_empty_chunks_before_last() -> None:
    data, last = one_message(b"", b"abc\r\n", b"", b"")
    assert data == b"abc\r\n"
    assert last == Bdat(0, True, 5, b"abc\r\n", 0, None)


@pytest.mark.parametrize(
    "line", ["BDAT 3 LAST", "bdat 3 last", "BDAT 3 Last", "BDAT  3   LAST", "BDAT 0003 LAST"]
)
def test_bdat_syntax(line: str) -> None:
    transcript = send(START + session(line) + b"abc")
    assert transcript.events[-2:] == [MessageData(b"abc"), Bdat(3, True, 3, b"abc", 0, None)]


@pytest.mark.parametrize(
    "line", ["BDAT", "BDAT ", "BDAT x", "BDAT -1", "BDAT 1.5", "BDAT 3 FIRST", "BDAT 3 LAST x"]
)
def test_bdat_syntax_errors(line: str) -> None:
    """No size, no chunk: the next line is a command."""
    transcript = send(START + session(line, "NOOP"))
    assert transcript.replies[-2:] == [
        b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.state is State.RCPT


def test_chunking_not_offered() -> None:
    transcript = check(START + session("BDAT 4 LAST", "NOOP"))
    assert transcript.replies[-2:] == [
        b"502 5.5.1 Command not implemented: BDAT\r\n",
        b"250 2.0.0 OK\r\n",
    ]


def test_chunks_are_raw() -> None:
    """RFC 3030 §2: no dot-stuffing and no end of data inside a chunk."""
    payload = b"..a\r\n.\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<v@mx.example>\r\n.\r\n"
    data, last = one_message(payload[:7], payload[7:])
    assert data == payload
    assert last.total == len(payload)
    assert last.problem is None


def test_headers_and_hops_across_chunks() -> None:
    headers = b"Received: from a\r\nReceived: from b\r\nSubject: x\r\n\r\n"
    data, last = one_message(headers[:10], headers[10:40], headers[40:] + b"body\r\n")
    assert data == headers + b"body\r\n"
    assert (last.headers, last.hops) == (headers, 2)


def test_too_many_hops() -> None:
    headers = b"".join(b"Received: from h%d.example\r\n" % i for i in range(51)) + b"\r\n"
    transcript = send(START + chunked(headers[:100], headers[100:]) + session("QUIT"))
    [(_, last)] = transcript.chunked_messages
    assert last.hops == 51
    assert last.problem == Reply(554, "5.4.6", "Too many hops (51 Received: fields)")
    assert transcript.codes[-2:] == [554, 221]
    assert transcript.errors == 0


@pytest.mark.parametrize(
    ("chunks", "bare"),
    [
        ((b"a\nb\r\n",), True),
        ((b"a\rb\r\n",), True),
        ((b"ab\r\n", b"\n"), True),
        ((b"ab\r",), True),
        ((b"ab\r", b"x\r\n"), True),
        ((b"ab\r", b"\n"), False),
        ((b"ab\r", b"", b"\ncd\r\n"), False),
        ((b"\r", b"\n\r", b"\n"), False),
    ],
)
def test_bare_line_ends(chunks: tuple[bytes, ...], bare: bool) -> None:
    """RFC 5321 §2.3.8, on the whole message: a CRLF may straddle chunks."""
    data, last = one_message(*chunks)
    assert data == b"".join(chunks)
    assert last.problem == (BARE if bare else None)


def test_pipelined_chunks_wait_for_their_replies() -> None:
    conn = ServerConnection("mx.example", extensions=CHUNKING)
    conn.send(GREETING)
    conn.receive_data(START + bdat(b"one ") + bdat(b"two", True) + b"NOOP\r\n")
    answer(conn, 3)
    assert conn.next_event() == MessageData(b"one ")
    assert state(conn) is State.CHUNK
    assert conn.next_event() == Bdat(4, False, 4, b"one ", 0, None)
    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "2.0.0", "OK"))
    assert state(conn) is State.BDAT
    assert conn.next_event() == MessageData(b"two")
    assert state(conn) is State.LAST_CHUNK
    assert isinstance(conn.next_event(), Bdat)
    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "2.0.0", "queued"))
    assert state(conn) is State.READY
    assert conn.next_event() == Noop()


def test_chunk_arriving_slowly() -> None:
    conn = ServerConnection("mx.example", extensions=CHUNKING)
    conn.send(GREETING)
    conn.receive_data(START + b"BDAT 10 LAST\r\nabc")
    answer(conn, 3)
    assert conn.next_event() == MessageData(b"abc")
    assert conn.next_event() is NEED_DATA
    assert conn.buffered_commands == 0
    conn.receive_data(b"defghijNOOP\r\n")
    assert conn.next_event() == MessageData(b"defghij")
    assert isinstance(conn.next_event(), Bdat)
    assert conn.buffered == len(b"NOOP\r\n")


# -- Sequence ------------------------------------------------------------------------------


def test_data_after_bdat() -> None:
    """RFC 3030 §2: DATA after BDAT in one transaction is 503; BDAT goes on."""
    transcript = send(START + bdat(b"a\r\n") + session("DATA") + bdat(b"b\r\n", True))
    assert transcript.replies[-3:] == [
        b"250 2.0.0 OK: 3 octets received\r\n",
        b"503 5.5.1 Error: BDAT in progress\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    [(data, _)] = transcript.chunked_messages
    assert data == b"a\r\nb\r\n"


def test_rcpt_after_bdat() -> None:
    transcript = send(START + bdat(b"a\r\n") + session("RCPT TO:<carol@mx.example>"))
    assert transcript.replies[-1] == b"503 5.5.1 Error: BDAT in progress\r\n"
    assert transcript.state is State.BDAT


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (MAIL, b"503 5.5.1 Error: nested MAIL command\r\n"),
        ("STARTTLS", b"503 5.5.1 Error: MAIL transaction in progress\r\n"),
        ("AUTH PLAIN", b"503 5.5.1 Error: MAIL transaction in progress\r\n"),
        ("NOOP", b"250 2.0.0 OK\r\n"),
    ],
)
def test_commands_between_chunks(line: str, reply: bytes) -> None:
    transcript = send(
        START + bdat(b"a\r\n") + session(line),
        extensions=("CHUNKING", "STARTTLS", "AUTH PLAIN"),
    )
    assert transcript.replies[-1] == reply
    assert transcript.state is State.BDAT


def test_bdat_after_data() -> None:
    """A transaction that used DATA is over at its end; BDAT then needs a new one."""
    transcript = send(START + session("DATA", "x", ".") + bdat(b"NOOP\r\n", True) + b"NOOP\r\n")
    assert transcript.codes[-3:] == [250, 503, 250]
    assert transcript.replies[-2] == NEED_RCPT


@pytest.mark.parametrize(
    "before",
    [
        session(EHLO),
        session(EHLO, MAIL),
        session(EHLO, MAIL, "RCPT TO:<nobody>"),
        session("HELO client.example"),
        b"",
    ],
    ids=["ready", "mail", "refused-rcpt", "helo", "greeted"],
)
def test_bdat_outside_a_transaction(before: bytes) -> None:
    """
    RFC 3030 §2: the chunk of a refused BDAT is read and thrown away, so
    that the commands inside it are never executed.
    """
    script = before + b"BDAT 12 LAST\r\nNOOP\r\nQUIT\r\n" + session("NOOP")
    transcript = send(script)
    assert transcript.replies[-2:] == [NEED_RCPT, b"250 2.0.0 OK\r\n"]
    assert transcript.events[-2] == BadCommand(
        Reply(503, "5.5.1", "Error: need RCPT command"), b"BDAT 12 LAST"
    )
    assert Quit() not in transcript.events
    assert not any(isinstance(event, MessageData) for event in transcript.events)


def test_bdat_in_no_service() -> None:
    transcript = send(
        b"BDAT 6\r\nQUIT\r\n" + session("QUIT"), greeting=Reply(554, None, "no service")
    )
    assert transcript.replies[1:] == [
        b"503 5.5.1 Error: no service here; only QUIT\r\n",
        b"221 2.0.0 Bye\r\n",
    ]


def test_refused_chunk_ends_the_transaction() -> None:
    """A chunk refused, later chunks are read and refused with 503."""
    refuse = by_type({Bdat: Reply(451, "4.3.0", "Error: queue file write error")})
    transcript = send(
        START + bdat(b"MAIL FROM:<>\r\n") + bdat(b"QUIT\r\n", True) + session("NOOP"),
        replier=refuse,
    )
    assert transcript.replies[-3:] == [
        b"451 4.3.0 Error: queue file write error\r\n",
        NEED_RCPT,
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.state is State.READY
    assert transcript.recipients == 0
    # The refused chunk was no client error; the stray BDAT after it was.
    assert transcript.errors == 1


@pytest.mark.parametrize("reply", [Reply(250, "2.0.0", "OK"), Reply(554, "5.7.1", "Spam")])
def test_any_reply_to_last_ends_the_transaction(reply: Reply) -> None:
    transcript = send(START + chunked(b"x\r\n") + session(RCPT), replier=by_type({Bdat: reply}))
    assert transcript.replies[-1] == b"503 5.5.1 Error: need MAIL command\r\n"
    assert transcript.state is State.READY


@pytest.mark.parametrize("reset", ["RSET", EHLO])
def test_reset_between_chunks(reset: str) -> None:
    transcript = send(START + bdat(b"a\r\n") + session(reset) + bdat(b"NOOP\r\n", True))
    assert transcript.replies[-1] == NEED_RCPT
    assert transcript.state is State.READY


def test_bdat_after_helo() -> None:
    """CHUNKING is served to what the server offers, as Postfix does."""
    transcript = send(session("HELO client.example", MAIL, RCPT) + chunked(b"x\r\n"))
    assert transcript.codes[-1] == 250
    assert isinstance(transcript.events[-1], Bdat)


def test_two_messages() -> None:
    transcript = send(START + chunked(b"one\r\n") + session(MAIL, RCPT) + chunked(b"tw", b"o\r\n"))
    assert [data for data, _ in transcript.chunked_messages] == [b"one\r\n", b"two\r\n"]
    assert [last.total for _, last in transcript.chunked_messages] == [5, 5]


def test_data_still_works() -> None:
    transcript = send(START + session("DATA", "x", ".", MAIL, RCPT) + chunked(b"y\r\n"))
    assert transcript.codes == [250, 250, 250, 354, 250, 250, 250, 250]
    assert transcript.messages[0][0] == b"x\r\n"
    assert transcript.chunked_messages[0][0] == b"y\r\n"
    assert Data() in transcript.events


def test_recipient_limit_still_applies() -> None:
    rcpts = [f"RCPT TO:<r{i}@mx.example>" for i in range(101)]
    transcript = send(
        session(EHLO, MAIL, *rcpts) + chunked(b"x\r\n"), limits=Limits(max_recipients=100)
    )
    assert transcript.codes[-2:] == [452, 250]
    assert sum(isinstance(event, Rcpt) for event in transcript.events) == 100


# -- SIZE (RFC 1870, RFC 3030 §2) -----------------------------------------------------------


def test_chunk_past_size_is_read_to_its_end() -> None:
    limits = Limits(max_message_size=10)
    script = START + bdat(b"12345678") + bdat(b"abcdefgh") + bdat(b"NOOP\r\n", True)
    transcript = send(script + session("NOOP"), limits=limits)
    assert transcript.events[3:7] == [
        MessageData(b"12345678"),
        Bdat(8, False, 8, b"12345678", 0, None),
        MessageData(b"ab"),
        Bdat(8, False, 16, b"12345678abcdefgh", 0, TOO_BIG),
    ]
    assert transcript.replies[-4:] == [
        b"250 2.0.0 OK: 8 octets received\r\n",
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        NEED_RCPT,
        b"250 2.0.0 OK\r\n",
    ]
    assert transcript.state is State.READY
    assert transcript.errors == 1


def test_last_chunk_past_size() -> None:
    limits = Limits(max_message_size=10)
    data, last = one_message(b"x" * 6, b"y" * 6, limits=limits)
    assert data == b"x" * 6 + b"y" * 4
    assert (last.total, last.problem) == (12, TOO_BIG)


def test_message_at_the_limit() -> None:
    data, last = one_message(b"x" * 6, b"y" * 2 + b"\r\n", limits=Limits(max_message_size=10))
    assert last.problem is None
    assert len(data) == 10


def test_memory_stays_bounded_over_the_limit() -> None:
    limits = Limits(max_message_size=1024 * 1024)
    conn = ServerConnection("mx.example", limits, CHUNKING)
    conn.send(GREETING)
    block = (b"x" * 998 + b"\r\n") * 64
    conn.receive_data(START + b"BDAT %d LAST\r\n" % (200 * len(block)))
    answer(conn, 3)
    passed = 0
    for _ in range(200):  # 12.8 MB
        conn.receive_data(block)
        while True:
            event = conn.next_event()
            if event is NEED_DATA or isinstance(event, Bdat):
                break
            assert isinstance(event, MessageData)
            passed += len(event.data)
        assert conn.buffered < len(block)
    assert isinstance(event, Bdat)
    assert passed == limits.max_message_size
    assert event.total == 200 * len(block)
    assert event.problem == TOO_BIG


def test_a_refused_chunk_is_discarded_without_buffering() -> None:
    conn = ServerConnection("mx.example", extensions=CHUNKING)
    conn.send(GREETING)
    conn.receive_data(session(EHLO) + b"BDAT 10000000\r\n")
    answer(conn)
    for _ in range(99):
        conn.receive_data(b"z" * 100_000)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == 0
    conn.receive_data(b"z" * 100_000 + b"NOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, BadCommand) and event.reply.code == 503
    conn.send(conn.default_reply(event))
    assert conn.next_event() == Noop()


# -- End of input --------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"BDAT 10 LAST\r\n", b"BDAT 10 LAST\r\nabc", b"BDAT 10"])
def test_disconnect_mid_chunk(sent: bytes) -> None:
    transcript = send(START + sent, eof=True, feedings=("whole", "bytewise"))
    assert transcript.events[-1] == ConnectionClosed()
    assert not any(isinstance(event, Bdat) for event in transcript.events)


def test_disconnect_mid_refused_chunk() -> None:
    transcript = send(session(EHLO) + b"BDAT 10 LAST\r\nabc", eof=True, feedings=("whole",))
    assert transcript.events[-1] == ConnectionClosed()
    assert transcript.codes == [250]


def test_data_events_are_bounded() -> None:
    conn = ServerConnection("mx.example", Limits(max_message_size=0), CHUNKING)
    conn.send(GREETING)
    size = 5 * DATA_CHUNK + 7
    conn.receive_data(START + b"BDAT %d LAST\r\n" % size + b"y" * size + b"NOOP\r\n")
    answer(conn, 3)
    pieces = []
    while isinstance(event := conn.next_event(), MessageData):
        pieces.append(len(event.data))
    assert isinstance(event, Bdat) and event.total == size
    assert max(pieces) == DATA_CHUNK
    assert sum(pieces) == size

"""
Message data: the end of data is CRLF.CRLF only (RFC 5321 §4.1.1.4,
§2.3.8), dot-unstuffing is exact (§4.5.2) and everything else passes through
byte for byte. SIZE (RFC 1870) and the hop count (§6.3) are checked at the end
of data.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailframe.core import (
    NEED_DATA,
    ConnectionClosed,
    EndOfMessage,
    Limits,
    Mail,
    MessageData,
    Quit,
    Rcpt,
    ServerConnection,
    State,
)
from mailframe.core._limits import DATA_CHUNK, HEADER_CAPTURE
from mailframe.reply import Reply
from tests.core.helpers import GREETING, answer, check, run, session, split

START = session(
    "EHLO client.example", "MAIL FROM:<alice@client.example>", "RCPT TO:<bob@mx.example>", "DATA"
)

BARE = Reply(550, "5.5.2", "Message contains a bare CR or LF; lines must end with CRLF")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")


def unstuff(sent: bytes) -> bytes:
    """What a receiver makes of the data *sent* after DATA (RFC 5321 §4.5.2)."""
    return (b"\r\n" + sent).replace(b"\r\n.", b"\r\n")[2:]


def one_message(sent: bytes, **kwargs: Any) -> tuple[bytes, EndOfMessage]:
    """Send *sent* as message data (it must end with CRLF.CRLF); one message."""
    transcript = check(START + sent + b"QUIT\r\n", **kwargs)
    [(data, end)] = transcript.messages
    assert transcript.codes[-1] == 221
    return data, end


# -- Ends of data and dot-unstuffing ---------------------------------------------


def test_empty_message() -> None:
    assert one_message(b".\r\n") == (b"", EndOfMessage(0, b"", 0, None))


def test_message_of_one_empty_line() -> None:
    assert one_message(b"\r\n.\r\n") == (b"\r\n", EndOfMessage(2, b"\r\n", 0, None))


@pytest.mark.parametrize(
    ("sent", "data"),
    [
        # The first line is unstuffed too.
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..hidden\r\n.\r\n", b".hidden\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n..\r\n..\r\n.\r\n", b"a\r\n.\r\n.\r\n"),
        (b"a\r\n...x\r\n.\r\n", b"a\r\n..x\r\n"),
        # A dot that is not at the start of a line stays.
        (b"a.\r\nb..c\r\n .\r\n.\r\n", b"a.\r\nb..c\r\n .\r\n"),
        # Whitespace, NUL, 8-bit octets and trailing spaces pass untouched.
        (b"x \t\x00\xff\xfe  \r\n\r\n  \r\n.\r\n", b"x \t\x00\xff\xfe  \r\n\r\n  \r\n"),
    ],
)
def test_dot_unstuffing(sent: bytes, data: bytes) -> None:
    assert one_message(sent)[0] == data
    assert unstuff(sent[:-3]) == data


def test_stuffed_dot_right_after_a_chunk_boundary() -> None:
    """Split just after CRLF, before the stuffed dot, and inside ".." lines."""
    sent = b"a\r\n..b\r\n..\r\nc\r\n.\r\n"
    expected = b"a\r\n.b\r\n.\r\nc\r\n"
    for cut in range(len(sent) + 1):
        for second in range(cut, len(sent) + 1):
            chunks = [START, sent[:cut], sent[cut:second], sent[second:]]
            # (An empty chunk would mean the end of input.)
            [(data, end)] = run([chunk for chunk in chunks if chunk]).messages
            assert data == expected, (cut, second)
            assert end.problem is None


def test_data_then_pipelined_commands() -> None:
    transcript = check(
        START + b"x\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@mx.example>\r\nDATA\r\ny\r\n.\r\nQUIT\r\n"
    )
    assert [data for data, _ in transcript.messages] == [b"x\r\n", b"y\r\n"]
    assert transcript.codes == [250, 250, 250, 354, 250, 250, 250, 354, 250, 221]


def test_state_during_data() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(START + b"abc")
    answer(conn, 4)
    assert conn.state is State.DATA
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\nQUIT\r\n")
    assert conn.next_event() == MessageData(b"abc\r\nQUIT\r\n")
    assert conn.next_event() is NEED_DATA


# -- Long lines (RFC 5321 §4.5.3.1.6) --------------------------------------------------


def test_long_text_lines_pass_through() -> None:
    line = bytes(range(32, 127)) * 20
    assert len(line) > 1000
    data, end = one_message(line + b"\r\n" + b"." + line + b"\r\n.\r\n")
    assert data == line + b"\r\n" + line + b"\r\n"
    assert end.problem is None


@pytest.mark.parametrize("tail", [b"\r\n", b"\r\r\n"])
def test_line_longer_than_a_data_chunk(tail: bytes) -> None:
    line = b"y" * (DATA_CHUNK - 1)
    sent = b"x" * (DATA_CHUNK + 10) + b"\r\n" + line + tail + b".\r\n"
    data, end = one_message(sent, feedings=("whole", "trailing"))
    assert data == sent[:-3]
    assert end.size == len(sent) - 3
    assert end.problem == (None if tail == b"\r\n" else BARE)
    # Cut at every place near the chunk size: a CR held back at a cut is not
    # taken for a bare one.
    for cut in range(DATA_CHUNK - 3, DATA_CHUNK + 3):
        head = START + b"x" * DATA_CHUNK
        rest = sent[DATA_CHUNK:]
        chunks = [head[:-2] + b"\r", b"\n" + rest[:cut], rest[cut:]]
        [(data, end)] = run(chunks).messages
        assert data == b"x" * (DATA_CHUNK - 2) + b"\r\n" + rest[:-3]


def test_long_line_fed_one_octet_at_a_time() -> None:
    sent = b"z" * (DATA_CHUNK * 2 + 5) + b"\r\n.\r\n"
    [(data, end)] = run(split(START + sent, 1)).messages
    assert data == sent[:-3]
    assert end.problem is None


# -- SMTP smuggling: CRLF.CRLF only ---------------------------------------------------------

SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\n\n.\n\n",
    b"\r\r.\r\r",
]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
def test_smuggling(sequence: bytes) -> None:
    """
    A smuggled end of data ends nothing: what follows it is data, never
    commands, until the real CRLF.CRLF, and the message is refused.
    """
    smuggled = (
        b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@mx.example>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nGotcha\r\n"
    )
    payload = b"Subject: real\r\n\r\nbody" + sequence + smuggled
    transcript = check(START + payload + b".\r\nQUIT\r\n")
    [(data, end)] = transcript.messages
    assert data == unstuff(payload)
    assert b"evil@attacker.example" in data
    assert end.problem == BARE
    assert end.size == len(data)
    commands = [e for e in transcript.events if isinstance(e, Mail | Rcpt)]
    assert len(commands) == 2
    assert transcript.codes == [250, 250, 250, 354, 550, 221]
    assert transcript.events[-1] == Quit()


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
def test_smuggling_at_the_start_of_data(sequence: bytes) -> None:
    transcript = check(START + sequence + b"QUIT\r\n.\r\nNOOP\r\n")
    [(data, end)] = transcript.messages
    assert data == unstuff(sequence + b"QUIT\r\n")
    assert end.problem == BARE
    assert transcript.codes[-2:] == [550, 250]


@pytest.mark.parametrize(
    "sequence",
    [b"\r\n\x00.\r\n", b"\r\n .\r\n", b"\r\n.\x00\r\n", b"\r\n. \r\n", b"\r\n..\r\n"],
    ids=repr,
)
def test_near_terminators_are_data(sequence: bytes) -> None:
    payload = b"body" + sequence + b"MAIL FROM:<evil@attacker.example>\r\n"
    transcript = check(START + payload + b".\r\nQUIT\r\n")
    [(data, end)] = transcript.messages
    assert data == unstuff(payload)
    assert end.problem is None
    assert transcript.codes == [250, 250, 250, 354, 250, 221]


@pytest.mark.parametrize("bare", [b"\r", b"\n"])
@pytest.mark.parametrize("where", ["header", "body", "last"])
def test_bare_line_ends_refuse_the_message(bare: bytes, where: str) -> None:
    text = {
        "header": b"Subject: a" + bare + b"b\r\n\r\nbody\r\n",
        "body": b"Subject: a\r\n\r\nbo" + bare + b"dy\r\n",
        "last": b"Subject: a\r\n\r\nbody" + bare + b"\r\n",
    }[where]
    data, end = one_message(text + b".\r\n")
    assert data == text
    assert end.problem == BARE
    assert check(START + text + b".\r\nQUIT\r\n").codes[-2:] == [550, 221]


def test_refused_message_returns_to_ready() -> None:
    transcript = check(START + b"a\nb\r\n.\r\n" + session("MAIL FROM:<>", "QUIT"))
    assert transcript.codes[-3:] == [550, 250, 221]


# -- Disconnects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent", [b"", b"Subject: x\r\n", b"partial", b"x\r\n.", b"x\r\n.\r", b"x\r\n\r\n.\r"]
)
def test_disconnect_mid_data(sent: bytes) -> None:
    transcript = check(START + sent, eof=True)
    assert transcript.events[-1] == ConnectionClosed()
    assert not any(isinstance(event, EndOfMessage) for event in transcript.events)
    assert transcript.codes[-1] == 354


def test_nothing_after_connection_closed() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    conn.receive_data(START + b"abc")
    answer(conn, 4)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    for _ in range(3):
        assert conn.next_event() is NEED_DATA
    assert conn.buffered == 0


# -- SIZE (RFC 1870) -----------------------------------------------------------------------------


def test_message_at_the_limit_is_accepted() -> None:
    limits = Limits(max_message_size=100)
    body = b"x" * 98 + b"\r\n"
    data, end = one_message(b"." + body + b".\r\n", limits=limits)
    assert end == EndOfMessage(100, body, 0, None)
    assert data == body


def test_message_over_the_limit_is_refused_at_the_end() -> None:
    """RFC 1870 §6.3: never in the middle; data events stop at the limit."""
    limits = Limits(max_message_size=100)
    body = b"".join(b"line %03d\r\n" % i for i in range(30))
    transcript = check(START + body + b".\r\nQUIT\r\n", limits=limits)
    [(data, end)] = transcript.messages
    assert end.problem == TOO_BIG
    assert end.size == len(body)
    assert data == body[:100]
    assert transcript.codes == [250, 250, 250, 354, 552, 221]
    assert transcript.replies[-2] == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    )


def test_size_is_counted_after_unstuffing() -> None:
    limits = Limits(max_message_size=8)
    assert one_message(b"..a\r\n..b\r\n.\r\n", limits=limits)[1].problem is None
    assert one_message(b"..a\r\n..bc\r\n.\r\n", limits=limits)[1].problem == TOO_BIG


def test_memory_stays_bounded_over_the_limit() -> None:
    limits = Limits(max_message_size=1024 * 1024)
    conn = ServerConnection("mx.example", limits)
    conn.send(GREETING)
    conn.receive_data(START)
    answer(conn, 4)
    block = (b"x" * 998 + b"\r\n") * 64
    passed = 0
    for _ in range(200):  # 12.8 MB
        conn.receive_data(block)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, MessageData)
            passed += len(event.data)
        assert conn.buffered < len(block)
    conn.receive_data(b".\r\n")
    end = conn.next_event()
    assert isinstance(end, EndOfMessage)
    assert passed == limits.max_message_size
    assert end.size == 200 * len(block)
    assert end.problem == TOO_BIG


def test_no_size_limit() -> None:
    data, end = one_message(
        b"x" * 5000 + b"\r\n.\r\n",
        limits=Limits(max_message_size=0),
        feedings=("whole", "trailing"),
    )
    assert end.problem is None
    assert len(data) == 5002


# -- Headers and hops (RFC 5321 §6.3) --------------------------------------------------------


def received(count: int) -> bytes:
    return b"".join(b"Received: from h%d.example by mx.example; x\r\n" % i for i in range(count))


def test_headers_and_hops() -> None:
    headers = received(3) + b"RECEIVED: from a\r\n\tby b\r\nreceived:c\r\nX-Received: no\r\n"
    _data, end = one_message(headers + b"\r\nReceived: in the body\r\n.\r\n")
    assert end.headers == headers + b"\r\n"
    assert end.hops == 5
    assert end.problem is None


def test_fifty_hops_pass() -> None:
    assert one_message(received(50) + b"\r\nbody\r\n.\r\n")[1].problem is None


def test_too_many_hops() -> None:
    end = one_message(received(51) + b"\r\nbody\r\n.\r\n")[1]
    assert end.hops == 51
    assert end.problem == Reply(554, "5.4.6", "Too many hops (51 Received: fields)")


def test_too_many_hops_in_a_message_of_headers_only() -> None:
    end = one_message(received(51) + b".\r\n")[1]
    assert end.hops == 51
    assert end.problem is not None and end.problem.status == "5.4.6"


def test_max_hops_is_configurable() -> None:
    end = one_message(received(3) + b"\r\n.\r\n", limits=Limits(max_hops=2))[1]
    assert end.problem is not None and end.problem.code == 554


def test_header_capture_is_capped() -> None:
    headers = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 60) for i in range(1200))
    data, end = one_message(headers + b"\r\nbody\r\n.\r\n", feedings=("whole", "trailing"))
    assert len(end.headers) == HEADER_CAPTURE
    assert end.headers == headers[:HEADER_CAPTURE]
    assert data == headers + b"\r\nbody\r\n"


def test_message_without_headers() -> None:
    _data, end = one_message(b"\r\nbody only\r\n.\r\n")
    assert end.headers == b"\r\n"
    assert end.hops == 0

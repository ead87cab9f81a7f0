"""
Command line limits: 512 octets with CRLF (RFC 5321 §4.5.3.1.4) plus what
advertised extensions add (RFC 1870 §3, RFC 3461 §4, RFC 4954 §5); a longer
line is answered once with 500 5.5.2 and the buffer stays bounded. Path and
local part lengths (§4.5.3.1.1, §4.5.3.1.3) are sizes to accept, not limits.
"""

from __future__ import annotations

import pytest

from mailframe.address import Mailbox
from mailframe.core import (
    AUTH_MAIL_EXTRA,
    COMMAND_LINE,
    DSN_MAIL_EXTRA,
    DSN_RCPT_EXTRA,
    NEED_DATA,
    SIZE_MAIL_EXTRA,
    BadCommand,
    Limits,
    Mail,
    Noop,
    Rcpt,
    ServerConnection,
)
from mailframe.reply import Reply
from tests.core.helpers import GREETING, check, run, session, split

EHLO = "EHLO client.example"
TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
#: The default line limit: SIZE and DSN are advertised.
LIMIT = COMMAND_LINE + max(SIZE_MAIL_EXTRA + DSN_MAIL_EXTRA, DSN_RCPT_EXTRA)


def mail_line(length: int) -> bytes:
    """A MAIL line of *length* octets with its CRLF, padded in the domain."""
    head = b"MAIL FROM:<a@"
    tail = b".example> SIZE=1000\r\n"
    labels = b"d" * (length - len(head) - len(tail))
    # Labels of at most 63 octets (the grammar does not care, DNS does).
    domain = b".".join(split(labels, 63)).replace(b"..", b".d")
    line = head + domain[: len(labels)] + tail
    assert len(line) == length
    return line


def test_line_limit_values() -> None:
    assert LIMIT == 1012
    assert ServerConnection("mx.example").line_limit == LIMIT
    # DSN is advertised once, however often it is asked for.
    assert ServerConnection("mx.example", extensions=("DSN",)).line_limit == LIMIT
    without_dsn = ServerConnection("mx.example", dsn=False)
    assert without_dsn.line_limit == COMMAND_LINE + SIZE_MAIL_EXTRA == 538
    auth = ServerConnection("mx.example", extensions=("AUTH PLAIN LOGIN",))
    assert auth.line_limit == COMMAND_LINE + SIZE_MAIL_EXTRA + DSN_MAIL_EXTRA + AUTH_MAIL_EXTRA
    without_dsn = ServerConnection("mx.example", extensions=("AUTH PLAIN",), dsn=False)
    assert without_dsn.line_limit == COMMAND_LINE + SIZE_MAIL_EXTRA + AUTH_MAIL_EXTRA
    wider = ServerConnection("mx.example", Limits(command_line=1000))
    assert wider.line_limit == 1000 + DSN_RCPT_EXTRA
    with pytest.raises(ValueError, match="command_line"):
        Limits(command_line=511)


def test_longest_line_is_accepted() -> None:
    transcript = check(session(EHLO) + mail_line(LIMIT))
    assert isinstance(transcript.events[-1], Mail)
    assert transcript.codes == [250, 250]


def test_one_octet_more_is_refused() -> None:
    line = mail_line(LIMIT + 1)
    transcript = check(session(EHLO) + line + b"NOOP\r\n")
    assert transcript.replies[-2:] == [TOO_LONG, b"250 2.0.0 OK\r\n"]
    event = transcript.events[-2]
    # The event keeps as much of the line as a command may have, however the
    # line arrived.
    assert event == BadCommand(Reply(500, "5.5.2", "Error: line too long"), line[: LIMIT - 2])


@pytest.mark.parametrize("extra", [0, 1, 2, 3, 1000])
def test_too_long_lines_around_the_limit(extra: int) -> None:
    line = b"NOOP " + b"n" * (LIMIT - 7 + extra) + b"\r\n"
    transcript = check(session(EHLO) + line + b"NOOP\r\n")
    expected = [b"250 2.0.0 OK\r\n"] if extra == 0 else [TOO_LONG]
    assert transcript.replies[2:] == [*expected, b"250 2.0.0 OK\r\n"]


def test_a_megabyte_without_crlf_is_discarded() -> None:
    """Answered once, when its CRLF comes; the buffer never holds it."""
    line = b"X" * (1024 * 1024)
    script = session(EHLO) + line + b"\r\nNOOP\r\n"
    transcripts = [
        run([script]),
        run([script + b"NOOP"]),
        run(split(script, 4096)),
        run(split(script, 4095)),
    ]
    for transcript in transcripts:
        assert transcript == transcripts[0]
    assert transcripts[0].replies[2:] == [TOO_LONG, b"250 2.0.0 OK\r\n"]


def test_buffer_stays_bounded_while_discarding() -> None:
    conn = ServerConnection("mx.example")
    conn.send(GREETING)
    for _ in range(256):
        conn.receive_data(b"Y" * 4096)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered <= conn.line_limit
    conn.receive_data(b"\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, BadCommand)
    assert conn.send(conn.default_reply(event)) == b"500 5.5.2 Error: line too long\r\n"
    assert conn.next_event() == Noop()
    assert conn.buffered == 0


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1, 10_000])
def test_crlf_split_across_a_discard(size: int) -> None:
    """A CR at the end of what is discarded still pairs with the LF after it."""
    line = b"Z" * size
    script = session(EHLO) + line + b"\r\nNOOP\r\n"
    cut = len(session(EHLO)) + size + 1  # between CR and LF
    transcript = run([script[:cut], script[cut:]])
    assert transcript == check(script)
    assert transcript.replies[2:] == [TOO_LONG, b"250 2.0.0 OK\r\n"]


def test_long_line_then_eof() -> None:
    transcript = check(session(EHLO) + b"W" * 5000, eof=True, feedings=("whole", "trailing"))
    assert transcript.codes == [250]


def test_long_paths_that_fit_the_line_are_accepted() -> None:
    """RFC 5321 §4.5.3.1: 64, 255 and 256 are minimums to accept."""
    local = "l" * 100
    domain = ".".join(["d" * 60] * 5)
    path = f"<{local}@{domain}>"
    assert len(path) > 256
    transcript = check(session(EHLO, f"MAIL FROM:{path}", f"RCPT TO:{path}"))
    assert transcript.codes == [250, 250, 250]
    assert transcript.events[-1] == Rcpt(Mailbox(local, domain))


def test_buffered_commands_counts_owed_replies() -> None:
    conn = ServerConnection("mx.example")
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(b"EHLO a\r\nNOOP\r\nNOOP\r\nNO")
    assert conn.buffered_commands == 3
    conn.next_event()
    assert conn.buffered_commands == 2

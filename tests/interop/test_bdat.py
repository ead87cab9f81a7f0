"""
CHUNKING (RFC 3030) with a raw client, against ``twistd -n mailframe``:
BDAT chunks of every size delivered byte for byte, BDAT out of sequence,
BDAT past the size limit, and pipelined BDAT.

The octets of a chunk are never commands: where a test sends a chunk that
the server refuses, the chunk holds ``QUIT``, which would end the session
if the server took it for a command.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.interop.conftest import RawSMTP, Server, start_server, wait_until

pytestmark = pytest.mark.interop

LOOKS_LIKE_COMMANDS = b"QUIT\r\nRSET\r\n"


#: The spool's directories that hold entries and their delivery state.
SPOOL_ENTRY_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "env")


def spooled(spool: pathlib.Path) -> list[str]:
    """Every file left in the spool's entry directories, as ``directory/name``."""
    return [f"{d}/{name}" for d in SPOOL_ENTRY_DIRS if (spool / d).is_dir()
            for name in sorted(os.listdir(spool / d))]


def bdat(raw: RawSMTP, chunk: bytes, last: bool = False) -> tuple[int, bytes]:
    """Send one BDAT command and its chunk; return the reply."""
    raw.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return raw.reply()


def session(server: Server) -> RawSMTP:
    raw = RawSMTP(server.port)
    assert raw.reply()[0] == 220
    code, reply = raw.command(b"EHLO client.example")
    assert code == 250, reply
    return raw


def test_ehlo_offers_chunking(server: Server) -> None:
    with session(server) as raw:
        code, reply = raw.command(b"EHLO client.example")
        assert code == 250
        keywords = [line[4:] for line in reply.split(b"\r\n")[1:] if line]
        assert b"CHUNKING" in keywords, reply


def test_chunks_are_delivered_byte_for_byte(server: Server) -> None:
    header = (b"From: sender@example.org\r\nTo: alice@example.com\r\n"
              b"Subject: in chunks\r\n\r\n")
    # A lone dot, dots that DATA would unstuff, and a CRLF split across
    # two chunks: BDAT data is taken exactly as sent.
    second = (b"first line\r\n.\r\n..two dots stay two\r\n.one dot\r\n"
              b"this line ends in the next chunk\r")
    line = b"z" * 1022 + b"\r\n"
    big = b"\n" + line * 1023 + b"w" * 1021 + b"\r\n"
    assert len(big) == 1024 * 1024
    last = b"the end\r\n"
    chunks = [header, second, big, last]
    with session(server) as raw:
        assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert raw.command(b"RCPT TO:<alice@example.com>")[0] == 250
        for chunk in chunks:
            code, reply = bdat(raw, chunk)
            assert (code, reply) == (250, b"250 2.0.0 %d octets received\r\n" % len(chunk))
        code, reply = bdat(raw, b"", last=True)
        assert code == 250 and reply.startswith(b"250 2.0.0 Ok: queued as "), reply
        queue_id = reply.split()[-1].decode()
        assert raw.command(b"QUIT")[0] == 221
    [delivered] = server.wait_delivered("alice", 1)
    # Maildir stores LF line ends; everything else is as sent.
    expected = b"".join(chunks).replace(b"\r\n", b"\n")
    trace, _, message = delivered.partition(b"\nFrom: sender@example.org\n")
    assert b"From: sender@example.org\n" + message == expected
    assert trace.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: alice@example.com\n"
                            b"Received: from client.example (unknown [127.0.0.1])\n"), trace
    assert f" with ESMTP id {queue_id}\n".encode() in trace, trace


def test_data_after_bdat_is_refused(server: Server) -> None:
    with session(server) as raw:
        assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert raw.command(b"RCPT TO:<alice@example.com>")[0] == 250
        assert bdat(raw, b"Subject: mixed\r\n\r\n")[0] == 250
        code, reply = raw.command(b"DATA")
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        # The transaction goes on with BDAT.
        assert bdat(raw, b"body\r\n", last=True)[0] == 250
        assert raw.command(b"QUIT")[0] == 221
    [delivered] = server.wait_delivered("alice", 1)
    assert delivered.endswith(b"\nSubject: mixed\n\nbody\n")


@pytest.mark.parametrize("before", ["MAIL", "RCPT"])
def test_bdat_out_of_sequence_consumes_its_chunk(server: Server, before: str) -> None:
    with session(server) as raw:
        if before == "RCPT":
            assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        code, reply = bdat(raw, LOOKS_LIKE_COMMANDS)
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        code, reply = bdat(raw, LOOKS_LIKE_COMMANDS, last=True)
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        # In sync: the next reply answers the next command.
        assert raw.command(b"NOOP") == (250, b"250 2.0.0 OK\r\n")
        if before == "MAIL":
            assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert raw.command(b"RCPT TO:<alice@example.com>")[0] == 250
        assert bdat(raw, b"Subject: in order now\r\n\r\nhi\r\n", last=True)[0] == 250
        assert raw.command(b"QUIT")[0] == 221
    [delivered] = server.wait_delivered("alice", 1)
    assert delivered.endswith(b"\nSubject: in order now\n\nhi\n")


@pytest.fixture
def small_server(tmp_path: pathlib.Path) -> Iterator[Server]:
    running = start_server(tmp_path, ["--max-message-size", "1000"])
    yield running
    running.stop()


def test_chunk_past_the_size_limit(small_server: Server) -> None:
    server = small_server
    with session(server) as raw:
        code, reply = raw.command(b"EHLO client.example")
        assert b"250-SIZE 1000\r\n" in reply, reply
        assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert raw.command(b"RCPT TO:<alice@example.com>")[0] == 250
        assert bdat(raw, b"Subject: too big\r\n\r\n" + b"x" * 578 + b"\r\n")[0] == 250
        # 1200 octets in all: this chunk is read to its end, then refused.
        code, reply = bdat(raw, LOOKS_LIKE_COMMANDS + b"y" * 586 + b"\r\n")
        assert reply == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        assert raw.command(b"NOOP") == (250, b"250 2.0.0 OK\r\n")
        # The transaction is over: a last chunk has nothing to end.
        code, reply = bdat(raw, b"", last=True)
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        # A message within the limit, in the same session, goes through.
        assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert raw.command(b"RCPT TO:<bob@example.com>")[0] == 250
        assert bdat(raw, b"Subject: small\r\n\r\nok\r\n", last=True)[0] == 250
        assert raw.command(b"QUIT")[0] == 221
    server.wait_delivered("bob", 1)
    wait_until(lambda: not spooled(server.queue), 30,
               f"an empty spool: {spooled(server.queue)}")
    assert server.delivered("alice") == []
    assert os.listdir(server.queue / "tmp") == []


def test_pipelined_bdat_replies_in_order(server: Server) -> None:
    header, body, other = b"Subject: pipelined\r\n\r\n", b"hello\r\n", b"second\r\n"
    with session(server) as raw:
        # Two transactions and a NOOP in one write (RFC 2920, RFC 3030 §4.2).
        raw.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
                 + b"BDAT %d\r\n" % len(header) + header
                 + b"BDAT %d\r\n" % len(body) + body
                 + b"BDAT 0 LAST\r\nNOOP\r\n"
                 + b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
                 + b"BDAT %d LAST\r\n" % len(other) + other
                 + b"QUIT\r\n")
        replies = [raw.reply()[1] for _ in range(10)]
        assert raw.at_eof()
    assert replies[0] == b"250 2.1.0 OK\r\n", replies
    assert replies[1] == b"250 2.1.5 OK\r\n", replies
    assert replies[2] == b"250 2.0.0 %d octets received\r\n" % len(header), replies
    assert replies[3] == b"250 2.0.0 %d octets received\r\n" % len(body), replies
    assert replies[4].startswith(b"250 2.0.0 Ok: queued as "), replies
    assert replies[5] == b"250 2.0.0 OK\r\n", replies
    assert replies[6] == b"250 2.1.0 OK\r\n", replies
    assert replies[7] == b"250 2.1.5 OK\r\n", replies
    assert replies[8].startswith(b"250 2.0.0 Ok: queued as "), replies
    assert replies[8] != replies[4]
    assert replies[9].startswith(b"221 "), replies
    [first] = server.wait_delivered("alice", 1)
    assert first.endswith(b"\nSubject: pipelined\n\nhello\n")
    [second] = server.wait_delivered("bob", 1)
    assert b" with ESMTP id " + replies[8].split()[-1] + b"\n" in second
    assert second.endswith(b"\nsecond\n")

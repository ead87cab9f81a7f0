"""
Interoperation with swaks, against ``twistd -n mailframe``: pipelining,
relay control with and without the loopback default, and an unknown MAIL
parameter.

swaks exit codes (swaks(1), "EXIT CODES"): 0 no error, 23 error in MAIL,
24 no recipient accepted.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from tests.interop.conftest import RawSMTP, Server, require, start_server

pytestmark = pytest.mark.interop


def swaks(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("swaks"), "--server", f"127.0.0.1:{server.port}", "--timeout", "30",
         "--helo", "swaks.example", "--from", "sender@example.org", *args],
        capture_output=True, text=True, timeout=60,
    )


def server_replies(output: str) -> list[str]:
    """The server's lines in swaks's transcript (``<-`` and, for errors, ``<**``)."""
    return [m.group(1) for m in re.finditer(r"^<(?:-|\*\*) +(.*)$", output, re.M)]


def client_lines(output: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^ (?:->|\*\*>) (.*)$", output, re.M)]


def sent_message(output: str) -> bytes:
    """The message swaks sent after DATA, dot-unstuffed, with LF line ends."""
    sent = client_lines(output)
    lines = sent[sent.index("DATA") + 1:sent.index(".")]
    assert lines, output
    return "".join((line[1:] if line.startswith(".") else line) + "\n" for line in lines).encode()


@pytest.fixture
def closed_relay(tmp_path: pathlib.Path) -> Iterator[Server]:
    running = start_server(tmp_path, ["--relay-network", "none"])
    yield running
    running.stop()


def assert_queued(replies: Sequence[str]) -> str:
    queued = [r for r in replies if r.startswith("250 2.0.0 Ok: queued as ")]
    assert len(queued) == 1, replies
    return queued[0].split()[-1]


def test_pipelined_delivery(server: Server) -> None:
    result = swaks(server, "--pipeline", "--to", "alice@example.com",
                   "--header", "Subject: swaks pipelined", "--body", "line one\n.dot\nend")
    assert result.returncode == 0, result.stdout + result.stderr
    sent = client_lines(result.stdout)
    # swaks really pipelined: MAIL, RCPT and DATA went out before any reply.
    first = sent.index("MAIL FROM:<sender@example.org>")
    assert sent[first:first + 3] == ["MAIL FROM:<sender@example.org>",
                                     "RCPT TO:<alice@example.com>", "DATA"]
    transcript = result.stdout
    assert transcript.index(" -> DATA") < transcript.index("<-  250 2.1.0")
    replies = server_replies(transcript)
    assert "250 PIPELINING" in replies or "250-PIPELINING" in replies
    queue_id = assert_queued(replies)
    [message] = server.wait_delivered("alice", 1)
    assert f"(mailframe) with ESMTP id {queue_id}\n".encode() in message
    assert b"\nSubject: swaks pipelined\n" in message
    assert "..dot" in client_lines(transcript)  # swaks stuffed it; the server unstuffed it
    assert message.endswith(sent_message(transcript))
    assert b"\n\nline one\n.dot\nend\n" in message


def test_loopback_may_relay_by_default(server: Server) -> None:
    result = swaks(server, "--to", "someone@elsewhere.example")
    assert result.returncode == 0, result.stdout + result.stderr
    replies = server_replies(result.stdout)
    assert any(r.startswith("250 2.1.5 ") for r in replies), replies
    assert_queued(replies)


def test_relay_refused_without_relay_networks(closed_relay: Server) -> None:
    result = swaks(closed_relay, "--to", "someone@elsewhere.example")
    assert result.returncode == 24, result.stdout + result.stderr
    refusals = [r for r in server_replies(result.stdout) if r.startswith("554")]
    assert len(refusals) == 1 and refusals[0].startswith("554 5.7.1 "), result.stdout
    assert "queued as" not in result.stdout
    # Local delivery still works on the same server.
    result = swaks(closed_relay, "--to", "bob@example.com", "--body", "still local")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_queued(server_replies(result.stdout))
    [message] = closed_relay.wait_delivered("bob", 1)
    assert message.endswith(sent_message(result.stdout))
    assert b"\n\nstill local\n" in message


def test_unknown_mail_parameter_gets_555(server: Server) -> None:
    # swaks has no option for MAIL parameters; an address with "> PARAM"
    # in it makes it send "MAIL FROM:<sender@example.org> FOO=BAR>".
    result = subprocess.run(
        [require("swaks"), "--server", f"127.0.0.1:{server.port}", "--timeout", "30",
         "--from", "sender@example.org> FOO=BAR", "--to", "alice@example.com",
         "--quit-after", "RCPT"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 23, result.stdout + result.stderr
    assert any(r.startswith("555 5.5.4 ") for r in server_replies(result.stdout)), result.stdout
    # And exactly, over a raw socket; the session goes on after the 555.
    with RawSMTP(server.port) as client:
        assert client.reply()[0] == 220
        assert client.command(b"EHLO raw.example")[0] == 250
        code, text = client.command(b"MAIL FROM:<sender@example.org> FOO=BAR")
        assert (code, text[:10]) == (555, b"555 5.5.4 "), text
        code, text = client.command(b"RCPT TO:<alice@example.com>")
        assert code == 503, text  # no transaction was started
        assert client.command(b"MAIL FROM:<sender@example.org> SIZE=10 BODY=7BIT")[0] == 250
        code, text = client.command(b"RCPT TO:<alice@example.com> X-NOTIFY=NEVER")
        assert (code, text[:10]) == (555, b"555 5.5.4 "), text
        assert client.command(b"QUIT")[0] == 221
        assert client.at_eof()
    assert server.delivered("alice") == []

"""
An orderly shutdown of the real ``twistd -n mailframe`` process on SIGTERM
(RFC 5321 §3.8): new commands get ``421 4.3.2``, a message whose final dot
arrives during the grace period is still committed and acknowledged, idle
sessions get an unsolicited 421 when the grace period ends, and a new
server on the same queue delivers everything that was acknowledged.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.interop.conftest import (
    RawSMTP,
    assert_orderly_exit,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.interop

GRACE = 2.0


#: The spool's directories that hold entries and their delivery state.
SPOOL_ENTRY_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "env")


def spooled(spool: pathlib.Path) -> list[str]:
    """Every file left in the spool's entry directories, as ``directory/name``."""
    return [f"{d}/{name}" for d in SPOOL_ENTRY_DIRS if (spool / d).is_dir()
            for name in sorted(os.listdir(spool / d))]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def session(port: int) -> RawSMTP:
    client = RawSMTP(port)
    assert client.reply()[0] == 220
    assert client.command(b"EHLO shut.example")[0] == 250
    return client


def test_sigterm(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "mailframe.toml"
    config.write_text(f"shutdown_grace = {GRACE}\n")
    server = start_server(tmp_path, ["--config", str(config)])
    try:
        # One message acknowledged before the shutdown, for the restart.
        with session(server.port) as before:
            assert before.command(b"MAIL FROM:<sender@example.org>")[0] == 250
            assert before.command(b"RCPT TO:<early@example.com>")[0] == 250
            assert before.command(b"DATA")[0] == 354
            code, text = before.command(b"Subject: before\r\n\r\nbefore\r\n.")
            assert code == 250, text
            assert before.command(b"QUIT")[0] == 221
        early_id = text.split()[-1].decode()

        commander = session(server.port)
        sender = session(server.port)
        idle = session(server.port)
        assert sender.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        assert sender.command(b"RCPT TO:<late@example.com>")[0] == 250
        assert sender.command(b"DATA")[0] == 354
        sender.send(b"Subject: during shutdown\r\n\r\nsent before SIGTERM,\r\n")

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # The listener closes first; the sessions are told right after.
        wait_until(lambda: refused(server.port), 10, "the listener to close")
        time.sleep(0.3)

        # A command after SIGTERM: 421 4.3.2, then the server closes.
        code, text = commander.command(b"NOOP")
        assert (code, text[:10]) == (421, b"421 4.3.2 "), text
        assert commander.at_eof()

        # The final dot of a message under way still gets its 250.
        sender.send(b"and finished after it.\r\n.\r\n")
        code, text = sender.reply()
        assert code == 250 and text.startswith(b"250 2.0.0 Ok: queued as "), text
        late_id = text.split()[-1].decode()
        assert time.monotonic() - signalled < GRACE, "the test was too slow to tell"

        # When the grace period ends, idle sessions are told and closed.
        for client in (idle, sender):
            client.sock.settimeout(GRACE + 20)
            code, text = client.reply()
            assert (code, text[:10]) == (421, b"421 4.3.2 "), text
            assert client.at_eof()
        told = time.monotonic() - signalled
        assert GRACE - 0.5 <= told < GRACE + 10, told
        for client in (commander, sender, idle):
            client.close()

        server.process.wait(30)
        assert time.monotonic() - signalled < GRACE + 30
        assert_orderly_exit(server)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    # A new server on the same queue delivers everything acknowledged.
    (tmp_path / "server.log").rename(tmp_path / "first.log")
    again = start_server(tmp_path)
    try:
        for user, queue_id, subject in (("early", early_id, b"before"),
                                        ("late", late_id, b"during shutdown")):
            messages = again.wait_delivered(user, 1, timeout=60)
            # At least once: a delivery cut short may be repeated, never lost.
            assert all(f" id {queue_id}\n".encode() in m for m in messages)
            assert all(b"\nSubject: " + subject + b"\n" in m for m in messages)
        for late in again.delivered("late"):
            assert late.endswith(b"\n\nsent before SIGTERM,\nand finished after it.\n")
        wait_until(lambda: not spooled(again.queue), 30,
                   f"an empty spool: {spooled(again.queue)}")
        assert os.listdir(again.queue / "tmp") == []
        log = (tmp_path / "first.log").read_text() + again.log()
        assert len(set(re.findall(r"Ok: queued as (\S+)", log))) == 2
    finally:
        again.stop()


def test_sigterm_with_no_sessions_exits_at_once(tmp_path: pathlib.Path) -> None:
    server = start_server(tmp_path)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError("no exit within 10 s of SIGTERM") from None
    assert time.monotonic() - started < 10
    assert_orderly_exit(server)

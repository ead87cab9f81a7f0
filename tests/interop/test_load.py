"""
Load from Postfix's ``smtp-source`` against ``twistd -n mailframe``: 10
concurrent sessions, 200 messages of 1 KiB, every one delivered.

With ``-N``, smtp-source puts a sequence number in front of each recipient
(``1rcpt@example.com``, ``2rcpt@example.com``, ...), so each message lands in
a Maildir of its own. It runs with the default ``fsync`` of each file, and
again with the spool and the ``maildir`` transport both on ``sync =
"filesystem"``, where messages and deliveries are made durable in groups.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.interop.conftest import Server, maildir_messages, require, start_server, wait_until

pytestmark = pytest.mark.interop

SESSIONS = 10
MESSAGES = 200
LENGTH = 1024


#: The spool's directories that hold entries and their delivery state.
SPOOL_ENTRY_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "env")


def spooled(spool: pathlib.Path) -> list[str]:
    """Every file left in the spool's entry directories, as ``directory/name``."""
    return [f"{d}/{name}" for d in SPOOL_ENTRY_DIRS if (spool / d).is_dir()
            for name in sorted(os.listdir(spool / d))]


SHARED_SYNC = """\
[plugins.spool]
sync = "filesystem"

[plugins.maildir]
sync = "filesystem"
"""


@pytest.fixture(params=["file", "filesystem"])
def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Server]:
    extra: list[str] = []
    if request.param == "filesystem":
        config = tmp_path / "mailframe.toml"
        config.write_text(SHARED_SYNC)
        extra = ["--config", str(config)]
    running = start_server(tmp_path, extra)
    yield running
    running.stop()


def test_smtp_source(server: Server) -> None:
    smtp_source = require("smtp-source")
    started = time.monotonic()
    result = subprocess.run(
        [smtp_source, "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(LENGTH), "-r", "1",
         "-d", "-N", "-M", "example.com", "-f", "sender@example.org", "-t", "rcpt@example.com",
         f"127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=120,
    )
    sent_in = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr + server.log()[-3000:]
    # smtp-source stops at the first reply it did not expect (and says so).
    assert "fatal" not in result.stderr and "warning" not in result.stderr, result.stderr

    def count() -> int:
        return sum(len(found) for found in maildir_messages(server.mail).values())

    wait_until(lambda: count() >= MESSAGES, 60,
               f"{MESSAGES} messages in the Maildirs (found {count()})")
    delivered = maildir_messages(server.mail)
    assert sum(len(found) for found in delivered.values()) == MESSAGES
    assert len(delivered) == MESSAGES
    for user, [message] in delivered.items():
        assert re.fullmatch(r"[0-9]+rcpt", user), user
        assert message.startswith(
            f"Return-Path: <sender@example.org>\nDelivered-To: {user}@example.com\n".encode())
        _, _, body = message.partition(b"\n\n")
        # smtp-source's body: LENGTH octets in lines of 80, CRLF counted.
        assert LENGTH - 80 <= len(body.replace(b"\n", b"\r\n")) <= LENGTH + 80, len(body)
        assert set(body) <= set(b"0123456789X\n")
    # Every message was acknowledged with an id of its own, and each was
    # removed from the queue once delivered.
    queued = set(re.findall(r"Ok: queued as (\S+)", server.log()))
    assert len(queued) == MESSAGES
    wait_until(lambda: not spooled(server.queue), 60,
               f"an empty spool: {spooled(server.queue)[:5]}")
    assert os.listdir(server.queue / "tmp") == []
    print(f"\nsmtp-source sent {MESSAGES} messages in {sent_in:.2f} s")

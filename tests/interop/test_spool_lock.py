"""
One server per spool: a second ``twistd -n mailframe`` on a queue directory
that a running server owns stops at once with exit status 1 and says which
process owns it, before it touches a file; once the first has stopped, the
second starts.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from tests.interop.conftest import (
    REPO,
    TWISTD,
    RawSMTP,
    assert_orderly_exit,
    free_port,
    start_server,
)

pytestmark = pytest.mark.interop


def second_server(root: pathlib.Path, queue: pathlib.Path,
                  extra: list[str]) -> subprocess.CompletedProcess[str]:
    """Run another server on *queue* until it exits by itself."""
    root.mkdir()
    argv = [
        str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
        "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
        "--queue-dir", str(queue),
        "--local-domain", f"example.com={root / 'mail'}",
        *extra,
    ]
    return subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_a_second_server_on_a_spool_is_refused(tmp_path: pathlib.Path,
                                               workers: list[str]) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    first = start_server(tmp_path / "first", extra=workers)
    try:
        # A message in the middle of its DATA: the second server's recovery
        # would have thrown its partial file away.
        client = RawSMTP(first.port)
        assert client.reply()[0] == 220
        assert client.command(b"EHLO lock.example")[0] == 250
        assert client.command(b"MAIL FROM:<s@example.org>")[0] == 250
        assert client.command(b"RCPT TO:<alice@example.com>")[0] == 250
        assert client.command(b"DATA")[0] == 354
        client.send(b"Subject: kept\r\n\r\n" + b"x" * 70_000 + b"\r\n")

        refused = second_server(tmp_path / "second", first.queue, workers)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        message = (f"the spool {first.queue} is in use by another mailframe server"
                   f" (pid {first.process.pid})")
        assert message in refused.stdout, refused.stdout
        assert "Traceback" not in refused.stdout

        assert client.command(b".")[0] == 250
        client.close()
        assert len(first.wait_delivered("alice", 1)) == 1
    finally:
        first.stop()
    assert_orderly_exit(first)
    # The first has gone, and its lock with it.
    again = start_server(tmp_path / "again", extra=["--queue-dir", str(first.queue)])
    again.stop()
    assert_orderly_exit(again)
    assert (first.queue / "lock").read_text() == f"{again.process.pid}\n"

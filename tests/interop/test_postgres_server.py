"""
``twistd -n mailframe`` with the postgres store, against a real PostgreSQL
(tests/pg_support.py), with Python's ``smtplib`` as the client:

- mail is accepted with 250 only once sealed, and delivered;
- ``mailframe queue … --config FILE`` works on the store unchanged;
- while the database is down, new mail gets ``451 4.3.0``, never 250; once
  it is back, mail is accepted and delivered again;
- an unreachable database, or one without the schema, stops the start with
  a clear message and a non-zero exit status; ``mailframe db upgrade``
  fixes the second.
"""

from __future__ import annotations

import json
import os
import pathlib
import smtplib
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest

from tests.interop.conftest import (
    REPO,
    TWISTD,
    Server,
    free_port,
    maildir_messages,
    wait_for_greeting,
    wait_until,
)
from tests.pg_support import postgres

pytestmark = pytest.mark.interop

WAIT = 30.0
MAILFRAME = [sys.executable, "-m", "mailframe.cli"]


def write_config(root: pathlib.Path, dsn: str, lease: str = "30s", **settings: str) -> pathlib.Path:
    """A config file in *root* with the postgres store on *dsn*, and *settings* for it."""
    store = {"dsn": dsn, "lease": lease, "connect_timeout": "2s", **settings}
    path = root / "mailframe.toml"
    path.write_text("\n".join([
        'store = "postgres"',
        "",
        "[plugins.postgres]",
        *[f"{key} = {json.dumps(value)}" for key, value in store.items()],
        "",
    ]))
    return path


def launch(root: pathlib.Path, config: pathlib.Path, extra: Sequence[str] = ()
           ) -> tuple[subprocess.Popen[bytes], int, pathlib.Path]:
    port = free_port()
    argv = [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
            "--config", str(config),
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--hostname", "mx.example.com",
            "--local-domain", f"example.com={root / 'mail'}", *extra]
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    return process, port, log_path


def start(root: pathlib.Path, config: pathlib.Path, extra: Sequence[str] = ()) -> Server:
    process, port, log_path = launch(root, config, extra)
    server = Server(port, process, root, root / "queue", root / "mail", log_path)
    try:
        wait_for_greeting(port)
    except TimeoutError:
        server.stop(5)
        raise AssertionError(f"mailframe did not start; log:\n{server.log()}") from None
    return server


def message(number: int) -> bytes:
    return (f"From: sender@example.org\r\nTo: alice@example.com\r\n"
            f"Message-ID: <{number}.pg@example.org>\r\nSubject: {number}\r\n\r\n"
            f"message {number}\r\n").encode()


def send(port: int, number: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.sendmail("sender@example.org", ["alice@example.com"], message(number))


def queue_command(config: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILFRAME, *argv], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def delivered(server: Server) -> list[bytes]:
    return maildir_messages(server.mail).get("alice", [])


def test_accepts_delivers_and_lists(tmp_path: pathlib.Path) -> None:
    dsn = postgres().new_database()
    config = write_config(tmp_path, dsn)
    server = start(tmp_path, config, ["--hold"])
    try:
        for number in range(3):
            send(server.port, number)
        listed = queue_command(config, "queue", "--config", str(config), "list", "--json")
        assert listed.returncode == 0, listed.stderr
        entries = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [e["state"] for e in entries] == ["hold"] * 3, listed.stdout
        stats = queue_command(config, "queue", "stats", "--config", str(config))
        assert stats.returncode == 0, stats.stderr
        assert "hold" in stats.stdout and "3" in stats.stdout, stats.stdout
        ids = [e["id"] for e in entries]
        released = queue_command(config, "queue", "release", "--config", str(config), *ids)
        assert released.returncode == 0, released.stderr
        # The release NOTIFYs the server, which delivers at once.
        wait_until(lambda: len(delivered(server)) == 3, WAIT, "three delivered")
        wait_until(lambda: queue_command(config, "queue", "list", "--json", "--config",
                                         str(config)).stdout == "", WAIT, "an empty queue")
    finally:
        assert server.stop() in (0, -15), server.log()[-3000:]
    bodies = b"".join(delivered(server))
    for number in range(3):
        assert f"message {number}".encode() in bodies


def test_database_lost_and_back(tmp_path: pathlib.Path) -> None:
    pg = postgres()
    dsn = pg.new_database()
    config = write_config(tmp_path, dsn)
    server = start(tmp_path, config)
    try:
        send(server.port, 1)
        wait_until(lambda: len(delivered(server)) == 1, WAIT, "the first delivered")
        pg.stop()
        try:
            refused = []
            for number in (2, 3):
                with pytest.raises(smtplib.SMTPDataError) as raised:
                    send(server.port, number)
                refused.append(raised.value)
            for error in refused:
                assert error.smtp_code == 451, error
                assert error.smtp_error.startswith(b"4.3.0"), error
        finally:
            pg.start()
        # Back: new mail is accepted (the first attempts may still meet a
        # broken connection of the pool, and get 451: never 250 unsealed).
        deadline = time.monotonic() + WAIT
        while True:
            try:
                send(server.port, 4)
                break
            except smtplib.SMTPDataError as error:
                assert error.smtp_code == 451, error
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        wait_until(lambda: len(delivered(server)) == 2, WAIT, "delivery after the return")
    finally:
        assert server.stop() in (0, -15), server.log()[-3000:]
    bodies = b"".join(delivered(server))
    assert b"message 1" in bodies and b"message 4" in bodies
    assert b"message 2" not in bodies and b"message 3" not in bodies
    assert "451" in server.log() or "Could not commit" in server.log()


def test_sigterm_lets_a_message_under_way_finish(tmp_path: pathlib.Path) -> None:
    """
    On SIGTERM the store serves the sessions through their grace period:
    a final dot sent after the signal is sealed and gets its 250, and the
    process then exits in order.
    """
    import signal

    from tests.interop.conftest import RawSMTP, assert_orderly_exit
    from tests.stores.test_postgres import _rows

    dsn = postgres().new_database()
    config = write_config(tmp_path, dsn)
    config.write_text("shutdown_grace = 3.0\n" + config.read_text())
    server = start(tmp_path, config, ["--hold"])
    try:
        with RawSMTP(server.port) as sender:
            assert sender.reply()[0] == 220
            assert sender.command(b"EHLO shut.example")[0] == 250
            assert sender.command(b"MAIL FROM:<sender@example.org>")[0] == 250
            assert sender.command(b"RCPT TO:<alice@example.com>")[0] == 250
            assert sender.command(b"DATA")[0] == 354
            sender.send(b"Subject: during shutdown\r\n\r\nsent before SIGTERM,\r\n")
            server.process.send_signal(signal.SIGTERM)
            # The listener closes first; the store stays for the sessions.
            wait_until(lambda: _closed(server.port), 10, "the listener to close")
            time.sleep(0.5)
            code, text = sender.command(b"and finished after it.\r\n.")
            assert code == 250, text
        queue_id = text.split()[-1].decode()
        server.process.wait(30)
        assert_orderly_exit(server)
    finally:
        server.stop()
    assert _rows(dsn, "SELECT queue_id, state FROM mailframe_entries") == [(queue_id, "hold")]


def _closed(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _fails_to_start(root: pathlib.Path, config: pathlib.Path) -> str:
    process, _, log_path = launch(root, config)
    try:
        status = process.wait(WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"mailframe did not stop; log:\n{log_path.read_text()}") from None
    log = log_path.read_text(errors="replace")
    assert status != 0, log
    return log


def test_unreachable_database_stops_the_start(tmp_path: pathlib.Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=mail user=mailframe password=hunter2"
    log = _fails_to_start(tmp_path, write_config(tmp_path, dsn))
    assert "cannot connect to the PostgreSQL database" in log, log
    assert "hunter2" not in log


def test_missing_schema_stops_the_start_until_upgraded(tmp_path: pathlib.Path) -> None:
    dsn = postgres().new_database(migrated=False)
    config = write_config(tmp_path, dsn)
    log = _fails_to_start(tmp_path, config)
    assert "mailframe db upgrade" in log, log
    status = queue_command(config, "db", "status", "--config", str(config))
    assert status.returncode == 2, status
    assert "version 0, needs 1" in status.stdout
    upgraded = queue_command(config, "db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0, upgraded
    assert "upgraded from version 0 to 1" in upgraded.stdout
    again = queue_command(config, "db", "upgrade", "--config", str(config))
    assert again.returncode == 0 and "up to date" in again.stdout, again
    server = start(tmp_path, config)
    try:
        send(server.port, 9)
        wait_until(lambda: len(delivered(server)) == 1, WAIT, "delivered after the upgrade")
    finally:
        assert server.stop() in (0, -15), server.log()[-3000:]


def test_benchmark_runs() -> None:
    """benchmarks/postgres_store.py exits 0 and prints its table (no speed is checked)."""
    dsn = postgres().new_database()
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "postgres_store.py"), "--dsn", dsn,
         "--messages", "40", "--concurrency", "5", "--large-mb", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for phase in ("commit", "claim + record", "large"):
        assert any(line.startswith(phase) for line in result.stdout.splitlines()), result.stdout

"""
The README's run path: ``twistd -n mailframe`` with no options at all, in an
empty directory. It must listen on 127.0.0.1:2525, take mail for
``alice@localhost`` from loopback, deliver it to ``./Maildir/alice/new``,
and keep its queue in ``./mailframe-queue``.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import smtplib
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.interop.conftest import REPO, TWISTD, wait_for_greeting, wait_until

pytestmark = pytest.mark.interop

PORT = 2525


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def port_is_free() -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", PORT))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            pytest.fail(f"127.0.0.1:{PORT} is in use by another program; this test runs"
                        f" mailframe on its default port and needs it free")


def listening_addresses(port: int) -> set[str]:
    """The local addresses of listening TCP sockets on *port* (IPv4), from /proc."""
    found = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def default_server(tmp_path: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    port_is_free()
    log = open(tmp_path / "twistd.out", "wb")
    process = subprocess.Popen([str(TWISTD), "-n", "mailframe"], cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT, env=environment())
    try:
        try:
            wait_for_greeting(PORT)
        except TimeoutError:
            raise AssertionError(
                "twistd -n mailframe did not greet on 127.0.0.1:2525; output:\n"
                + (tmp_path / "twistd.out").read_text(errors="replace")) from None
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_no_options(tmp_path: pathlib.Path, default_server: subprocess.Popen[bytes]) -> None:
    assert listening_addresses(PORT) == {"127.0.0.1"}
    with smtplib.SMTP("127.0.0.1", PORT, timeout=30) as client:
        code, features = client.ehlo("client.example")
        assert code == 250
        # The server's name defaults to this host's name.
        assert features.split(b"\n")[0] == socket.gethostname().encode()
        client.sendmail("someone@example.org", ["alice@localhost"],
                        b"Subject: defaults\r\n\r\nhello alice\r\n")
        # Relay for loopback clients by default.
        client.mail("someone@example.org")
        assert client.rcpt("bob@elsewhere.example")[0] == 250
        client.rset()
    new = tmp_path / "Maildir" / "alice" / "new"
    wait_until(lambda: new.is_dir() and len(os.listdir(new)) == 1, 30,
               f"a message in {new}")
    [name] = os.listdir(new)
    message = (new / name).read_bytes()
    assert message.startswith(
        b"Return-Path: <someone@example.org>\nDelivered-To: alice@localhost\n")
    assert message.endswith(b"\nSubject: defaults\n\nhello alice\n")
    # The spool's layout, and nothing of the message left in it.
    spool = tmp_path / "mailframe-queue"
    for name in ("tmp", "incoming", "active", "deferred", "hold", "corrupt", "env"):
        assert (spool / name).is_dir(), name
    wait_until(lambda: not any(os.listdir(spool / name) for name in ("incoming", "active")),
               30, f"no entry left in {spool}")
    default_server.send_signal(signal.SIGTERM)
    assert default_server.wait(30) in (0, -signal.SIGTERM)


def test_bad_option_names_itself(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([str(TWISTD), "-n", "mailframe", "--max-recipients", "5"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=environment())
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # The error names the option and the reason, not only the usage text.
    assert "--max-recipients: must be at least 100" in output, output
    assert not (tmp_path / "mailframe-queue").exists()

"""
STARTTLS (RFC 3207) with real peers, against ``twistd -n mailframe
--tls-cert ... --submission ... --auth ...``: swaks with TLS and AUTH,
commands pipelined after STARTTLS (the CVE-2011-0411 class), a failed
handshake, and a certificate reloaded on SIGHUP.

swaks exit codes (swaks(1), "EXIT CODES"): 0 no error, 28 error in AUTH
(such as AUTH not advertised).
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from tests.certs import make_certificates
from tests.interop.conftest import require, wait_until
from tests.interop.tls_support import (
    PASSWORD,
    USER,
    TLSRawSMTP,
    TLSServer,
    client_context,
    ehlo_keywords,
    peer_serial,
    received_field,
    start_tls_server,
)

pytestmark = pytest.mark.interop

MESSAGE = b"From: alice@example.com\r\nSubject: reload\r\n\r\nsent on an old TLS session\r\n"


@pytest.fixture
def tls_server(tmp_path: pathlib.Path) -> Iterator[TLSServer]:
    running = start_tls_server(tmp_path)
    yield running
    running.stop()


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("swaks"), "--server", f"127.0.0.1:{port}", "--timeout", "30",
         "--helo", "swaks.example", "--from", "alice@example.com",
         "--to", "alice@example.com", *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_tls_and_auth_on_submission(tls_server: TLSServer, mechanism: str) -> None:
    result = swaks(tls_server.submission, "-tls", "--auth", mechanism,
                   "--auth-user", USER, "--auth-password", PASSWORD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "=== TLS started with cipher" in result.stdout, result.stdout
    assert "<~  235 2.7.0 Authentication successful" in result.stdout, result.stdout
    [delivered] = tls_server.server.wait_delivered("alice", 1)
    received = received_field(delivered)
    assert received.startswith("Received: from swaks.example (unknown [127.0.0.1])"), received
    assert "(using TLSv1." in received, received
    assert "(Authenticated sender: alice)" in received, received
    assert " with ESMTPSA id " in received, received


def test_swaks_without_tls_gets_no_auth_on_submission(tls_server: TLSServer) -> None:
    result = swaks(tls_server.submission, "--auth", "PLAIN",
                   "--auth-user", USER, "--auth-password", PASSWORD)
    assert result.returncode == 28, result.stdout + result.stderr
    assert "Host did not advertise authentication" in result.stdout + result.stderr
    assert tls_server.server.delivered("alice") == []


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_swaks_auth_fails_on_port_25_listener(tls_server: TLSServer, tls: bool) -> None:
    result = swaks(tls_server.port, *(["-tls"] if tls else []), "--auth", "PLAIN",
                   "--auth-user", USER, "--auth-password", PASSWORD)
    assert result.returncode == 28, result.stdout + result.stderr
    assert "Host did not advertise authentication" in result.stdout + result.stderr
    if tls:
        assert "=== TLS started with cipher" in result.stdout, result.stdout
    assert " -> AUTH" not in result.stdout and " ~> AUTH" not in result.stdout
    assert tls_server.server.delivered("alice") == []


def test_commands_pipelined_after_starttls_are_discarded(tls_server: TLSServer) -> None:
    context = client_context(tls_server.certs.ca)
    with TLSRawSMTP(tls_server.port) as raw:
        assert raw.reply()[0] == 220
        code, reply = raw.command(b"EHLO client.example")
        assert code == 250 and "STARTTLS" in ehlo_keywords(reply), reply
        # One packet: the NOOP must never be answered, in clear or in TLS.
        raw.send(b"STARTTLS\r\nNOOP\r\n")
        code, reply = raw.reply()
        assert (code, reply) == (220, b"220 2.0.0 Ready to start TLS\r\n")
        raw.start_tls(context)
        assert isinstance(raw.sock, ssl.SSLSocket)
        assert raw.silent_for(1.0)
        # The session starts over: MAIL needs a new EHLO (RFC 3207 §4.2).
        code, reply = raw.command(b"MAIL FROM:<sender@example.org>")
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        code, reply = raw.command(b"EHLO client.example")
        assert code == 250, reply
        assert "STARTTLS" not in ehlo_keywords(reply), reply
        code, reply = raw.command(b"STARTTLS")
        assert (code, reply[:9]) == (503, b"503 5.5.1"), reply
        assert raw.command(b"NOOP")[0] == 250
        assert raw.command(b"QUIT")[0] == 221


def test_failed_handshake_closes_cleanly(tls_server: TLSServer) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        assert sock.recv(512).startswith(b"220 ")
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(512) == b"220 2.0.0 Ready to start TLS\r\n"
        sock.sendall(b"EHLO this is not a TLS ClientHello\r\n" * 4)
        # The server closes the connection: a TLS alert at most, then EOF,
        # within the socket's 10-second timeout.
        received = b""
        for _ in range(100):
            data = sock.recv(4096)
            if not data:
                break
            received += data
        else:
            pytest.fail(f"the connection stayed open: {received!r}")
        assert b"250" not in received and b"220" not in received, received
    wait_until(lambda: "TLS handshake with 127.0.0.1 failed" in tls_server.server.log(), 10,
               "the failed handshake is logged")
    # A client that refuses the certificate fails the handshake as well.
    untrusted = ssl.create_default_context()
    with TLSRawSMTP(tls_server.port) as raw:
        assert raw.reply()[0] == 220
        raw.command(b"EHLO client.example")
        with pytest.raises(ssl.SSLCertVerificationError):
            raw.starttls(untrusted)
    wait_until(lambda: tls_server.server.log().count("TLS handshake with 127.0.0.1 failed") >= 2,
               10, "the second failed handshake is logged")
    # The server goes on serving, in TLS too.
    with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=30) as client:
        client.starttls(context=client_context(tls_server.certs.ca))
        client.ehlo("client.example")
        assert client.sendmail("sender@example.org", ["alice@example.com"], MESSAGE) == {}
    tls_server.server.wait_delivered("alice", 1)
    log = tls_server.server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    assert tls_server.server.process.poll() is None


def new_tls_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial of the certificate that a new STARTTLS session on *port* gets."""
    with TLSRawSMTP(port) as raw:
        assert raw.reply()[0] == 220
        raw.command(b"EHLO client.example")
        raw.starttls(context)
        assert isinstance(raw.sock, ssl.SSLSocket)
        serial = peer_serial(raw.sock)
        raw.command(b"QUIT")
    return serial


def test_sighup_reloads_the_certificate(tls_server: TLSServer, tmp_path: pathlib.Path) -> None:
    server = tls_server.server
    old = tls_server.certs
    new = make_certificates(tmp_path / "new-certs", serial=7)
    # Both test CAs have one subject name, so a client trusts one at a time.
    old_context, new_context = client_context(old.ca), client_context(new.ca)
    assert new_tls_serial(tls_server.port, old_context) == 1001

    with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=30) as established:
        established.ehlo("client.example")
        established.starttls(context=old_context)
        established.ehlo("client.example")
        assert isinstance(established.sock, ssl.SSLSocket)
        assert peer_serial(established.sock) == 1001

        shutil.copyfile(new.cert, old.cert)
        shutil.copyfile(new.key, old.key)
        # Changed files are not read until SIGHUP.
        assert new_tls_serial(tls_server.port, old_context) == 1001
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "Reloaded the TLS certificate" in server.log(), 10,
                   "the certificate is reloaded")
        assert server.process.poll() is None, server.log()[-3000:]
        # New sessions, on both listeners, get the new certificate.
        assert new_tls_serial(tls_server.port, new_context) == 1007
        assert new_tls_serial(tls_server.submission, new_context) == 1007
        with pytest.raises(ssl.SSLCertVerificationError):
            new_tls_serial(tls_server.port, old_context)

        # The session established before the reload goes on, with its certificate.
        assert established.noop()[0] == 250
        assert established.sendmail("sender@example.org", ["alice@example.com"], MESSAGE) == {}
        assert peer_serial(established.sock) == 1001
    [delivered] = server.wait_delivered("alice", 1)
    assert "(using TLSv1." in received_field(delivered)
    assert delivered.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_sighup_with_a_broken_certificate_keeps_the_old_one(tls_server: TLSServer) -> None:
    server = tls_server.server
    context = client_context(tls_server.certs.ca)
    tls_server.certs.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "Keeping the TLS certificate in use" in server.log(), 10,
               "the failed reload is logged")
    assert server.process.poll() is None, server.log()[-3000:]
    assert new_tls_serial(tls_server.port, context) == 1001

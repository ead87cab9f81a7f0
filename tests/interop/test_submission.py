"""
The submission listener (RFC 6409) with Python's smtplib, against
``twistd -n mailframe --tls-cert ... --submission ... --auth ...``:
STARTTLS before AUTH (RFC 3207, RFC 4954), AUTH before MAIL, relay for
authenticated clients, the trace field of an authenticated TLS session
(RFC 3848), and the throttling of failed AUTH attempts.
"""

from __future__ import annotations

import base64
import pathlib
import smtplib
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.interop.conftest import wait_until
from tests.interop.tls_support import (
    MEMORY_CHECKER,
    PASSWORD,
    USER,
    TLSRawSMTP,
    TLSServer,
    client_context,
    ehlo_keywords,
    file_checker,
    peer_serial,
    received_field,
    start_tls_server,
)

pytestmark = pytest.mark.interop

MESSAGE = b"From: alice@example.com\r\nSubject: submitted\r\n\r\nover TLS, with AUTH\r\n"


@pytest.fixture
def tls_server(tmp_path: pathlib.Path) -> Iterator[TLSServer]:
    # No relay networks: only AUTH lets a client send to other domains.
    running = start_tls_server(tmp_path, ["--relay-network", "none"])
    yield running
    running.stop()


def secure_client(server: TLSServer) -> smtplib.SMTP:
    """smtplib on the submission port, after STARTTLS and a second EHLO."""
    client = smtplib.SMTP("127.0.0.1", server.submission, timeout=30)
    client.ehlo("client.example")
    # smtplib checks the certificate against 127.0.0.1, its IP address SAN.
    client.starttls(context=client_context(server.certs.ca))
    client.ehlo("client.example")
    return client


def test_starttls_then_auth_then_mail(tls_server: TLSServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.submission, timeout=30) as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), client.esmtp_features
        # RFC 6409 §4.3 and RFC 4954 §4: nothing before TLS and AUTH.
        code, reply = client.mail("sender@example.org")
        assert (code, reply[:5]) == (530, b"5.7.0"), reply
        code, reply = client.starttls(context=client_context(tls_server.certs.ca))
        assert code == 220, reply
        assert isinstance(client.sock, ssl.SSLSocket)
        assert peer_serial(client.sock) == 1001
        # RFC 3207 §4.2: the client must say EHLO again; MAIL before it is 503.
        code, reply = client.mail("sender@example.org")
        assert (code, reply[:5]) == (503, b"5.5.1"), reply
        client.ehlo("client.example")
        assert not client.has_extn("starttls"), client.esmtp_features
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, reply = client.mail("sender@example.org")
        assert (code, reply) == (530, b"5.7.0 Authentication required")
        code, reply = client.login(USER, PASSWORD)
        assert (code, reply) == (235, b"2.7.0 Authentication successful")
        code, reply = client.mail("sender@example.org")
        assert code == 250, reply
        code, reply = client.rset()
        assert code == 250


def test_host_name_in_the_certificate(tls_server: TLSServer) -> None:
    """The certificate also verifies for mx.example.com, the server's name."""
    with TLSRawSMTP(tls_server.submission) as raw:
        assert raw.reply()[0] == 220
        raw.command(b"EHLO client.example")
        raw.starttls(client_context(tls_server.certs.ca), "mx.example.com")
        code, reply = raw.command(b"EHLO client.example")
        assert code == 250 and "AUTH" in ehlo_keywords(reply), reply
        assert raw.command(b"QUIT")[0] == 221


@pytest.fixture(params=["memory", "file"])
def any_checker_server(request: pytest.FixtureRequest,
                       tmp_path: pathlib.Path) -> Iterator[TLSServer]:
    """The submission server with each kind of strcred checker."""
    checker = MEMORY_CHECKER if request.param == "memory" else file_checker(tmp_path)
    running = start_tls_server(tmp_path, checker=checker)
    yield running
    running.stop()


def test_plain_and_login_mechanisms(any_checker_server: TLSServer) -> None:
    server = any_checker_server
    attempts = {
        # smtplib picks the mechanism (PLAIN, the first it knows of the two).
        "login()": lambda c: c.login(USER, PASSWORD),
        "PLAIN": lambda c: c.auth("PLAIN", c.auth_plain),
        "LOGIN with an initial response": lambda c: c.auth("LOGIN", c.auth_login),
        "LOGIN, Username: then Password:": lambda c: c.auth(
            "LOGIN", c.auth_login, initial_response_ok=False),
    }
    for name, attempt in attempts.items():
        with secure_client(server) as client:
            client.user, client.password = USER, PASSWORD
            try:
                code, reply = attempt(client)
            except smtplib.SMTPAuthenticationError as error:
                pytest.fail(f"{name} with {server.checker}: {error};"
                            f" log:\n{server.server.log()[-2000:]}")
            assert (code, reply) == (235, b"2.7.0 Authentication successful"), name
            # RFC 4954 §4: no second AUTH in a session.
            code, reply = client.docmd("AUTH", "PLAIN " + base64.b64encode(
                f"\0{USER}\0{PASSWORD}".encode()).decode())
            assert (code, reply[:5]) == (503, b"5.5.1"), (name, reply)
    assert "authenticated as alice" in server.server.log()


def test_authenticated_client_relays_and_delivers(tls_server: TLSServer) -> None:
    server = tls_server.server
    # Without AUTH (on the port-25 listener) loopback may not relay here.
    with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=30) as plain:
        plain.ehlo("client.example")
        plain.mail("alice@example.com")
        code, reply = plain.rcpt("bob@remote.example")
        assert (code, reply[:5]) == (554, b"5.7.1"), reply

    with secure_client(tls_server) as client:
        client.login(USER, PASSWORD)
        assert client.mail("alice@example.com")[0] == 250
        code, reply = client.rcpt("bob@remote.example")
        assert code == 250, reply
        code, reply = client.data(MESSAGE)
        assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as "), reply
        remote_id = reply.split()[-1].decode()
    # Accepted for relay: the queue runner takes it on to the MX hosts of
    # remote.example, which this test network cannot reach or find.
    wait_until(lambda: f"{remote_id}: to=<bob@remote.example>" in server.log(), 30,
               "the queue runner tried bob@remote.example")
    tried = f"{remote_id}: to=<bob@remote.example>"
    assert "status=delivered" not in next(
        line for line in server.log().splitlines() if tried in line)
    assert server.delivered("bob") == []

    with secure_client(tls_server) as client:
        client.login(USER, PASSWORD)
        assert client.sendmail("alice@example.com", ["alice@example.com"], MESSAGE) == {}
    # alice may also get a bounce for bob@remote.example: find her own message.
    def own() -> list[bytes]:
        return [m for m in server.delivered("alice")
                if m.startswith(b"Return-Path: <alice@example.com>")]

    wait_until(lambda: bool(own()), 30, "alice's message was delivered")
    [delivered] = own()
    received = received_field(delivered)
    assert received.startswith("Received: from client.example (unknown [127.0.0.1])"), received
    assert "(using TLSv1." in received and " with cipher " in received, received
    assert "(Authenticated sender: alice)" in received, received
    assert " by mx.example.com (mailframe) with ESMTPSA id " in received, received
    assert delivered.endswith(MESSAGE.replace(b"\r\n", b"\n"))


@pytest.fixture
def throttled_server(tmp_path: pathlib.Path) -> Iterator[TLSServer]:
    config = tmp_path / "mailframe.toml"
    config.write_text("max_auth_failures = 3\nauth_failure_delay = 0.4\n")
    running = start_tls_server(tmp_path, ["--config", str(config)])
    yield running
    running.stop()


def test_wrong_password_then_421(throttled_server: TLSServer) -> None:
    delay = 0.4
    wrong = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    with secure_client(throttled_server) as client:
        for failures in (1, 2):
            started = time.monotonic()
            code, reply = client.docmd("AUTH", "PLAIN " + wrong)
            took = time.monotonic() - started
            assert (code, reply) == (535, b"5.7.8 Error: authentication failed")
            # Each failure is answered later than the one before.
            assert took >= failures * delay * 0.9, (failures, took)
        code, reply = client.docmd("AUTH", "PLAIN " + wrong)
        assert (code, reply[:5]) == (421, b"4.7.0"), reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    # The address stays refused, even with the right password.
    with secure_client(throttled_server) as client:
        code, reply = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{USER}\0{PASSWORD}".encode()).decode())
        assert (code, reply[:5]) == (421, b"4.7.0"), reply
    log = throttled_server.server.log()
    assert log.count("AUTH failed for alice from 127.0.0.1") == 3, log


def test_port_25_listener_offers_starttls_but_never_auth(tls_server: TLSServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), client.esmtp_features
        code, reply = client.docmd("AUTH", "PLAIN")
        assert (code, reply[:5]) == (503, b"5.5.1"), reply
        client.starttls(context=client_context(tls_server.certs.ca))
        client.ehlo("client.example")
        assert not client.has_extn("auth"), client.esmtp_features
        assert not client.has_extn("starttls"), client.esmtp_features
        code, reply = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{USER}\0{PASSWORD}".encode()).decode())
        assert (code, reply[:5]) == (503, b"5.5.1"), reply
        # Mail for a local domain needs no AUTH here.
        assert client.sendmail("sender@example.org", ["alice@example.com"], MESSAGE) == {}
    [delivered] = tls_server.server.wait_delivered("alice", 1)
    received = received_field(delivered)
    assert "(using TLSv1." in received, received
    assert "Authenticated sender" not in received, received
    assert " with ESMTPS id " in received, received

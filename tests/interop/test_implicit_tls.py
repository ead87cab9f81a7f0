"""
Implicit TLS (RFC 8314 §3.3): a ``[[listener]]`` on an ``ssl:`` endpoint,
with ``auth = "offered"``, set in a ``--config`` TOML file, against
Python's ``smtplib.SMTP_SSL``.
"""

from __future__ import annotations

import pathlib
import smtplib
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs
import pytest

from tests.certs import make_certificates
from tests.interop.conftest import Server, free_port, start_server
from tests.interop.tls_support import (
    PASSWORD,
    USER,
    client_context,
    file_checker,
    peer_serial,
    received_field,
    wait_for_tls_greeting,
)

if TYPE_CHECKING:
    from tests.certs import TestCertificates

pytestmark = pytest.mark.interop

MESSAGE = b"From: alice@example.com\r\nSubject: implicit TLS\r\n\r\nno STARTTLS needed\r\n"


@attrs.define
class ImplicitTLS:
    server: Server
    port: int
    certs: TestCertificates


@pytest.fixture
def implicit(tmp_path: pathlib.Path) -> Iterator[ImplicitTLS]:
    certs = make_certificates(tmp_path / "certs")
    port = free_port()
    config = tmp_path / "mailframe.toml"
    config.write_text(
        f'auth_checker = "{file_checker(tmp_path)}"\n'
        'relay_networks = "none"\n'
        "\n[[listener]]\n"
        f'endpoint = "ssl:{port}:interface=127.0.0.1:privateKey={certs.key}'
        f':certKey={certs.cert}"\n'
        'name = "submissions"\n'
        'auth = "offered"\n'
    )
    # --tls-cert too, so that the --listen listener offers STARTTLS: the
    # ssl: listener still must not.
    server = start_server(tmp_path, ["--config", str(config), "--tls-cert", str(certs.cert),
                                     "--tls-key", str(certs.key)])
    try:
        wait_for_tls_greeting(port, client_context(certs.ca))
    except TimeoutError as error:
        server.stop(5)
        raise AssertionError(f"{error}; log:\n{server.log()}") from None
    yield ImplicitTLS(server, port, certs)
    server.stop()


def test_login_and_send_over_implicit_tls(implicit: ImplicitTLS) -> None:
    context = client_context(implicit.certs.ca)
    with smtplib.SMTP_SSL("127.0.0.1", implicit.port, context=context, timeout=30) as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert peer_serial(client.sock) == 1001
        code, _ = client.ehlo("client.example")
        assert code == 250
        assert not client.has_extn("starttls"), client.esmtp_features
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, reply = client.docmd("STARTTLS")
        assert code == 503, reply
        code, reply = client.login(USER, PASSWORD)
        assert (code, reply) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail("alice@example.com", ["alice@example.com"], MESSAGE) == {}
        # Authenticated: relay is allowed, though no network may relay.
        code, reply = client.mail("alice@example.com")
        assert code == 250, reply
        code, reply = client.rcpt("bob@remote.example")
        assert code == 250, reply
        client.rset()
    [delivered] = implicit.server.wait_delivered("alice", 1)
    received = received_field(delivered)
    assert "(using TLSv1." in received, received
    assert "(Authenticated sender: alice)" in received, received
    assert " with ESMTPSA id " in received, received
    assert delivered.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_auth_is_offered_not_required(implicit: ImplicitTLS) -> None:
    context = client_context(implicit.certs.ca)
    with smtplib.SMTP_SSL("127.0.0.1", implicit.port, context=context, timeout=30) as client:
        client.ehlo("client.example")
        # Local mail needs no AUTH; relay does.
        code, reply = client.mail("sender@example.org")
        assert code == 250, reply
        code, reply = client.rcpt("bob@remote.example")
        assert (code, reply[:5]) == (554, b"5.7.1"), reply
        code, reply = client.rcpt("alice@example.com")
        assert code == 250, reply
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
    [delivered] = implicit.server.wait_delivered("alice", 1)
    received = received_field(delivered)
    assert "(using TLSv1." in received and " with ESMTPS id " in received, received


def test_plain_listener_still_offers_starttls(implicit: ImplicitTLS) -> None:
    with smtplib.SMTP("127.0.0.1", implicit.server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")


def test_plain_text_on_the_tls_port_gets_no_greeting(implicit: ImplicitTLS) -> None:
    """A client that does not speak TLS first is never greeted in clear."""
    with socket.create_connection(("127.0.0.1", implicit.port), timeout=5) as sock:
        sock.settimeout(1.0)
        try:
            data = sock.recv(512)
        except TimeoutError:
            data = b""
        assert not data.startswith(b"220"), data

"""
mailframe behind a real HAProxy on loopback, which sends the PROXY header
(``send-proxy-v2`` and ``send-proxy``): the session, relay control and
``Received:`` see the client's address, never the proxy's, even though the
proxy's own address (127.0.0.1) is a relay network here.
"""

from __future__ import annotations

import pathlib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator

import attrs
import pytest

from tests._missing import unavailable
from tests.interop.conftest import free_port, wait_for_greeting, wait_until
from tests.interop.tls_support import TLSServer, client_context, start_tls_server

pytestmark = pytest.mark.interop

#: The client that may relay, and one that may not.
RELAY_CLIENT, OTHER_CLIENT = "127.0.0.2", "127.0.0.3"

CONFIG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend v2
    bind 127.0.0.1:{v2}
    default_backend mailframe_v2

backend mailframe_v2
    option smtpchk EHLO haproxy.example
    server s 127.0.0.1:{backend} source 127.0.0.1 send-proxy-v2 check check-send-proxy inter 1s

frontend v1
    bind 127.0.0.1:{v1}
    default_backend mailframe_v1

backend mailframe_v1
    server s 127.0.0.1:{backend} source 127.0.0.1 send-proxy
"""


def haproxy_program() -> str:
    found = shutil.which("haproxy") or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin")
         if (p := pathlib.Path(d) / "haproxy").exists()), None)
    if found is None:
        unavailable("haproxy is not installed (Debian: apt-get install -y haproxy)")
    return found


@attrs.define
class Balanced:
    """mailframe with a ``haproxy:`` listener, and HAProxy in front of it."""

    tls: TLSServer
    backend: int
    ports: dict[str, int]
    haproxy: subprocess.Popen[bytes]
    haproxy_log: pathlib.Path

    def log(self) -> str:
        return self.tls.server.log()


@pytest.fixture
def balanced(tmp_path: pathlib.Path) -> Iterator[Balanced]:
    program = haproxy_program()
    backend = free_port()
    tls = start_tls_server(tmp_path, [
        "--listen", f"haproxy:tcp:{backend}:interface=127.0.0.1",
        # The proxy's own address may relay: the test shows it is never used.
        "--relay-network", "127.0.0.1/32", "--relay-network", f"{RELAY_CLIENT}/32",
    ])
    ports = {"v2": free_port(), "v1": free_port()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(backend=backend, **ports))
    log_path = tmp_path / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([program, "-f", str(config), "-db"], stdout=log,
                                   stderr=subprocess.STDOUT)
    running = Balanced(tls, backend, ports, process, log_path)
    try:
        for port in ports.values():
            wait_for_greeting(port, timeout=30)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        tls.stop()


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_client_address_reaches_received_and_relay(balanced: Balanced, version: str) -> None:
    port = balanced.ports[version]
    with smtplib.SMTP("127.0.0.1", port, timeout=30,
                      source_address=(RELAY_CLIENT, 0)) as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        code, _ = client.rcpt("someone@elsewhere.example")
        assert code == 250
        client.rset()
        client.sendmail("sender@example.org", ["alice@example.com"],
                        f"Subject: via {version}\r\n\r\nbody\r\n".encode())
    [message] = balanced.tls.server.wait_delivered("alice", 1)
    assert f"\nReceived: from client.example (unknown [{RELAY_CLIENT}])\n".encode() in message
    assert message.endswith(f"Subject: via {version}\n\nbody\n".encode())
    assert f"client={RELAY_CLIENT}" in balanced.log()


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_relay_refused_for_a_client_outside_the_networks(
    balanced: Balanced, version: str
) -> None:
    with smtplib.SMTP("127.0.0.1", balanced.ports[version], timeout=30,
                      source_address=(OTHER_CLIENT, 0)) as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        code, reply = client.rcpt("someone@elsewhere.example")
        assert (code, reply[:5]) == (554, b"5.7.1"), reply
        # Mail for a local domain is still welcome.
        code, _ = client.rcpt("alice@example.com")
        assert code == 250
    wait_until(lambda: f"from {OTHER_CLIENT}" in balanced.log(), 10,
               "the refused recipient is logged with the client's address")


def test_starttls_behind_the_proxy(balanced: Balanced) -> None:
    context = client_context(balanced.tls.certs.ca)
    with smtplib.SMTP("127.0.0.1", balanced.ports["v2"], timeout=30,
                      source_address=(RELAY_CLIENT, 0)) as client:
        client.ehlo("client.example")
        code, _ = client.starttls(context=context)
        assert code == 220
        client.ehlo("client.example")
        client.sendmail("sender@example.org", ["alice@example.com"], b"Subject: tls\r\n\r\nx\r\n")
    [message] = balanced.tls.server.wait_delivered("alice", 1)
    assert f"\nReceived: from client.example (unknown [{RELAY_CLIENT}])\n\t(using TLS".encode() \
        in message, message[:400]
    assert b"with ESMTPS id" in message


def test_health_checks_name_no_client(balanced: Balanced) -> None:
    # HAProxy's checks send a version 2 LOCAL header, then EHLO.
    wait_until(lambda: "names no client (version 2)" in balanced.log(), 20,
               "a health check with a LOCAL header")


def test_a_connection_without_a_header_gets_nothing(balanced: Balanced) -> None:
    with socket.create_connection(("127.0.0.1", balanced.backend), timeout=10) as sock:
        sock.sendall(b"EHLO client.example\r\n")
        started = time.monotonic()
        assert sock.recv(512) == b""
        assert time.monotonic() - started < 5
    wait_until(lambda: "Bad PROXY header from" in balanced.log(), 10, "the refusal is logged")


def test_a_header_that_never_comes_times_out(balanced: Balanced) -> None:
    with socket.create_connection(("127.0.0.1", balanced.backend), timeout=30) as sock:
        sock.sendall(b"PROXY TCP4 ")
        started = time.monotonic()
        assert sock.recv(512) == b""
        # The header timeout is 5 s.
        assert 4 < time.monotonic() - started < 20
    wait_until(lambda: "No PROXY header from" in balanced.log(), 10, "the timeout is logged")

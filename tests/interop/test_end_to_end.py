"""
End to end: mail submitted with smtplib to one mailframe is delivered by
MX, found in a DNS server on loopback, to another mailframe.
"""

from __future__ import annotations

import pathlib
import smtplib
from collections.abc import Iterator

import pytest

from tests.interop.conftest import Server, start_server
from tests.routing._dnsserver import DNSTestServer
from tests.routing._zone import Zone

pytestmark = pytest.mark.interop

ORIGIN = "e2e.test."
ZONE = """
$TTL 60
@           SOA   ns hostmaster 1 3600 600 86400 60
@           NS    ns
ns          A     127.0.0.1
remote      MX    10 sink.remote
remote      MX    20 gone.remote
sink.remote A     127.0.0.1
"""


@pytest.fixture
def dns() -> Iterator[DNSTestServer]:
    server = DNSTestServer(Zone(ZONE, ORIGIN))
    server.start()
    yield server
    server.stop()


def test_delivered_by_mx(tmp_path: pathlib.Path, dns: DNSTestServer) -> None:
    for part in ("sink", "relay"):
        (tmp_path / part).mkdir()
    sink = start_server(tmp_path / "sink", [
        "--hostname", "sink.remote.e2e.test",
        "--local-domain", f"remote.e2e.test={tmp_path / 'sink' / 'mail'}",
    ])
    relay: Server | None = None
    try:
        host, port = dns.address
        relay = start_server(tmp_path / "relay", [
            "--nameserver", f"{host}:{port}",
            "--smtp-port", str(sink.port),
            "--retry-schedule", "1s",
        ])
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.sendmail("sender@example.com", ["Bob@remote.e2e.test", "carol@remote.e2e.test"],
                            b"Subject: by MX\r\n\r\n.first\r\nsecond\r\n")
        for user in ("bob", "carol"):
            [message] = sink.wait_delivered(user, 1, timeout=60)
            assert message.endswith(b"Subject: by MX\n\n.first\nsecond\n")
            # Each hop added its own Received: field; nothing else changed.
            assert message.count(b"\nReceived: ") == 2
            assert b"by sink.remote.e2e.test (mailframe)" in message
            assert b"by mx.example.com (mailframe)" in message
        asked = {(name.rstrip(".").lower(), kind) for _, name, kind in dns.asked()}
        assert ("remote.e2e.test", "MX") in asked, asked
    finally:
        if relay is not None:
            relay.stop()
        sink.stop()


"""Interoperation with Python's smtplib, against ``twistd -n mailframe``."""

from __future__ import annotations

import smtplib

import pytest

from tests.interop.conftest import Server

pytestmark = pytest.mark.interop


def test_send_and_deliver(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        code, features = client.ehlo("client.example")
        assert code == 250
        for keyword in (b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE"):
            assert keyword in features
        client.sendmail("sender@example.org", ["Alice@Example.COM", "bob@example.com"],
                        b"Subject: hello\r\n\r\n.leading dot\r\nbody\r\n")
    for user in ("alice", "bob"):
        [message] = server.wait_delivered(user, 1)
        assert message.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: ")
        assert b"\nReceived: from client.example (unknown [127.0.0.1])\n" in message
        assert message.endswith(b"Subject: hello\n\n.leading dot\nbody\n")


def test_relay_is_allowed_for_loopback_only_by_default(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        code, _ = client.rcpt("someone@elsewhere.example")
        assert code == 250
        code, reply = client.docmd("VRFY", "alice")
        assert (code, reply[:5]) == (252, b"2.5.0")
        code, _ = client.docmd("EXPN", "staff")
        assert code == 502
        code, _ = client.docmd("HELP")
        assert code == 214

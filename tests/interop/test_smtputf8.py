"""
SMTPUTF8 (RFC 6531) with Python's smtplib and a raw client, against
``twistd -n mailframe``: UTF-8 local parts, the 553 5.6.7 refusal of them
without SMTPUTF8, and internationalized domains compared by A-label
(RFC 5890).
"""

from __future__ import annotations

import pathlib
import smtplib
from collections.abc import Iterator

import attrs
import pytest

from tests.interop.conftest import RawSMTP, Server, maildir_messages, start_server, wait_until

pytestmark = pytest.mark.interop

MESSAGE = ("From: Jörg <jörg@example.com>\r\nTo: Jörg <Jörg@example.com>\r\n"
           "Subject: Grüße\r\n\r\nÜber SMTPUTF8.\r\n").encode()


@attrs.define
class IdnServer:
    server: Server
    books: pathlib.Path


@pytest.fixture
def idn_server(tmp_path: pathlib.Path) -> Iterator[IdnServer]:
    books = tmp_path / "books"
    running = start_server(tmp_path, ["--local-domain", f"xn--bcher-kva.example={books}"])
    yield IdnServer(running, books)
    running.stop()


def test_utf8_local_parts_with_smtputf8(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("smtputf8")
        assert client.has_extn("8bitmime")
        refused = client.sendmail("jörg@example.com", ["Jörg@example.com"], MESSAGE,
                                  mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    # The local part is folded to lower case: one mailbox for Jörg and jörg.
    [delivered] = server.wait_delivered("jörg", 1)
    assert not (server.mail / "Jörg").exists()
    text = delivered.decode("utf-8")
    assert text.startswith("Return-Path: <jörg@example.com>\nDelivered-To: Jörg@example.com\n"), \
        text
    # RFC 6531 §3.7.4: the protocol is UTF8SMTP.
    assert "(mailframe) with UTF8SMTP id " in text, text
    assert delivered.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_utf8_addresses_without_smtputf8_get_553(server: Server) -> None:
    with RawSMTP(server.port) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO client.example")[0] == 250
        code, reply = raw.command("MAIL FROM:<jörg@example.com>".encode())
        assert (code, reply[:9]) == (553, b"553 5.6.7"), reply
        assert raw.command(b"MAIL FROM:<sender@example.org>")[0] == 250
        code, reply = raw.command("RCPT TO:<jörg@example.com>".encode())
        assert (code, reply[:9]) == (553, b"553 5.6.7"), reply
        code, reply = raw.command("RCPT TO:<anna@bücher.example>".encode())
        assert (code, reply[:9]) == (553, b"553 5.6.7"), reply
        # ASCII recipients in the same transaction are still fine.
        assert raw.command(b"RCPT TO:<alice@example.com>")[0] == 250
        assert raw.command(b"RSET")[0] == 250
        # With SMTPUTF8 on MAIL, the same RCPT is taken.
        assert raw.command(b"MAIL FROM:<sender@example.org> SMTPUTF8")[0] == 250
        code, reply = raw.command("RCPT TO:<jörg@example.com>".encode())
        assert code == 250, reply
        assert raw.command(b"QUIT")[0] == 221
    assert server.delivered("jörg") == []


def test_u_label_of_a_local_a_label_domain(idn_server: IdnServer) -> None:
    server = idn_server.server
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example")
        body = b"Subject: IDN\r\n\r\nfor the books\r\n"
        assert client.sendmail("sender@example.org", ["anna@bücher.example"], body,
                               mail_options=["SMTPUTF8"]) == {}
        assert client.sendmail("sender@example.org", ["Anna@BÜCHER.example"], body,
                               mail_options=["SMTPUTF8"]) == {}
        # The A-label needs no SMTPUTF8.
        assert client.sendmail("sender@example.org", ["anna@xn--bcher-kva.example"],
                               body) == {}
    books = idn_server.books
    wait_until(lambda: len(maildir_messages(books).get("anna", [])) >= 3, 30,
               f"three messages in {books}/anna: {server.log()[-2000:]}")
    delivered = maildir_messages(books)["anna"]
    assert len(delivered) == 3, delivered
    assert all(message.endswith(b"\n\nfor the books\n") for message in delivered), delivered
    # None went to the other local domain's Maildirs.
    assert maildir_messages(server.mail) == {}

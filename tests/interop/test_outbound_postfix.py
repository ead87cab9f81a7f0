"""
``twistd -n mailframe`` delivers to a real Postfix: mailframe takes a
message from smtplib for two recipients in ``postfix.test``, and its
queue runner sends it, in one transaction, to its smarthost: a private
Postfix instance on loopback (:mod:`tests.interop.postfix_support`).

That Postfix is the final destination: ``postfix.test`` is a virtual
mailbox domain (``virtual_mailbox_domains``, with an ``inline:`` map of
its two mailboxes) and virtual(8) delivers into Maildirs under the test's
directory as ``nobody``. The tests read those Maildirs, and Postfix's
maillog, which shows one queue id for both recipients.

- Plaintext: Postfix offers no STARTTLS, and mailframe's ``smtp_tls =
  "may"`` (from its config file) delivers without TLS.
- STARTTLS: Postfix has a certificate from the test CA
  (``smtpd_tls_security_level = may``); ``may``, ``encrypt`` and
  ``verify`` all deliver over TLS; ``verify`` trusts the test CA through
  ``smtp_trust_roots`` in mailframe's config file. With another CA there,
  ``verify`` fails transiently and Postfix gets nothing.

The message has dot lines and a 998-octet line; it must reach each
Maildir byte for byte, after the fields that the deliveries put on top
(virtual(8)'s ``Return-Path:``, ``X-Original-To:`` and ``Delivered-To:``,
Postfix's ``Received:``, mailframe's ``Received:``).
"""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from tests.certs import make_certificates
from tests.interop.conftest import Server, start_server
from tests.interop.postfix_support import PrivatePostfix, private_postfix

if TYPE_CHECKING:
    # Not imported at run time: pytest would try to collect its "Test" class.
    from tests.certs import TestCertificates

pytestmark = pytest.mark.interop

DOMAIN = "postfix.test"
POSTFIX_HOSTNAME = "mx.postfix.test"
SENDER = "sender@example.com"
RECIPIENTS = (f"alice@{DOMAIN}", f"bob@{DOMAIN}")
#: Every wait is bounded by this many seconds.
TIMEOUT = 60.0

LONG = b"L" * 998
# Date: and Message-ID: are there, so that nobody needs to add them.
MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: alice@postfix.test, bob@postfix.test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <outbound-postfix@example.com>\r\n"
    b"Subject: from mailframe to Postfix\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"...three\r\n"
    b" . \r\n"
    + LONG + b"\r\n"
    + b"".join(b"line %05d " % i + b"x" * 60 + b"\r\n" for i in range(2000))
    + b".final dot line\r\nthe end\r\n"
)

#: A Postfix queue id (short form: hexadecimal).
QUEUE_ID = r"[0-9A-F]{6,}"


# -- Postfix as the receiving MTA ---------------------------------------------------------


def start_receiver(postfix: PrivatePostfix, certs: TestCertificates | None = None) -> pathlib.Path:
    """
    Start *postfix* as the MTA for ``postfix.test``, with STARTTLS when
    there are *certs*; return the base directory of its Maildirs.
    """
    nobody = pwd.getpwnam("nobody")
    mail = postfix.home / "mail"
    mail.mkdir()
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    mailboxes = ", ".join(f"{r}={r.split('@')[0]}/" for r in RECIPIENTS)
    settings = {
        "myhostname": POSTFIX_HOSTNAME,
        "mydomain": DOMAIN,
        "virtual_mailbox_domains": DOMAIN,
        "virtual_mailbox_base": str(mail),
        "virtual_mailbox_maps": f"inline:{{ {mailboxes} }}",
        "virtual_uid_maps": f"static:{nobody.pw_uid}",
        "virtual_gid_maps": f"static:{nobody.pw_gid}",
        # No header rewriting for any client: cleanup adds and changes
        # nothing in the message.
        "local_header_rewrite_clients": "",
        "remote_header_rewrite_domain": "",
    }
    if certs is not None:
        settings |= {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(certs.cert),
            "smtpd_tls_key_file": str(certs.key),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        }
    postfix.start(settings)
    return mail


def maildir(mail: pathlib.Path, user: str) -> list[bytes]:
    new = mail / user / "new"
    if not new.is_dir():
        return []
    return [(new / name).read_bytes() for name in sorted(os.listdir(new))]


# -- mailframe, and the logs of both -------------------------------------------------------


def start_mailframe(root: pathlib.Path, postfix: PrivatePostfix, policy: str,
                    trust_root: pathlib.Path | None = None) -> Server:
    """mailframe with Postfix as its smarthost and ``smtp_tls = policy`` in its config file."""
    config = root / "mailframe.toml"
    roots = f'smtp_trust_roots = ["{trust_root}"]\n' if trust_root else ""
    config.write_text(f'smtp_tls = "{policy}"\n{roots}')
    return start_server(root, ["--config", str(config),
                               "--smarthost", f"127.0.0.1:{postfix.port}",
                               "--retry-schedule", "3s"])


@pytest.fixture
def postfix() -> Iterator[PrivatePostfix]:
    with private_postfix() as instance:
        yield instance


@pytest.fixture
def mailframe_factory(tmp_path: pathlib.Path) -> Iterator[Callable[..., Server]]:
    """Start mailframe (once) for a Postfix and a policy; it is stopped at the end."""
    started: list[Server] = []

    def start(postfix: PrivatePostfix, policy: str,
              trust_root: pathlib.Path | None = None) -> Server:
        server = start_mailframe(tmp_path, postfix, policy, trust_root)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@contextmanager
def logs_on_failure(postfix: PrivatePostfix, mailframe: Server) -> Iterator[None]:
    """Print Postfix's maillog and mailframe's log if the block fails."""
    try:
        yield
    except BaseException:
        print(f"==== Postfix maillog ({postfix.maillog}) ====\n{postfix.log()}")
        print(f"==== mailframe log ({mailframe.log_path}) ====\n{mailframe.log()[-20000:]}")
        raise


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def submit(mailframe: Server) -> None:
    with smtplib.SMTP("127.0.0.1", mailframe.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.sendmail(SENDER, list(RECIPIENTS), MESSAGE) == {}


def outcomes(mailframe: Server) -> list[tuple[str, str, str]]:
    """``(recipient, status, reply)`` of each delivery attempt in mailframe's log."""
    pattern = re.compile(r": to=<([^>]*)> status=(\w+) reply=(.*)$")
    return [(match[1], match[2], match[3]) for line in mailframe.log().splitlines()
            if (match := pattern.search(line))]


def header_fields(header: bytes) -> list[str]:
    """The fields of an (LF) header, each unfolded to one line."""
    fields: list[str] = []
    for line in header.decode().split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] += " " + line.strip()
        elif line:
            fields.append(line)
    return fields


# -- the delivery, and what both sides say of it ---------------------------------------


def deliver_and_check(postfix: PrivatePostfix, mail: pathlib.Path, mailframe: Server) -> str:
    """
    Submit the message, wait for both Maildirs, check everything common to
    plaintext and TLS, and return Postfix's ``Received:`` field (unfolded).
    """
    submit(mailframe)
    wait_for(lambda: all(maildir(mail, r.split("@")[0]) for r in RECIPIENTS),
             "the message in both Maildirs of Postfix")
    wait_for(lambda: len(outcomes(mailframe)) >= len(RECIPIENTS),
             "mailframe's log of both deliveries")
    # postlogd writes the maillog on its own time.
    wait_for(lambda: len(postfix.log_lines(r"virtual\[\d+\]: .* status=sent")) >= 2,
             "virtual(8)'s deliveries in the maillog")

    # Postfix: one message (one queue id) with both recipients.
    [client] = postfix.log_lines(rf"smtpd\[\d+\]: {QUEUE_ID}: client=")
    queue_id = re.search(rf": ({QUEUE_ID}): client=unknown\[127\.0\.0\.1\]", client)
    assert queue_id is not None, client
    qid = queue_id.group(1)
    [active] = postfix.log_lines(rf"qmgr\[\d+\]: {qid}: from=")
    assert f"from=<{SENDER}>" in active and ", nrcpt=2 (queue active)" in active, active
    sent = postfix.log_lines(r"virtual\[\d+\]: .* status=sent")
    assert sorted(line.split(": ", 1)[1].split(",")[0] for line in sent) == \
        [f"{qid}: to=<{r}>" for r in RECIPIENTS], sent
    assert all("status=sent (delivered to maildir)" in line for line in sent), sent

    # mailframe: both delivered with Postfix's reply, at the first attempt.
    assert sorted(outcomes(mailframe)) == [
        (r, "delivered", f"250 2.0.0 Ok: queued as {qid}") for r in RECIPIENTS]

    # The message, byte for byte after the trace fields of each delivery.
    body = MESSAGE.replace(b"\r\n", b"\n")
    received = []
    for recipient in RECIPIENTS:
        [delivered] = maildir(mail, recipient.split("@")[0])
        assert delivered.endswith(body), delivered[:2000]
        fields = header_fields(delivered[:-len(body)])
        assert [f.split(":")[0] for f in fields] == \
            ["Return-Path", "X-Original-To", "Delivered-To", "Received", "Received"], fields
        assert fields[:3] == [f"Return-Path: <{SENDER}>", f"X-Original-To: {recipient}",
                              f"Delivered-To: {recipient}"], fields
        assert fields[3].startswith("Received: from mx.example.com (unknown [127.0.0.1])"), \
            fields[3]
        assert f" by {POSTFIX_HOSTNAME} (Postfix) with " in fields[3], fields[3]
        assert f" id {qid};" in fields[3], fields[3]
        assert " by mx.example.com (mailframe) with ESMTP id " in fields[4], fields[4]
        received.append(fields[3])
    assert received[0] == received[1]
    return received[0]


def test_plaintext(postfix: PrivatePostfix,
                   mailframe_factory: Callable[[PrivatePostfix, str], Server]) -> None:
    """Postfix offers no STARTTLS; ``may`` goes on in plaintext."""
    mail = start_receiver(postfix)
    mailframe = mailframe_factory(postfix, "may")
    with logs_on_failure(postfix, mailframe):
        received = deliver_and_check(postfix, mail, mailframe)
        assert " with ESMTP id " in received and "using TLS" not in received, received
        assert not postfix.log_lines("TLS connection established"), postfix.log()
        assert f"SMTP session with 127.0.0.1[127.0.0.1]:{postfix.port} (TLS: no)" \
            in mailframe.log()


@pytest.mark.parametrize("policy", ["may", "encrypt", "verify"])
def test_starttls(postfix: PrivatePostfix,
                  mailframe_factory: Callable[..., Server],
                  policy: str) -> None:
    certs = make_certificates(postfix.home / "tls", hostname=POSTFIX_HOSTNAME)
    mail = start_receiver(postfix, certs)
    # The smarthost is 127.0.0.1: verify checks the certificate's address,
    # which the test CA signed.
    mailframe = mailframe_factory(postfix, policy, certs.ca if policy == "verify" else None)
    with logs_on_failure(postfix, mailframe):
        received = deliver_and_check(postfix, mail, mailframe)
        # Postfix's Received: names the TLS session.
        assert " with ESMTPS id " in received, received
        assert re.search(r"\(using TLSv1\.[23] with cipher \S+", received), received
        [established] = postfix.log_lines(r"smtpd\[\d+\]: .*TLS connection established from")
        assert "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1." \
            in established, established
        assert f"SMTP session with 127.0.0.1[127.0.0.1]:{postfix.port} (TLS: yes)" \
            in mailframe.log()


def test_verify_with_another_authority(
        postfix: PrivatePostfix, mailframe_factory: Callable[..., Server]) -> None:
    """verify does check: a chain from a CA that is not trusted is a transient failure."""
    certs = make_certificates(postfix.home / "tls", hostname=POSTFIX_HOSTNAME)
    other = make_certificates(postfix.home / "other", hostname=POSTFIX_HOSTNAME, serial=7)
    mail = start_receiver(postfix, certs)
    mailframe = mailframe_factory(postfix, "verify", other.ca)
    with logs_on_failure(postfix, mailframe):
        submit(mailframe)
        wait_for(lambda: len(outcomes(mailframe)) >= len(RECIPIENTS),
                 "mailframe's log of the failed attempt")
        for recipient, status, reply in outcomes(mailframe):
            assert recipient in RECIPIENTS
            assert status == "transient", (status, reply)
            assert reply.startswith("451 4.7.5 TLS with 127.0.0.1 failed"), reply
        assert not any(maildir(mail, r.split("@")[0]) for r in RECIPIENTS)
        # Postfix saw the handshake fail and took no message.
        assert not postfix.log_lines(rf"smtpd\[\d+\]: {QUEUE_ID}: client="), postfix.log()
        assert not postfix.log_lines("TLS connection established"), postfix.log()

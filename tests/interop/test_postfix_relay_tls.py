"""
Postfix relays to ``twistd -n mailframe`` over STARTTLS: a private Postfix
instance (its own config directory, queue and log; no chroot; loopback
only) takes a message with smtpd from smtplib and hands it to its smtp(8)
client, whose relayhost is mailframe's port-25-style listener and whose
``smtp_tls_security_level`` is ``encrypt``. mailframe offers STARTTLS
there because ``--tls-cert`` is set, and delivers to the Maildir.

Nothing of the system's Postfix (``/etc/postfix``, its queue) is read or
changed. Postfix's master runs its daemons as the ``postfix`` user, so this
needs root.
"""

from __future__ import annotations

import pathlib
import shutil
import smtplib
from collections.abc import Iterator

import pytest

from tests.certs import make_certificates
from tests.interop.conftest import Server, start_server
from tests.interop.postfix_support import PrivatePostfix, private_postfix
from tests.interop.tls_support import received_field

pytestmark = pytest.mark.interop


@pytest.fixture
def postfix_relay(tmp_path: pathlib.Path) -> Iterator[tuple[PrivatePostfix, Server]]:
    certs = make_certificates(tmp_path / "certs")
    mailframe = start_server(tmp_path, ["--tls-cert", str(certs.cert),
                                        "--tls-key", str(certs.key)])
    try:
        with private_postfix() as postfix:
            # Where the postfix user can read it.
            cafile = postfix.home / "ca.pem"
            shutil.copyfile(certs.ca, cafile)
            cafile.chmod(0o644)
            postfix.start({
                "myhostname": "relay.example.test",
                "relayhost": f"[127.0.0.1]:{mailframe.port}",
                "smtp_tls_security_level": "encrypt",
                "smtp_tls_CAfile": str(cafile),
                "smtp_tls_loglevel": "1",
            })
            yield postfix, mailframe
    finally:
        mailframe.stop()


MESSAGE = (b"From: sender@relay.example.test\r\nTo: alice@example.com\r\n"
           b"Subject: through Postfix, over TLS\r\n\r\nrelayed with STARTTLS\r\n")


def test_postfix_relays_over_starttls(postfix_relay: tuple[PrivatePostfix, Server]) -> None:
    postfix, mailframe = postfix_relay
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.sendmail("sender@relay.example.test", ["alice@example.com"],
                               MESSAGE) == {}
    try:
        [delivered] = mailframe.wait_delivered("alice", 1, timeout=60)
    except TimeoutError as error:
        raise AssertionError(f"{error}\nPostfix maillog:\n{postfix.log()}") from None
    received = received_field(delivered)
    log = postfix.log()
    assert received.startswith("Received: from relay.example.test (unknown [127.0.0.1])"), \
        (received, log)
    assert "(using TLSv1." in received and " with cipher " in received, (received, log)
    assert " by mx.example.com (mailframe) with ESMTPS id " in received, (received, log)
    assert "Authenticated sender" not in received
    # Postfix's own record: TLS to the relayhost, with a chain that the test
    # CA verifies, and the message sent, with mailframe's queue id.
    assert "Trusted TLS connection established to 127.0.0.1[127.0.0.1]" in log, log
    queue_id = received.split(" with ESMTPS id ")[1].split(";")[0].split()[0]
    sent = [line for line in log.splitlines() if "status=sent" in line]
    assert len(sent) == 1, log
    assert f"relay=127.0.0.1[127.0.0.1]:{mailframe.port}," in sent[0], log
    assert f"(250 2.0.0 Ok: queued as {queue_id})" in sent[0], log
    # Postfix adds Message-ID: and Date:, and changes nothing else.
    assert b"\nSubject: through Postfix, over TLS\n" in delivered
    assert delivered.endswith(b"\n\nrelayed with STARTTLS\n")

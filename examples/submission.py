"""
Run a submission listener (RFC 6409): STARTTLS, then AUTH, then the mail.

The program makes a self-signed certificate and starts the mail service on
free loopback ports, with a temporary queue and Maildir: an MX listener
(STARTTLS offered, no AUTH) and a submission listener. It shows that the
MX listener offers no AUTH and relays for no one. Then smtplib submits one
message as alice: EHLO, STARTTLS (trusting that certificate only), EHLO
again, AUTH, and the message. The program prints what the server offered
before and after TLS, what it answered, and the ``Received:`` field of the
delivered message, which names the TLS session and the authenticated
sender. Then it stops.

Run it with:  python examples/submission.py
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import smtplib
import ssl
import sys
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from mailframe.compose import build_mail_service
from mailframe.config import settings_from

HOSTNAME = "mx.example.com"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: submitted over TLS\r\n"
    b"\r\n"
    b"Hi Bob, this went through the submission port.\r\n"
)


def make_certificate(directory: str) -> tuple[str, str]:
    """Write a self-signed certificate for HOSTNAME and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(HOSTNAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_path, key_path


def keywords(client: smtplib.SMTP) -> str:
    return " ".join(sorted(client.esmtp_features)).upper()


def submit(port: int, cert_path: str) -> list[str]:
    """Submit one message as alice; runs in a thread, as smtplib blocks."""
    report = []
    context = ssl.create_default_context(cafile=cert_path)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.org")
        report.append(f"offered in clear: {keywords(client)}")
        try:
            client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE)
        except smtplib.SMTPSenderRefused as refusal:
            report.append(f"MAIL before AUTH: {refusal.smtp_code} {refusal.smtp_error.decode()}")
        code, text = client.starttls(context=context)
        report.append(f"STARTTLS: {code} {text.decode()}")
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        report.append(f"TLS: {sock.version()}, certificate for {HOSTNAME} verified")
        client.ehlo("client.example.org")
        report.append(f"offered over TLS: {keywords(client)}")
        code, text = client.login("alice", "s3cret")
        report.append(f"AUTH: {code} {text.decode()}")
        refused = client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE)
        report.append(f"sent to bob@example.com, refused: {refused or 'none'}")
    return report


def probe_mx(port: int, cert_path: str) -> list[str]:
    """The MX listener offers STARTTLS but never AUTH, and relays for no one."""
    report = []
    context = ssl.create_default_context(cafile=cert_path)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo("client.example.org")
        report.append(f"MX offers over TLS: {keywords(client)}")
        client.mail("someone@example.net")
        code, text = client.rcpt("carol@example.org")
        report.append(f"MX, RCPT for another domain: {code} {text.decode()}")
    return report


async def main(work: str) -> None:
    cert_path, key_path = make_certificate(work)
    passwords = os.path.join(work, "passwords")
    with open(passwords, "w", encoding="utf-8") as out:
        out.write("alice:s3cret\n")
    maildirs = os.path.join(work, "mail")
    config = settings_from({
        # An MX-style listener (STARTTLS offered, no AUTH) and a submission
        # listener (STARTTLS before AUTH, AUTH before MAIL), on free ports.
        "listen": ["tcp:0:interface=127.0.0.1"],
        "submission": ["tcp:0:interface=127.0.0.1"],
        "hostname": HOSTNAME,
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.com": maildirs},
        "tls_cert": cert_path,
        "tls_key": key_path,
        # The AUTH checker, a twisted.cred description: file: reads lines of
        # "username:password".
        "auth_checker": f"file:{passwords}",
        # Only authenticated clients may send mail to other domains.
        "relay_networks": "none",
    })
    service = build_mail_service(config, reactor)
    service.startService()
    try:
        await service.ready
        mx, submission = (address.port for address in service.addresses())
        print(f"listening: MX on 127.0.0.1:{mx}, submission on 127.0.0.1:{submission}")
        for line in await threads.deferToThread(probe_mx, mx, cert_path):
            print(line)
        for line in await threads.deferToThread(submit, submission, cert_path):
            print(line)
        new = os.path.join(maildirs, "bob", "new")
        for _ in range(200):  # the queue runner delivers in the background
            if os.path.isdir(new) and os.listdir(new):
                break
            await deferLater(reactor, 0.05)
        [name] = os.listdir(new)
        with open(os.path.join(new, name), encoding="utf-8") as delivered:
            message = delivered.read()
        header = message.split("\n\n", 1)[0]
        # Unfold the Received: field (RFC 5322 §2.2.3) to show it on one line.
        fields = header.replace("\n\t", " ").replace("\n ", " ").splitlines()
        print("delivered to bob:")
        for field in fields:
            print(f"  {field}")
    finally:
        await service.stopService()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        failures: list[Any] = []
        d = ensureDeferred(main(work))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
        if failures:
            failures[0].printTraceback(file=sys.stderr)
            sys.exit(1)

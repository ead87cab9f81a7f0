"""
Helpers for the TLS and AUTH interop tests: a ``twistd -n mailframe`` with a
certificate, a submission listener and an AUTH checker; client TLS contexts
that trust the test CA; and a raw client that can start TLS.
"""

from __future__ import annotations

import pathlib
import socket
import ssl
import time
from collections.abc import Sequence

import attrs
from cryptography import x509

from tests.certs import TestCertificates, make_certificates
from tests.interop.conftest import RawSMTP, Server, free_port, start_server, wait_for_greeting

USER = "alice"
PASSWORD = "s3cret"
#: The in-memory strcred checker, as an administrator would write it.
MEMORY_CHECKER = f"memory:{USER}:{PASSWORD}"


def file_checker(root: pathlib.Path) -> str:
    """A strcred ``file:`` checker (``user:password`` lines) written under *root*."""
    path = root / "passwd"
    path.write_text(f"{USER}:{PASSWORD}\nbob:hunter2\n")
    return f"file:{path}"


@attrs.define
class TLSServer:
    """A running mailframe with STARTTLS, a submission listener and AUTH."""

    server: Server
    submission: int
    certs: TestCertificates
    checker: str

    @property
    def port(self) -> int:
        """The port-25-style (``--listen``) listener."""
        return self.server.port

    def stop(self) -> int:
        return self.server.stop()


def start_tls_server(root: pathlib.Path, extra: Sequence[str] = (),
                     checker: str | None = None) -> TLSServer:
    """
    Start mailframe with a certificate for mx.example.com (made under
    *root*/certs), ``--submission`` on a second free port and ``--auth``
    *checker* (by default ``memory:alice:s3cret``).
    """
    certs = make_certificates(root / "certs")
    if checker is None:
        checker = MEMORY_CHECKER
    submission = free_port()
    server = start_server(root, [
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
        "--submission", f"tcp:{submission}:interface=127.0.0.1",
        "--auth", checker, *extra,
    ])
    try:
        wait_for_greeting(submission)
    except TimeoutError:
        server.stop(5)
        raise AssertionError(f"no submission listener; log:\n{server.log()}") from None
    return TLSServer(server, submission, certs, checker)


def client_context(*cafiles: pathlib.Path) -> ssl.SSLContext:
    """A client context that trusts only *cafiles*, and checks host names."""
    context = ssl.create_default_context(cafile=str(cafiles[0]))
    for cafile in cafiles[1:]:
        context.load_verify_locations(cafile=str(cafile))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    return context


def peer_serial(sock: ssl.SSLSocket) -> int:
    """The serial number of the certificate the server presented on *sock*."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_for_tls_greeting(port: int, context: ssl.SSLContext, hostname: str = "mx.example.com",
                          timeout: float = 30.0) -> None:
    """Wait for a 220 on an implicit-TLS (``ssl:``) listener."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as plain, \
                    context.wrap_socket(plain, server_hostname=hostname) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError as error:
            last = error
            time.sleep(0.05)
    raise TimeoutError(f"no TLS 220 greeting on port {port} within {timeout} s: {last!r}")


class TLSRawSMTP(RawSMTP):
    """:class:`RawSMTP` that can also do the client side of STARTTLS."""

    def start_tls(self, context: ssl.SSLContext, hostname: str = "mx.example.com") -> None:
        """Do the TLS handshake now, over the connection as it is."""
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self.file = self.sock.makefile("rb")

    def starttls(self, context: ssl.SSLContext, hostname: str = "mx.example.com") -> None:
        """STARTTLS, its 220, and the handshake."""
        code, text = self.command(b"STARTTLS")
        assert code == 220, text
        self.start_tls(context, hostname)

    def silent_for(self, seconds: float) -> bool:
        """Whether the server sends nothing for *seconds* (and keeps the connection)."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(1)
        except (TimeoutError, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.settimeout(previous)
        raise AssertionError(f"the server sent {data!r} (EOF if empty) while it should be silent")


def ehlo_keywords(reply: bytes) -> list[str]:
    """The keywords of a raw EHLO reply, without the first line."""
    lines = reply.decode().split("\r\n")[1:]
    return [line[4:].split(" ")[0].upper() for line in lines if line]


def received_field(message: bytes) -> str:
    """
    The first ``Received:`` field of a delivered (LF) message, unfolded: the
    one mailframe added.
    """
    text = message.decode("utf-8")
    start = text.index("\nReceived: ") + 1
    end = start
    while True:
        end = text.index("\n", end) + 1
        if text[end:end + 1] not in ("\t", " "):
            break
    return " ".join(text[start:end].split())

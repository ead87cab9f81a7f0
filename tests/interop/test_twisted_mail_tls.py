"""
Interoperation with Twisted's own mail client over STARTTLS and AUTH:
:class:`twisted.mail.smtp.ESMTPSenderFactory` with a user name and
password, a context that trusts only the test CA, and both
``requireTransportSecurity`` and ``requireAuthentication``, against the
submission listener of ``twistd -n mailframe``.

The client runs on a real reactor in a child Python process.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.interop.conftest import REPO
from tests.interop.tls_support import PASSWORD, USER, TLSServer, received_field, start_tls_server

pytestmark = pytest.mark.interop

#: Twisted's client takes a message with local (LF) line ends, and sends CRLF.
MESSAGE = b"From: alice@example.com\nTo: carol@example.com\nSubject: from Twisted over TLS\n\nhi\n"

SCRIPT = r"""
import json, sys
from io import BytesIO

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.mail.smtp import ESMTPSender, ESMTPSenderFactory

port, cafile, user, password = sys.argv[1:5]
recipients = sys.argv[5:]
message = sys.stdin.buffer.read()
outcome = {"log": []}


class Sender(ESMTPSender):
    def sendLine(self, line):
        outcome["log"].append(line.split(b" ")[0].decode("ascii", "replace"))
        return super().sendLine(line)

    def smtpState_msgSent(self, code, resp):
        outcome["final"] = [code, resp.decode("utf-8", "replace")]
        return super().smtpState_msgSent(code, resp)


class Factory(ESMTPSenderFactory):
    protocol = Sender


def sent(result):
    count, addresses = result
    outcome["accepted"] = count
    outcome["recipients"] = [[a.decode(), c, r.decode()] for a, c, r in addresses]


def failed(failure):
    outcome["error"] = repr(failure.value)


def stop(_):
    print(json.dumps(outcome), flush=True)
    reactor.stop()


with open(cafile, "rb") as f:
    authority = ssl.Certificate.loadPEM(f.read())
# Checks the chain against the test CA and the name against mx.example.com.
context = ssl.optionsForClientTLS("mx.example.com", trustRoot=authority)
done = Deferred()
done.addCallbacks(sent, failed).addBoth(stop)
factory = Factory(user.encode(), password.encode(), "alice@example.com", recipients,
                  BytesIO(message), done, retries=0, timeout=30, contextFactory=context,
                  requireAuthentication=True, requireTransportSecurity=True)
reactor.connectTCP("127.0.0.1", int(port), factory)
reactor.callLater(50, lambda: done.called or done.errback(Exception("timed out")))
reactor.run()
"""


@pytest.fixture
def tls_server(tmp_path: pathlib.Path) -> Iterator[TLSServer]:
    running = start_tls_server(tmp_path, ["--relay-network", "none"])
    yield running
    running.stop()


def run_client(server: TLSServer, port: int, password: str,
               *recipients: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(port), str(server.certs.ca), USER,
         password, *recipients],
        input=MESSAGE, capture_output=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    outcome: dict[str, object] = json.loads(result.stdout)
    return outcome


def test_esmtp_sender_factory_over_starttls_with_auth(tls_server: TLSServer) -> None:
    outcome = run_client(tls_server, tls_server.submission, PASSWORD, "carol@example.com",
                         "dave@remote.example")
    assert "error" not in outcome, outcome
    commands = outcome["log"]
    assert isinstance(commands, list)
    # EHLO, STARTTLS, EHLO again, AUTH, then the transaction.
    assert commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"], commands
    assert outcome["accepted"] == 2, outcome
    final = outcome["final"]
    assert isinstance(final, list)
    code, text = final
    assert code == 250 and text.startswith("2.0.0 Ok: queued as "), text
    queue_id = text.split()[-1]
    [delivered] = tls_server.server.wait_delivered("carol", 1)
    received = received_field(delivered)
    assert "(using TLSv1." in received, received
    assert "(Authenticated sender: alice)" in received, received
    assert f" with ESMTPSA id {queue_id};" in received, received
    assert delivered.endswith(MESSAGE)


def test_esmtp_sender_factory_wrong_password(tls_server: TLSServer) -> None:
    outcome = run_client(tls_server, tls_server.submission, "wrong", "carol@example.com")
    error = outcome.get("error")
    assert isinstance(error, str) and "535" in error, outcome
    assert tls_server.server.delivered("carol") == []


def test_esmtp_sender_factory_finds_no_auth_on_port_25_listener(tls_server: TLSServer) -> None:
    """requireAuthentication: the port-25-style listener offers no AUTH, even in TLS."""
    outcome = run_client(tls_server, tls_server.port, PASSWORD, "carol@example.com")
    error = outcome.get("error")
    assert isinstance(error, str) and "AUTHRequiredError" in error, outcome
    commands = outcome["log"]
    assert isinstance(commands, list)
    assert "STARTTLS" in commands and "AUTH" not in commands, commands
    assert tls_server.server.delivered("carol") == []

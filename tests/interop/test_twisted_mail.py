"""
Interoperation with Twisted's own mail client,
:class:`twisted.mail.smtp.ESMTPSenderFactory`, against ``twistd -n mailframe``.

The client runs on a real reactor in a child Python process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.interop.conftest import REPO, Server

pytestmark = pytest.mark.interop

#: Twisted's client takes a message with local (LF) line ends, and sends CRLF.
MESSAGE = (b"From: sender@example.org\nTo: carol@example.com\nSubject: from Twisted\n\n"
           b".a line that starts with a dot\n.\nlast line\n")

SCRIPT = r"""
import json, sys
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.mail.smtp import ESMTPSender, ESMTPSenderFactory

port, recipients = int(sys.argv[1]), sys.argv[2:]
message = sys.stdin.buffer.read()
outcome = {}


class Sender(ESMTPSender):
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


done = Deferred()
done.addCallbacks(sent, failed).addBoth(stop)
factory = Factory(None, None, "sender@example.org", recipients, BytesIO(message), done,
                  retries=0, timeout=30, requireAuthentication=False,
                  requireTransportSecurity=False)
reactor.connectTCP("127.0.0.1", port, factory)
reactor.callLater(50, lambda: done.called or done.errback(Exception("timed out")))
reactor.run()
"""


def test_esmtp_sender_factory(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(server.port), "carol@example.com",
         "dave@example.com"],
        input=MESSAGE, capture_output=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    outcome = json.loads(result.stdout)
    assert "error" not in outcome, outcome
    assert outcome["accepted"] == 2
    assert sorted(address for address, _, _ in outcome["recipients"]) == [
        "carol@example.com", "dave@example.com"]
    assert all(code == 250 for _, code, _ in outcome["recipients"])
    code, text = outcome["final"]
    assert code == 250 and text.startswith("2.0.0 Ok: queued as "), text
    queue_id = text.split()[-1]
    for user in ("carol", "dave"):
        [delivered] = server.wait_delivered(user, 1)
        assert delivered.startswith(b"Return-Path: <sender@example.org>\n")
        # Twisted greets with EHLO and its own host name.
        assert f"(mailframe) with ESMTP id {queue_id};\n".encode() in delivered
        assert delivered.endswith(MESSAGE)

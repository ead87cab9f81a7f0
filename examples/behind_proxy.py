"""
mailframe behind a load balancer that speaks the PROXY protocol.

The listener is written ``haproxy:tcp:...``: each connection must start
with a PROXY header naming the client, as HAProxy's ``send-proxy-v2`` or
``send-proxy`` sends it, and the session sees that client, never the
balancer. Here every connection comes from 127.0.0.1, a relay network by
default; the client the header names, 203.0.113.7, is not, so it may send
mail to example.com but not relay elsewhere. A version 2 LOCAL header, the
balancer's own health check, names no client at all, and may not relay
either.

The program starts mailframe on a free loopback port with a temporary queue,
plays the balancer with smtplib, prints the replies and the ``Received:``
field of the delivered message, and stops.

Run it with:  python examples/behind_proxy.py
"""

from __future__ import annotations

import os
import smtplib
import socket
import struct
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred

from mailframe.compose import build_mail_service
from mailframe.config import settings_from

#: A version 1 header, as ``send-proxy`` writes it: the client 203.0.113.7
#: connected from port 40000 to the balancer's 192.0.2.25, port 25.
V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.25 40000 25\r\n"
#: A version 2 LOCAL header, as HAProxy's health checks send it.
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)


class ProxiedSMTP(smtplib.SMTP):
    """smtplib that connects as a load balancer would: header first."""

    def __init__(self, header: bytes, *args: Any, **kwargs: Any) -> None:
        self.header = header
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.sendall(self.header)
        return sock  # type: ignore[no-any-return]


def talk(port: int, mail: str) -> None:
    with ProxiedSMTP(V1_HEADER, "127.0.0.1", port, timeout=30) as client:
        code, _ = client.ehlo("client.example")
        print(f"as 203.0.113.7: EHLO {code}")
        client.mail("sender@client.example")
        for recipient in ("someone@elsewhere.example", "alice@example.com"):
            code, text = client.rcpt(recipient)
            print(f"as 203.0.113.7: RCPT TO:<{recipient}> {code} {text.decode()}")
        code, text = client.data(b"Subject: through the balancer\r\n\r\nHello!\r\n")
        print(f"as 203.0.113.7: DATA {code} {text.decode().rsplit(' ', 1)[0]}")
    with ProxiedSMTP(V2_LOCAL, "127.0.0.1", port, timeout=30) as check:
        code, _ = check.ehlo("haproxy.example")
        print(f"health check: EHLO {code}")
        check.mail("sender@client.example")
        code, text = check.rcpt("someone@elsewhere.example")
        print(f"health check: RCPT TO:<someone@elsewhere.example> {code} {text.decode()}")
    new = os.path.join(mail, "alice", "new")
    deadline = time.monotonic() + 30
    while not (os.path.isdir(new) and os.listdir(new)):
        if time.monotonic() > deadline:
            raise TimeoutError("the message was not delivered")
        time.sleep(0.05)
    with open(os.path.join(new, os.listdir(new)[0]), "rb") as handle:
        message = handle.read().decode()
    print("delivered with:", next(line for line in message.splitlines()
                                  if line.startswith("Received:")))


async def main(work: str) -> None:
    mail = os.path.join(work, "mail")
    config = settings_from({
        "listen": ["haproxy:tcp:0:interface=127.0.0.1"],
        "hostname": "mx.example.com",
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.com": mail},
    })
    service = build_mail_service(config, reactor)
    service.startService()
    try:
        await service.ready
        port = service.addresses()[0].port
        print(f"listening behind the balancer on port {port}")
        await threads.deferToThread(talk, port, mail)
    finally:
        await service.stopService()
    print("stopped")


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

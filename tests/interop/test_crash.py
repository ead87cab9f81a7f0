"""
Crash safety of the real ``twistd -n mailframe`` under ``kill -9``.

An injector in the test sends messages, each with a Message-ID of its own,
to a recipient at a remote domain, and notes for each whether the ``250``
after its final dot arrived. The server relays that mail through
``--smarthost`` to a sink on loopback (:mod:`tests.interop.sink`), which
counts the Message-ID of every message it accepts. The server is killed
with SIGKILL

- mid-DATA: while messages are under way whose end of data (CRLF.CRLF)
  was never sent, one of them large enough to be partly written to the
  spool, after the client of another such message went away, and while
  acknowledged messages wait in the queue;
- just after the ``250`` for the last of several messages, while the sink
  defers every recipient, so that they all wait in the queue;
- mid-delivery: while the sink holds back its reply to the final dot of the
  messages the server is relaying.

A new server then runs on the same queue. The tests prove that every
acknowledged message reaches the sink at least once (a ``250`` takes
responsibility for the message, RFC 5321 §4.2.5 and §6.1), that no message
cut off before its end of data is ever delivered, that recovery reports
what it found (entries, entries that were under delivery, partial writes)
and that the queue is empty once the mail is out. A message delivered twice
is allowed (at least once), and counted in the test's output.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from mailframe.stores.spool import WRITE_CHUNK
from tests.interop.conftest import RawSMTP, Server, maildir_messages, start_server, wait_until
from tests.interop.sink import Sink

pytestmark = pytest.mark.interop

#: Messages each test acknowledges before the kill.
MESSAGES = 12
#: Seconds for each wait on the server or the sink.
WAIT = 20.0
#: Octets of the cut-off message that must reach the spool's ``tmp/``:
#: more than the spool writer buffers.
LARGE = 4 * WRITE_CHUNK
SENDER = b"injector@example.com"
RECIPIENT = b"rcpt@remote.example"
QUEUE_STATES = ("incoming", "active", "deferred", "hold", "corrupt")

_RECOVERED = re.compile(
    r"Spool \S+ recovered: (?P<count>\d+) entries; (?P<reactivated>\d+) were active and are"
    r" deferred now; removed (?P<partial>\d+) partial writes and (?P<orphans>\d+) leftover files")


def new_id(label: str) -> str:
    return f"<{uuid.uuid4().hex}.{label}@injector.example>"


def message(message_id: str, label: str) -> bytes:
    """A complete message (without its end of data), CRLF line ends."""
    return (f"From: <{SENDER.decode()}>\r\nTo: <{RECIPIENT.decode()}>\r\n"
            f"Message-ID: {message_id}\r\nSubject: crash test, {label}\r\n\r\n"
            f"Sent by the crash test.\r\n.a line that starts with a dot\r\n").encode()


class Injector:
    """One SMTP session that sends messages and notes which were acknowledged."""

    def __init__(self, port: int) -> None:
        self.client = RawSMTP(port, timeout=WAIT)
        self.acked: list[str] = []
        code, text = self.client.reply()
        assert code == 220, text
        code, text = self.client.command(b"EHLO injector.example")
        assert code == 250, text

    def begin(self) -> None:
        """MAIL, RCPT and DATA, up to the ``354``."""
        for line, expected in ((b"MAIL FROM:<" + SENDER + b">", 250),
                               (b"RCPT TO:<" + RECIPIENT + b">", 250), (b"DATA", 354)):
            code, text = self.client.command(line)
            assert code == expected, (line, text)

    def send(self, label: str) -> str:
        """One whole message; its Message-ID once its ``250`` has arrived."""
        message_id = new_id(label)
        self.begin()
        code, text = self.client.command(message(message_id, label) + b".")
        assert code == 250, text
        self.acked.append(message_id)
        return message_id

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts, stopped after it if they still run."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(10)


def start(root: pathlib.Path, sink: Sink, servers: list[Server]) -> Server:
    """mailframe on *root*, relaying all remote mail to *sink*, retrying every second."""
    log = root / "server.log"
    if log.exists():
        log.rename(root / f"killed-{len(servers)}.log")
    server = start_server(root, ["--smarthost", f"127.0.0.1:{sink.port}",
                                 "--retry-schedule", "1s"])
    servers.append(server)
    return server


def kill(server: Server) -> None:
    server.process.kill()
    assert server.process.wait(10) == -signal.SIGKILL


def queued(server: Server) -> list[str]:
    """The entries in the spool, as ``state/name``."""
    return [f"{state}/{name}" for state in QUEUE_STATES
            if (server.queue / state).is_dir()
            for name in sorted(os.listdir(server.queue / state))]


def in_tmp(server: Server) -> list[str]:
    tmp = server.queue / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


def recovery(server: Server) -> dict[str, int]:
    """What the spool's recovery logged when *server* started."""
    found: list[re.Match[str]] = []

    def logged() -> bool:
        found[:] = list(_RECOVERED.finditer(server.log()))
        return bool(found)

    wait_until(logged, WAIT, f"the recovery line in the log:\n{server.log()[-3000:]}")
    assert len(found) == 1, server.log()[-3000:]
    return {key: int(value) for key, value in found[0].groupdict().items()}


def after_restart(server: Server, sink: Sink, acked: list[str], cut: list[str],
                  label: str) -> None:
    """
    Wait until the sink has every acknowledged message and the queue is
    empty, then check what the sink received.
    """
    assert acked, "nothing was acknowledged before the kill"
    wait_until(lambda: set(acked) <= set(sink.received()), WAIT,
               f"{len(acked)} acknowledged messages at the sink; missing"
               f" {set(acked) - set(sink.received())}; log:\n{server.log()[-3000:]}")
    wait_until(lambda: not queued(server), WAIT,
               f"an empty queue, not {queued(server)}; log:\n{server.log()[-3000:]}")
    received = sink.received()
    assert not set(cut) & set(received), f"delivered although cut off: {set(cut) & set(received)}"
    assert set(received) == set(acked), f"not sent by the injector: {set(received) - set(acked)}"
    assert in_tmp(server) == []
    assert maildir_messages(server.mail) == {}, "a notification was sent"
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    twice = {key: count for key, count in received.items() if count > 1}
    print(f"{label}: {len(acked)} acknowledged, {len(cut)} cut off,"
          f" {len(twice)} delivered more than once {sorted(twice.values())}")


def test_kill_mid_data(tmp_path: pathlib.Path, sink: Sink, servers: list[Server]) -> None:
    """
    Killed while four messages are cut off inside DATA (and after the
    client of a fifth went away inside DATA), while the sink defers the
    acknowledged ones: after the restart the queue holds exactly those,
    recovery removed the partial message, and none of the cut-off ones is
    ever delivered.
    """
    sink.defer = True
    server = start(tmp_path, sink, servers)
    injector = Injector(server.port)
    for number in range(MESSAGES):
        injector.send(f"before the kill {number}")
    cuts = {
        "in its first line of body": b"Subject: cut\r\n\r\nthe first line",
        "before its final dot": b"Subject: cut\r\n\r\n" + b"x" * 998 + b"\r\n",
        "between its final dot and CRLF": b"Subject: cut\r\n\r\nalmost\r\n.",
        "large, before its final dot": (
            b"Subject: cut\r\n\r\n"
            + b"".join(b"line %06d " % i + b"y" * 80 + b"\r\n" for i in range(LARGE // 92))),
    }
    cut: list[str] = []
    sessions: list[Injector] = []
    for label, data in cuts.items():
        message_id = new_id(f"cut off {label}")
        session = Injector(server.port)
        sessions.append(session)
        session.begin()
        session.client.send(f"Message-ID: {message_id}\r\n".encode() + data)
        cut.append(message_id)
    # One more whose client goes away: the server sees that end, not the kill.
    gone_id = new_id("cut off, its client gone")
    gone = Injector(server.port)
    gone.begin()
    gone.client.send(f"Message-ID: {gone_id}\r\n".encode() + cuts["before its final dot"])
    gone.close()
    cut.append(gone_id)
    # The large one is partly in the spool's tmp/ before the kill.
    wait_until(lambda: any(n.endswith(".msg") for n in in_tmp(server)), WAIT,
               f"a partial message in tmp/; log:\n{server.log()[-3000:]}")
    partial = [name for name in in_tmp(server) if name.endswith(".msg")]
    time.sleep(0.2)  # for the short cut-off messages, and the close, to reach the server
    kill(server)
    for session in [injector, *sessions]:
        session.close()

    sink.defer = False
    again = start(tmp_path, sink, servers)
    found = recovery(again)
    assert found["partial"] >= len(partial), (found, partial)
    assert found["count"] == len(injector.acked), found
    after_restart(again, sink, injector.acked, cut, "mid-DATA")


def test_kill_just_after_250(tmp_path: pathlib.Path, sink: Sink, servers: list[Server]) -> None:
    """
    Killed at once after the ``250`` of the last message, while the sink
    defers everything: every acknowledged message is in the queue after the
    restart, and goes out once the sink accepts.
    """
    sink.defer = True
    server = start(tmp_path, sink, servers)
    injector = Injector(server.port)
    for number in range(MESSAGES):
        injector.send(f"acknowledged {number}")
    kill(server)
    injector.close()
    attempts = sink.deferred

    sink.defer = False
    again = start(tmp_path, sink, servers)
    found = recovery(again)
    assert found["count"] == len(injector.acked), found
    after_restart(again, sink, injector.acked, [], f"after 250 ({attempts} deferred first)")


def test_kill_mid_delivery(tmp_path: pathlib.Path, sink: Sink, servers: list[Server]) -> None:
    """
    Killed while the sink holds back its reply to the final dot, so that
    nothing reached it before the kill: the entries under delivery were
    active, and are all delivered after the restart.
    """
    sink.stall = True
    server = start(tmp_path, sink, servers)
    injector = Injector(server.port)
    for number in range(MESSAGES):
        injector.send(f"under delivery {number}")
    wait_until(lambda: sink.stalling >= 1, WAIT,
               f"a delivery to the sink; log:\n{server.log()[-3000:]}")
    stalled = sink.stalling
    kill(server)
    injector.close()
    # The sink sees each connection it stalled on close: nothing counted.
    wait_until(lambda: sink.dropped >= stalled and sink.stalling == 0, WAIT,
               f"{stalled} stalled deliveries cut off ({sink.dropped} so far)")
    assert sink.received() == collections.Counter(), sink.received()
    sink.stall = False
    sink.release.set()

    again = start(tmp_path, sink, servers)
    found = recovery(again)
    assert found["count"] == len(injector.acked), found
    assert found["reactivated"] >= 1, found
    after_restart(again, sink, injector.acked, [], f"mid-delivery ({stalled} stalled)")

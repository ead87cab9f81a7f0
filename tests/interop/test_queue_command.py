"""
The ``mailframe queue`` command beside a live ``twistd -n mailframe``.

Each test starts the real server, which relays mail for other domains
through ``--smarthost`` to a sink on loopback that the test controls
(:mod:`tests.interop.sink`, which this module extends to note more): it can
defer every recipient (``451`` to ``RCPT``), so that mail waits in
``deferred/``, and hold back its reply to a message's final dot, so that a
delivery stays under way and its entry in ``active/``. The command runs as
an operator runs it, ``python -m mailframe.cli queue ... --queue-dir DIR``
in a process of its own, while the server works on the same spool.

The tests prove that:

- ``list`` and ``delete --all`` during a live DATA leave the message being
  received alone: it gets its ``250`` afterwards and is delivered once;
- ``list`` shows an entry under delivery as ``active``, and ``delete``
  removes it. A delivery already handed to the next hop cannot be called
  back, so the message arrives there at most once; but the entry never
  comes back, whether the next hop then accepts the message or defers it;
- ``delete`` works in every state: incoming, active, deferred, hold and
  corrupt; ``stats`` counts the entries of each state;
- ``hold`` keeps an entry out of delivery, also through ``flush``, and
  ``release`` lets it go at once;
- ``flush`` makes deferred mail due now, and the server notices within
  about :data:`~mailframe.stores.spool.TRIGGER_INTERVAL`, although its
  retry schedule says an hour.

Every wait is bounded; the whole module takes well under a minute.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailframe.services.queuerunner import QueueRunner
from mailframe.stores.spool import TRIGGER_INTERVAL, WRITE_CHUNK
from mailframe.transports import SMTPTransportSettings
from tests.interop.conftest import REPO, RawSMTP, Server, start_server, wait_until
from tests.interop.sink import Sink, message_id

pytestmark = pytest.mark.interop

#: Seconds for each wait on the server, the sink or a command.
WAIT = 20.0
SENDER = b"operator-test@example.com"
RECIPIENT = b"rcpt@remote.example"
STATES = ("incoming", "active", "deferred", "hold", "corrupt")
#: The retry schedule of a test in which nothing should be retried by itself.
LATER = "1h"
#: The retry schedule of a test in which an entry that came back would be
#: retried at once.
SOON = "1s"
#: Entries the server's queue runner delivers at once (it is not
#: configurable from the command line).
CONCURRENCY: int = inspect.signature(QueueRunner).parameters["concurrency"].default
#: Connections the SMTP transport opens to the sink at most.
CONNECTIONS = int(attrs.fields(SMTPTransportSettings).connections_per_destination.default or 0)
#: Seconds after which a server that acts on the ``trigger`` file has
#: surely looked at it and claimed what was due.
NOTICED = TRIGGER_INTERVAL + 1.0

_QUEUED_AS = re.compile(rb"queued as ([0-9A-Za-z_-]+)")


class Downstream(Sink):
    """
    The shared sink, which also notes the Message-ID of every message whose
    final dot it has read (before any stall), keeps the messages it
    accepts, and can answer ``451`` to a message after its stall.

    :ivar refuse_after_stall: while true (with :attr:`stall`), a stalled
        message is refused with ``451`` once released, instead of accepted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refuse_after_stall = False
        self._notes = threading.Lock()
        self._arrived: list[str] = []
        self._accepted: dict[str, bytes] = {}

    def arrived(self) -> list[str]:
        """The Message-IDs of the messages whose final dot arrived, in order."""
        with self._notes:
            return list(self._arrived)

    def accepted(self, found: str) -> bytes:
        """The last message accepted with the Message-ID *found*."""
        with self._notes:
            return self._accepted[found]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        found = message_id(content)
        with self._notes:
            self._arrived.append(found)
        if self.stall and self.refuse_after_stall:
            await self._stalled(server)
            return "451 4.3.0 Refused after the stall"
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            with self._notes:
                self._accepted[found] = content
        return reply


@pytest.fixture
def sink() -> Iterator[Downstream]:
    running = Downstream()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def mta(tmp_path: pathlib.Path, sink: Downstream) -> Iterator[Callable[[str], Server]]:
    """
    Starts mailframe on *tmp_path*, relaying all remote mail to the sink on
    a given retry schedule; stops it after the test (before the sink), and
    checks that its log shows no error.
    """
    started: list[Server] = []

    def start(schedule: str) -> Server:
        server = start_server(tmp_path, ["--smarthost", f"127.0.0.1:{sink.port}",
                                         "--retry-schedule", schedule])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(10)
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


# -- the command -----------------------------------------------------------------------


def queue(server: Server, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``mailframe queue ARGV --queue-dir DIR`` on the server's spool."""
    return subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "queue", *argv, "--queue-dir", str(server.queue)],
        cwd=server.root, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=WAIT,
    )


def queue_ok(server: Server, *argv: str) -> subprocess.CompletedProcess[str]:
    """:func:`queue`, which must succeed."""
    result = queue(server, *argv)
    assert result.returncode == 0, (argv, result.returncode, result.stdout, result.stderr)
    return result


def listed(server: Server, *argv: str) -> dict[str, dict[str, Any]]:
    """What ``queue list --json ARGV`` prints, by queue id."""
    out = queue_ok(server, "list", "--json", *argv).stdout
    found = [json.loads(line) for line in out.splitlines()]
    return {item["id"]: item for item in found}


def counts(server: Server) -> dict[str, int]:
    """What ``queue stats --json`` counts, by state, and the total."""
    document = json.loads(queue_ok(server, "stats", "--json").stdout)
    return {**document["counts"], "total": document["total"]}


# -- the spool, as its layout shows it ----------------------------------------------------


def files_of(server: Server, queue_id: str) -> list[str]:
    """Every file of an entry in the spool, as ``directory/name``."""
    names = [f"{state}/{queue_id}.msg" for state in STATES]
    names += [f"env/{queue_id}.env", f"env/{queue_id}.why"]
    return [name for name in names if (server.queue / name).exists()]


def state_of(server: Server, queue_id: str) -> str | None:
    """The directory that holds an entry's message, or ``None``."""
    found = [name.split("/")[0] for name in files_of(server, queue_id)
             if name.endswith(".msg")]
    return found[0] if found else None


def entries(server: Server) -> list[str]:
    """Every entry's message in the spool, as ``state/name``."""
    return [f"{state}/{name}" for state in STATES
            if (server.queue / state).is_dir()
            for name in sorted(os.listdir(server.queue / state))]


def wait_state(server: Server, queue_ids: list[str], state: str) -> None:
    wait_until(lambda: all(state_of(server, q) == state for q in queue_ids), WAIT,
               f"{queue_ids} {state}; spool: {entries(server)}; log:\n{server.log()[-3000:]}")


# -- the client ----------------------------------------------------------------------------


def new_id(label: str) -> str:
    return f"<{uuid.uuid4().hex}.{label}@operator-test.example>"


def message(found: str, lines: int = 1) -> bytes:
    """A message with Message-ID *found* and *lines* lines of body, without its end of data."""
    header = (f"From: <{SENDER.decode()}>\r\nTo: <{RECIPIENT.decode()}>\r\n"
              f"Message-ID: {found}\r\nSubject: queue command test\r\n\r\n").encode()
    return header + b"".join(b"line %06d " % n + b"x" * 64 + b"\r\n" for n in range(lines))


class Client:
    """One SMTP session with the server, sending to :data:`RECIPIENT`."""

    def __init__(self, server: Server) -> None:
        self.smtp = RawSMTP(server.port, timeout=WAIT)
        code, text = self.smtp.reply()
        assert code == 220, text
        code, text = self.smtp.command(b"EHLO client.example")
        assert code == 250, text

    def begin(self) -> None:
        """MAIL, RCPT and DATA, up to the ``354``."""
        for line, expected in ((b"MAIL FROM:<" + SENDER + b">", 250),
                               (b"RCPT TO:<" + RECIPIENT + b">", 250), (b"DATA", 354)):
            code, text = self.smtp.command(line)
            assert code == expected, (line, text)

    def end(self, rest: bytes) -> str:
        """Send the *rest* of the message and its end of data; the queue id of the ``250``."""
        code, text = self.smtp.command(rest + b".")
        assert code == 250, text
        match = _QUEUED_AS.search(text)
        assert match is not None, text
        return match.group(1).decode()

    def send(self, found: str) -> str:
        """One whole message; its queue id."""
        self.begin()
        return self.end(message(found))

    def close(self) -> None:
        self.smtp.close()


def send(server: Server, *found: str) -> list[str]:
    """Send a message for each Message-ID, over one session; their queue ids."""
    client = Client(server)
    try:
        return [client.send(each) for each in found]
    finally:
        client.close()


def damage(server: Server, queue_id: str) -> None:
    """
    Make a deferred entry's envelope unreadable: garble its ``.env``, and
    cut the magic number off its message's trailer. The message keeps its
    modification time, which is its next attempt.
    """
    env = server.queue / "env" / f"{queue_id}.env"
    if env.exists():
        env.write_bytes(b'{"format": "garbled')
    path = server.queue / "deferred" / f"{queue_id}.msg"
    before = path.stat()
    os.truncate(path, before.st_size - 8)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- the tests ------------------------------------------------------------------------------


def test_list_and_delete_during_live_data(mta: Callable[[str], Server],
                                          sink: Downstream) -> None:
    """
    An operator lists the queue and deletes everything in it while a client
    is half-way through a message large enough to be partly on disk: the
    entry that was queued goes, the message being received stays, gets its
    ``250`` and is delivered once, whole.
    """
    server = mta(LATER)
    sink.defer = True
    old_id = new_id("old")
    [old] = send(server, old_id)
    wait_state(server, [old], "deferred")

    live_id = new_id("live")
    # Four times what the spool's writer buffers before a thread appends
    # it (a line is 78 octets): half of it is more than that.
    live = message(live_id, lines=4 * WRITE_CHUNK // 78)
    half = live.rfind(b"\r\n", 0, len(live) // 2) + 2
    client = Client(server)
    try:
        client.begin()
        client.smtp.send(live[:half])
        tmp = server.queue / "tmp"
        wait_until(lambda: any(p.stat().st_size >= WRITE_CHUNK for p in tmp.iterdir()), WAIT,
                   "part of the live message in the spool's tmp/")

        assert list(listed(server)) == [old]
        deleted = queue_ok(server, "delete", "--all")
        assert "deleted 1 entry" in deleted.stderr, deleted.stderr
        assert listed(server) == {}
        assert files_of(server, old) == []
        assert any(tmp.iterdir()), "the delete removed the message being received"

        sink.defer = False
        queue_id = client.end(live[half:])
    finally:
        client.close()
    wait_until(lambda: sink.received()[live_id] >= 1, WAIT,
               f"delivery of {queue_id}; log:\n{server.log()[-3000:]}")
    wait_until(lambda: not entries(server), WAIT, f"an empty queue: {entries(server)}")
    assert sink.received() == {live_id: 1}
    assert sink.accepted(live_id).endswith(live)


@pytest.mark.parametrize("outcome", ["accepted", "refused"])
def test_delete_during_live_delivery(mta: Callable[[str], Server], sink: Downstream,
                                     outcome: str) -> None:
    """
    An operator deletes an entry while the server is delivering it: the
    sink has read the message and not yet replied. The delivery under way
    cannot be called back, so the message arrives if the sink then accepts
    it (``accepted``) and not if it defers it (``refused``). Either way the
    entry is gone at once and stays gone: with a retry schedule of one
    second and a flush to make the server look, it is neither delivered
    again nor tried again.
    """
    server = mta(SOON)
    sink.stall = True
    sink.refuse_after_stall = outcome == "refused"
    found = new_id("active")
    [queue_id] = send(server, found)
    wait_until(lambda: sink.stalling == 1, WAIT,
               f"the delivery stalled at the sink; log:\n{server.log()[-3000:]}")

    shown = listed(server)
    assert list(shown) == [queue_id], shown
    assert shown[queue_id]["state"] == "active", shown
    result = queue_ok(server, "delete", queue_id)
    assert "deleted 1 entry" in result.stderr, result.stderr
    assert listed(server) == {}
    assert files_of(server, queue_id) == []

    sink.release.set()
    wait_until(lambda: f"{queue_id} was deleted during its delivery attempt" in server.log(),
               WAIT, f"the end of the attempt; log:\n{server.log()[-3000:]}")
    queue_ok(server, "flush")
    time.sleep(NOTICED)
    assert files_of(server, queue_id) == [], server.log()[-3000:]
    assert counts(server)["total"] == 0
    assert sink.received()[found] == (1 if outcome == "accepted" else 0)
    assert sink.arrived() == [found], "the entry was tried again"


def test_delete_in_every_state(mta: Callable[[str], Server], sink: Downstream) -> None:
    """
    One entry in each state at once, which ``list`` and ``stats`` show, and
    ``delete`` removes, each with every file of it:

    - deferred: the sink deferred it, and the retry schedule says an hour;
    - hold: as that, then held with ``hold``;
    - corrupt: as that, then its envelope garbled and the entry requeued,
      so that the server claims it and sets it aside;
    - active: the sink holds back its reply to the final dot;
    - incoming: queued while the runner delivers as many entries as it
      may at once, so that it cannot claim it.

    The other active entries are then delivered once each, the deleted
    active one once (it was handed over before its deletion), and none of
    the rest ever.
    """
    server = mta(LATER)
    sink.defer = True
    later_ids = [new_id("deferred"), new_id("hold"), new_id("corrupt")]
    deferred, held, corrupt = later = send(server, *later_ids)
    wait_state(server, later, "deferred")
    queue_ok(server, "hold", held)
    damage(server, corrupt)
    queue_ok(server, "requeue", corrupt)
    wait_state(server, [corrupt], "corrupt")
    wait_state(server, [deferred], "deferred")
    wait_state(server, [held], "hold")

    sink.defer = False
    sink.stall = True
    active_ids = [new_id(f"active{n}") for n in range(CONCURRENCY)]
    active = send(server, *active_ids)
    wait_state(server, active, "active")
    at_sink = min(CONCURRENCY, CONNECTIONS)
    wait_until(lambda: sink.stalling == at_sink, WAIT,
               f"{at_sink} deliveries stalled at the sink; log:\n{server.log()[-3000:]}")
    incoming_id = new_id("incoming")
    [incoming] = send(server, incoming_id)
    assert state_of(server, incoming) == "incoming"
    # An active entry whose message the sink has read, waiting for its reply.
    handed_over = active[active_ids.index(next(f for f in sink.arrived() if f in active_ids))]

    assert counts(server) == {"incoming": 1, "active": CONCURRENCY, "deferred": 1,
                              "hold": 1, "corrupt": 1, "total": CONCURRENCY + 4}
    table = queue_ok(server, "stats").stdout
    assert re.search(rf"^active +{CONCURRENCY}$", table, re.MULTILINE), table
    assert re.search(rf"^total +{CONCURRENCY + 4}$", table, re.MULTILINE), table
    shown = listed(server)
    chosen = {incoming: "incoming", handed_over: "active", deferred: "deferred",
              held: "hold", corrupt: "corrupt"}
    assert {q: shown[q]["state"] for q in chosen} == chosen
    assert shown[held]["reason"] == "held by an operator", shown[held]
    assert "unreadable envelope" in shown[corrupt]["reason"], shown[corrupt]

    result = queue_ok(server, "delete", *chosen)
    assert "deleted 5 entries" in result.stderr, result.stderr
    for queue_id, state in chosen.items():
        assert files_of(server, queue_id) == [], state
    assert counts(server) == {"incoming": 0, "active": CONCURRENCY - 1, "deferred": 0,
                              "hold": 0, "corrupt": 0, "total": CONCURRENCY - 1}
    assert not set(chosen) & set(listed(server))

    sink.release.set()
    wait_until(lambda: not entries(server), WAIT,
               f"an empty queue: {entries(server)}; log:\n{server.log()[-3000:]}")
    received = sink.received()
    assert received == dict.fromkeys(active_ids, 1), received
    for label, found in zip(("deferred", "hold", "corrupt"), later_ids, strict=True):
        assert received[found] == 0, label
    assert received[incoming_id] == 0


def test_hold_survives_flush_and_release_delivers(mta: Callable[[str], Server],
                                                  sink: Downstream) -> None:
    """
    Two deferred entries, one held: a flush makes the server try the other
    again at once, and not the held one; releasing it delivers it.
    """
    server = mta(LATER)
    sink.defer = True
    held_id, other_id = new_id("held"), new_id("other")
    held, other = send(server, held_id, other_id)
    wait_state(server, [held, other], "deferred")
    assert sink.deferred == 2
    queue_ok(server, "hold", held, "--reason", "checked by the test")

    flushed = queue_ok(server, "flush")
    assert "made 1 deferred entry due" in flushed.stderr, flushed.stderr
    wait_until(lambda: sink.deferred == 3, WAIT,
               f"the flushed entry tried again; log:\n{server.log()[-3000:]}")
    wait_state(server, [other], "deferred")
    shown = listed(server)
    assert (shown[held]["state"], shown[held]["attempts"]) == ("hold", 1), shown[held]
    assert shown[held]["reason"] == "checked by the test"
    assert (shown[other]["state"], shown[other]["attempts"]) == ("deferred", 2), shown[other]

    sink.defer = False
    released = queue_ok(server, "release", held)
    assert "released 1 entry" in released.stderr, released.stderr
    wait_until(lambda: sink.received()[held_id] == 1, WAIT,
               f"delivery of the released entry; log:\n{server.log()[-3000:]}")
    wait_until(lambda: state_of(server, held) is None, WAIT, f"{held} removed")
    assert sink.received() == {held_id: 1}
    assert state_of(server, other) == "deferred"


def test_flush_delivers_deferred_mail_promptly(mta: Callable[[str], Server],
                                               sink: Downstream) -> None:
    """
    Mail deferred for an hour is delivered within seconds of a flush, once
    the sink accepts again: the server notices the command's change through
    the spool's ``trigger`` file.
    """
    server = mta(LATER)
    sink.defer = True
    found = new_id("flushed")
    [queue_id] = send(server, found)
    wait_state(server, [queue_id], "deferred")
    entry = listed(server, "--state", "deferred")[queue_id]
    assert entry["next_attempt"] > time.time() + 50 * 60, entry

    sink.defer = False
    start = time.monotonic()
    result = queue_ok(server, "flush")
    assert "made 1 deferred entry due" in result.stderr, result.stderr
    wait_until(lambda: sink.received()[found] == 1, WAIT,
               f"delivery after the flush; log:\n{server.log()[-3000:]}")
    took = time.monotonic() - start
    assert took < TRIGGER_INTERVAL + 4.0, f"delivered {took:.1f} s after the flush"
    wait_until(lambda: not entries(server), WAIT, f"an empty queue: {entries(server)}")
    assert sink.received() == {found: 1}

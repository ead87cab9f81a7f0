"""
Three ``twistd -n mailframe`` nodes share one queue in a real PostgreSQL
(tests/pg_support.py) and relay to one recording sink (aiosmtpd,
:mod:`tests.interop.sink`). Injectors send :data:`MESSAGES` messages
across the nodes, each with a Message-ID of its own, noting each ``250``;
one node is killed with SIGKILL mid-run, and its injectors go on with the
other nodes.

The test proves that every acknowledged message reaches the sink (the
survivors take over the entries the killed node had queued, and, once
their leases run out, those it was delivering), and that a message reaches
the sink more than once only if the killed node held its lease when it
died: duplicates come only from deliveries the kill cut off. The figures
(rate, duplicates, time to drain) are printed.
"""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.interop.conftest import RawSMTP, Server, wait_for_greeting
from tests.interop.sink import Sink, message_id
from tests.interop.test_postgres_server import launch, write_config
from tests.pg_support import postgres

pytestmark = pytest.mark.interop

#: Messages injected in all.
MESSAGES = 3000
#: Injecting sessions per node.
SESSIONS = 2
#: The node that is killed, and after how many acknowledged messages.
VICTIM = 1
KILL_AFTER = MESSAGES // 3
#: The lease of every node: short, so that the survivors take over soon,
#: yet long enough that a live node on a loaded machine renews in time.
LEASE = "10s"
#: Seconds the whole run may take, injection and delivery.
DEADLINE = 240.0
SENDER = b"injector@example.com"
RECIPIENT = b"rcpt@remote.example"


def _message(mid: str, number: int) -> bytes:
    return (f"From: <{SENDER.decode()}>\r\nTo: <{RECIPIENT.decode()}>\r\n"
            f"Message-ID: {mid}\r\nSubject: cluster test {number}\r\n\r\n"
            f"Message {number} of the cluster test.\r\n..a line with a dot\r\n").encode()


class Ledger:
    """What the injectors sent: acknowledged, and cut off (no 250 seen)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.cut: list[str] = []
        self.refused: collections.Counter[int] = collections.Counter()
        self.next = 0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= MESSAGES:
                return None
            self.next += 1
            return self.next - 1


def inject(ledger: Ledger, ports: list[int], alive: list[bool], first: int,
           deadline: float, errors: list[BaseException]) -> None:
    """One injecting session; on a lost connection, on to the next live node."""
    index = first
    client: RawSMTP | None = None
    try:
        while time.monotonic() < deadline:
            if client is None:
                while not alive[index % len(ports)]:
                    index += 1
                client = RawSMTP(ports[index % len(ports)], timeout=30)
                assert client.reply()[0] == 220
                assert client.command(b"EHLO injector.example")[0] == 250
            number = ledger.take()
            if number is None:
                break
            mid = f"<{uuid.uuid4().hex}.{number}@injector.example>"
            try:
                code, text = client.command(b"MAIL FROM:<" + SENDER + b">")
                assert code == 250, text
                code, text = client.command(b"RCPT TO:<" + RECIPIENT + b">")
                assert code == 250, text
                code, text = client.command(b"DATA")
                assert code == 354, text
                code, text = client.command(_message(mid, number) + b".")
            except (OSError, EOFError, AssertionError):
                with ledger.lock:
                    ledger.cut.append(mid)
                client.close()
                client = None
                index += 1
                continue
            with ledger.lock:
                if code == 250:
                    ledger.acked.append(mid)
                else:
                    ledger.cut.append(mid)
                    ledger.refused[code] += 1
    except BaseException as error:
        errors.append(error)
    finally:
        if client is not None:
            client.close()


@pytest.fixture
def nodes() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for node in started:
        node.stop(10)


def leased_message_ids(dsn: str, node: str) -> set[str]:
    """The Message-IDs of the entries leased to *node* now."""
    import psycopg

    found = set()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.data FROM mailframe_entries e JOIN mailframe_chunks c"
            " ON c.queue_id = e.queue_id AND c.seq = 0"
            " WHERE e.state = 'active' AND e.lease_owner = %s", (node,)).fetchall()
    for (data,) in rows:
        found.add(message_id(bytes(data)))
    return found


def entries_left(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM mailframe_entries").fetchone()
    assert row is not None
    return int(row[0])


def test_three_nodes_one_killed(tmp_path: pathlib.Path, nodes: list[Server]) -> None:
    dsn = postgres().new_database()
    with Sink() as sink:
        for number in range(3):
            root = tmp_path / f"node{number}"
            root.mkdir()
            config = write_config(root, dsn, lease=LEASE, node=f"node{number}",
                                  connect_timeout="5s")
            process, port, log_path = launch(
                root, config, ["--smarthost", f"127.0.0.1:{sink.port}",
                               "--retry-schedule", "1s"])
            nodes.append(Server(port, process, root, root, root / "mail", log_path))
        for node in nodes:
            wait_for_greeting(node.port)
        ledger = Ledger()
        ports = [node.port for node in nodes]
        alive = [True] * len(nodes)
        errors: list[BaseException] = []
        start = time.monotonic()
        deadline = start + DEADLINE
        threads = [threading.Thread(target=inject,
                                    args=(ledger, ports, alive, n % len(nodes), deadline,
                                          errors))
                   for n in range(SESSIONS * len(nodes))]
        for thread in threads:
            thread.start()
        while True:
            with ledger.lock:
                if len(ledger.acked) >= KILL_AFTER:
                    break
            assert time.monotonic() < deadline, "the injection made no progress"
            time.sleep(0.01)
        victim = nodes[VICTIM]
        alive[VICTIM] = False
        victim.process.send_signal(signal.SIGKILL)
        assert victim.process.wait(10) == -signal.SIGKILL
        killed_at = time.monotonic()
        in_flight = leased_message_ids(dsn, f"node{VICTIM}")
        delivered_at_kill = sum(sink.received().values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the injectors did not finish"
        assert not errors, errors
        injected = time.monotonic()
        acked = set(ledger.acked)
        assert len(acked) + len(ledger.cut) == MESSAGES

        def done() -> bool:
            return acked <= set(sink.received()) and entries_left(dsn) == 0

        while not done():
            missing = acked - set(sink.received())
            assert time.monotonic() < deadline, (
                f"{len(missing)} acknowledged messages never reached the sink;"
                f" {entries_left(dsn)} entries left; log of node0:\n{nodes[0].log()[-3000:]}")
            time.sleep(0.1)
        drained = time.monotonic()
        received = sink.received()
    strangers = set(received) - acked - set(ledger.cut)
    assert not strangers, f"messages nobody sent: {strangers}"
    twice = {mid: count for mid, count in received.items() if count > 1}
    unexplained = set(twice) - in_flight
    assert not unexplained, (
        f"{len(unexplained)} messages were delivered twice although the killed node did"
        f" not hold their lease: {sorted(unexplained)[:5]}")
    for number, node in enumerate(nodes):
        if number != VICTIM:
            log = node.log()
            assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    cut_delivered = len(set(ledger.cut) & set(received))
    print(f"cluster: {MESSAGES} injected into 3 nodes in {injected - start:.1f} s"
          f" ({MESSAGES / (injected - start):.0f} msg/s), {len(acked)} acknowledged,"
          f" {len(ledger.cut)} cut off ({cut_delivered} of them delivered),"
          f" refused {dict(ledger.refused)}; node{VICTIM} killed after"
          f" {killed_at - start:.1f} s holding {len(in_flight)} leases"
          f" ({delivered_at_kill} delivered by then); {len(twice)} delivered twice;"
          f" queue drained {drained - injected:.1f} s after the injection ended")
    assert os.path.exists(nodes[VICTIM].log_path)

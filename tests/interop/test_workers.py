"""
Worker processes of the real ``twistd -n mailframe --workers 2`` under
``kill -9``.

The server relays every message through ``--smarthost`` to a sink on
loopback (:mod:`tests.interop.sink`), which counts the Message-ID of each
message it accepts. Several client connections inject messages, each
noting which got their ``250``; a connection cut by the kill is opened
again. Mid-run, one worker is killed with SIGKILL while it holds sessions,
commits and deliveries. The test proves that every acknowledged message
reaches the sink (RFC 5321 §6.1: a ``250`` takes responsibility for it),
that the supervisor started the worker again (a new pid in its slot), and
that the server still accepts mail afterwards. A message delivered twice
is allowed (at least once), and counted in the test's output.
"""

from __future__ import annotations

import os
import pathlib
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import attrs
import pytest

from tests.interop.conftest import (
    RawSMTP,
    Server,
    free_port,
    start_server,
    wait_for_greeting,
    wait_until,
)
from tests.interop.sink import Sink

pytestmark = pytest.mark.interop

#: Client connections that inject at once.
CONNECTIONS = 6
#: Messages injected in all.
MESSAGES = 600
#: Acknowledged messages before the kill.
KILL_AFTER = 150
#: Seconds for each wait; the whole test stays well inside a minute.
WAIT = 40.0
SENDER = b"injector@example.com"
RECIPIENT = b"rcpt@remote.example"


def message(message_id: str) -> bytes:
    return (f"From: <{SENDER.decode()}>\r\nTo: <{RECIPIENT.decode()}>\r\n"
            f"Message-ID: {message_id}\r\nSubject: worker test\r\n\r\n"
            f"Sent by the worker test.\r\n.a line that starts with a dot\r\n.").encode()


def workers_of(pid: int) -> list[int]:
    """The child processes of *pid*: the supervisor's workers."""
    children: list[int] = []
    task = pathlib.Path(f"/proc/{pid}/task")
    for thread in task.iterdir() if task.is_dir() else ():
        try:
            children += [int(c) for c in (thread / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(children))


def sessions_of(pid: int, port: int) -> int:
    """How many established connections to *port* process *pid* holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    held = 0
    fd_dir = pathlib.Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


class Injection:
    """Threads that send :data:`MESSAGES` messages over :data:`CONNECTIONS` connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.unacked: list[str] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.left = MESSAGES
        self.deadline = time.monotonic() + WAIT
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(CONNECTIONS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(max(0.0, self.deadline - time.monotonic()) + 5)
        assert not any(t.is_alive() for t in self.threads), "injection did not finish"

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() > self.deadline:
                return False
            self.left -= 1
            return True

    def connect(self) -> RawSMTP:
        client = RawSMTP(self.port, timeout=WAIT)
        code, text = client.reply()
        assert code == 220, text
        code, text = client.command(b"EHLO injector.example")
        assert code == 250, text
        return client

    def run(self) -> None:
        client: RawSMTP | None = None
        while self.take():
            message_id = f"<{uuid.uuid4().hex}@injector.example>"
            try:
                if client is None:
                    client = self.connect()
                for line in (b"MAIL FROM:<" + SENDER + b">", b"RCPT TO:<" + RECIPIENT + b">"):
                    code, text = client.command(line)
                    assert code == 250, text
                code, text = client.command(b"DATA")
                assert code == 354, text
                code, text = client.command(message(message_id))
            except (OSError, EOFError) as e:
                # Cut by the kill: this one may or may not be queued.
                with self.lock:
                    self.unacked.append(message_id)
                    self.reconnects += 1
                    self.errors.append(repr(e))
                if client is not None:
                    client.close()
                client = None
                continue
            with self.lock:
                (self.acked if code == 250 else self.unacked).append(message_id)
        if client is not None:
            client.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@attrs.define
class Supervisor:
    """The running server, and every worker pid seen under it."""

    server: Server
    seen: set[int] = attrs.Factory(set)

    def workers(self) -> list[int]:
        found = workers_of(self.server.process.pid)
        self.seen.update(found)
        return found


@pytest.fixture
def supervisor(tmp_path: pathlib.Path, sink: Sink) -> Iterator[Supervisor]:
    server = start_server(tmp_path, ["--workers", "2", "--smarthost", f"127.0.0.1:{sink.port}",
                                     "--retry-schedule", "1s"])
    running = Supervisor(server)
    yield running
    running.workers()
    assert server.stop(30) == -signal.SIGTERM, server.log()[-3000:]
    # No worker outlives its supervisor.
    wait_until(lambda: not any(_alive(p) for p in running.seen), 10,
               "the workers to exit with their supervisor")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def test_kill_a_worker_under_load(supervisor: Supervisor, sink: Sink) -> None:
    server = supervisor.server
    wait_until(lambda: len(supervisor.workers()) == 2, WAIT,
               f"two workers; log:\n{server.log()[-3000:]}")
    # Both serve: each has recovered its slot and accepts.
    wait_until(lambda: all(f"worker {slot}: [mailframe.services.mta.MailService#info] Queue"
                           f" recovered" in server.log() for slot in (1, 2)), WAIT,
               f"both workers serving; log:\n{server.log()[-3000:]}")
    before = supervisor.workers()
    injection = Injection(server.port)
    started = time.monotonic()
    injection.start()
    wait_until(lambda: injection.count() >= KILL_AFTER, WAIT,
               f"{KILL_AFTER} acknowledged messages; log:\n{server.log()[-3000:]}")
    # The worker that holds the most sessions: the kill cuts them.
    held = {pid: sessions_of(pid, server.port) for pid in before}
    victim = max(before, key=lambda pid: held[pid])
    assert held[victim] >= 1, held
    os.kill(victim, signal.SIGKILL)
    acked_at_kill = injection.count()
    injection.join()
    took = time.monotonic() - started
    assert injection.count() > acked_at_kill, "nothing was acknowledged after the kill"
    assert injection.reconnects >= 1, "the kill cut no session"

    # The supervisor started the worker again, in a new process.
    def restarted() -> bool:
        found = supervisor.workers()
        return len(found) == 2 and victim not in found

    wait_until(restarted, WAIT, f"the worker started again; log:\n{server.log()[-3000:]}")
    after = supervisor.workers()
    assert set(after) - set(before), (before, after)
    log = server.log()
    assert f"(pid {victim}) died" in log and "killed by SIGKILL" in log, log[-3000:]

    acked = list(injection.acked)
    wait_until(lambda: set(acked) <= set(sink.received()), WAIT,
               f"{len(acked)} acknowledged messages at the sink; missing"
               f" {len(set(acked) - set(sink.received()))}; log:\n{server.log()[-3000:]}")
    received = sink.received()
    assert set(received) <= set(acked) | set(injection.unacked), "not sent by the injector"

    # The server still accepts, and delivers, with both workers.
    wait_for_both = time.monotonic() + WAIT
    late = []
    while time.monotonic() < wait_for_both and len(late) < 10:
        client = injection.connect()
        message_id = f"<{uuid.uuid4().hex}.after@injector.example>"
        for line in (b"MAIL FROM:<" + SENDER + b">", b"RCPT TO:<" + RECIPIENT + b">", b"DATA"):
            code, text = client.command(line)
            assert code in (250, 354), text
        code, text = client.command(message(message_id))
        assert code == 250, text
        client.close()
        late.append(message_id)
    wait_until(lambda: set(late) <= set(sink.received()), WAIT, "the late messages at the sink")
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    twice = sum(1 for key in acked if received[key] > 1)
    print(f"workers {before} -> {after}, sessions {held}:"
          f" {len(acked)} acknowledged in {took:.1f} s"
          f" ({acked_at_kill} before the kill), {len(injection.unacked)} cut off,"
          f" {injection.reconnects} reconnects, {twice} delivered more than once")


def test_workers_behind_haproxy(tmp_path: pathlib.Path) -> None:
    """
    A ``haproxy:tcp:`` listener shared by two workers, behind a real
    HAProxy that sends PROXY v2 headers: each worker reads the header of
    the connections it accepts, so ``Received:`` and relay control see the
    client's address, never the proxy's.
    """
    from tests.interop.test_haproxy import CONFIG, RELAY_CLIENT, haproxy_program

    program = haproxy_program()
    backend = free_port()
    server = start_server(tmp_path, [
        "--workers", "2", "--listen", f"haproxy:tcp:{backend}:interface=127.0.0.1",
        "--relay-network", f"{RELAY_CLIENT}/32"])
    ports = {"v2": free_port(), "v1": free_port()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(backend=backend, **ports))
    with open(tmp_path / "haproxy.log", "wb") as log:
        haproxy = subprocess.Popen([program, "-f", str(config), "-db"], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: all(f"worker {slot}: [mailframe.services.mta.MailService#info] Queue"
                               f" recovered" in server.log() for slot in (1, 2)), WAIT,
                   f"both workers serving; log:\n{server.log()[-3000:]}")
        for port in ports.values():
            wait_for_greeting(port, timeout=30)
        clients = [smtplib.SMTP("127.0.0.1", ports["v2"], timeout=30,
                                source_address=(RELAY_CLIENT, 0)) for _ in range(4)]
        for number, client in enumerate(clients):
            client.ehlo("client.example")
            client.sendmail("sender@example.org", ["alice@example.com"],
                            f"Subject: via worker {number}\r\n\r\nbody\r\n".encode())
        for client in clients:
            client.quit()
        messages = server.wait_delivered("alice", 4)
        for message in messages:
            assert f"\nReceived: from client.example (unknown [{RELAY_CLIENT}])\n".encode() \
                in message, message[:500]
        assert f"client={RELAY_CLIENT}" in server.log()
    finally:
        haproxy.terminate()
        try:
            haproxy.wait(10)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            haproxy.wait()
        assert server.stop(30) == -signal.SIGTERM, server.log()[-3000:]

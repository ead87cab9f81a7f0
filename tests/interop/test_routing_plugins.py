"""
Routing through the router plugins in the real server: ``twistd -n
mailframe --config FILE``, with the routers that the file names.

The tests prove that:

- a ``chain`` of a ``table`` (from a routes file) and ``local`` expands an
  alias to two local Maildirs, sends a domain to a sink over SMTP, delivers
  an address into a Maildir of its own, leaves what the table does not
  match to ``local``, and refuses a ``reject`` entry at RCPT, with the
  entry's reply, through the ``router-check`` policy;
- an alias loop is refused at RCPT with ``550 5.4.6``;
- SIGHUP reads the routes file again: mail then follows the new table,
  none of the mail sent before, during and after the reload is lost or
  delivered twice, and a broken file leaves the old table in use, with
  the error in the log;
- with the ``mx`` router and a nameserver that never answers (one that
  reads and stays silent, or a closed port), RCPT is accepted at once,
  and the message waits in the queue with a ``4.4.3`` reason instead of
  bouncing;
- an unknown key in ``[plugins.table]`` is reported with its line by
  ``mailframe check-config``, and ``twistd`` refuses to start with the
  same message.

Every wait is bounded; the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.interop.conftest import (
    REPO,
    TWISTD,
    Server,
    free_port,
    start_server,
    wait_until,
)
from tests.interop.sink import Sink

pytestmark = pytest.mark.interop

#: Seconds for each wait on the server, a sink or a command.
WAIT = 20.0
SENDER = "routing-test@example.org"


# -- helpers ------------------------------------------------------------------------------


def message(subject: str) -> tuple[str, bytes]:
    """A new Message-ID and a small message that carries it."""
    found = f"<{uuid.uuid4().hex}@routing.test>"
    text = (f"From: {SENDER}\r\nTo: someone\r\nSubject: {subject}\r\n"
            f"Message-ID: {found}\r\n\r\n{subject}\r\n")
    return found, text.encode("ascii")


def send(port: int, recipients: Sequence[str], body: bytes) -> None:
    """Send *body* to *recipients*; every one must be accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        refused = client.sendmail(SENDER, list(recipients), body)
    assert refused == {}, refused


def rcpt(port: int, recipient: str) -> tuple[int, bytes]:
    """The server's reply to ``RCPT TO:<recipient>``, after ``MAIL``."""
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.ehlo("client.example")
        assert client.mail(SENDER)[0] == 250
        reply = client.rcpt(recipient)
        client.rset()
    return reply


def start(root: pathlib.Path, config: str, extra: Sequence[str] = ()) -> Server:
    """Start the server with *config* as its ``--config`` file."""
    path = root / "mailframe.toml"
    path.write_text(config, encoding="utf-8")
    return start_server(root, ["--config", str(path), *extra])


def stop(server: Server) -> None:
    """Stop *server*; its log must show no unhandled error."""
    server.stop(10)
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def chain_config(routes: pathlib.Path) -> str:
    """A chain of a table read from *routes*, then ``local``."""
    return (
        'router = "chain"\n'
        "\n"
        "[plugins.chain]\n"
        'routers = ["table", "local"]\n'
        "\n"
        "[plugins.table]\n"
        f"file = {json.dumps(str(routes))}\n"
        'fallback = "local"\n'
    )


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    """Two sinks on loopback: the partner's first and second next hop."""
    with Sink() as first, Sink() as second:
        yield first, second


# -- a chain of a table and local ---------------------------------------------------------


def test_chain_of_table_and_local(tmp_path: pathlib.Path, sinks: tuple[Sink, Sink]) -> None:
    sink = sinks[0]
    archive = tmp_path / "archive"
    routes = tmp_path / "routes"
    routes.write_text(
        "# routes of the test\n"
        "sales@example.com     alias:alice@example.com, bob@example.com\n"
        "gone@example.com      reject:550 5.1.1 gone\n"
        f"partner.example       smtp:[127.0.0.1]:{sink.port}\n"
        f"archive@example.com   maildir:{archive}\n",
        encoding="utf-8",
    )
    server = start(tmp_path, chain_config(routes))
    try:
        # The reject entry is refused at RCPT, with its reply, by router-check.
        code, text = rcpt(server.port, "gone@example.com")
        assert (code, text) == (550, b"5.1.1 gone")

        sales_id, sales = message("to sales")
        send(server.port, ["sales@example.com"], sales)
        partner_id, partner = message("to the partner")
        send(server.port, ["someone@partner.example"], partner)
        archive_id, archived = message("to the archive")
        send(server.port, ["ARCHIVE@example.com"], archived)
        carol_id, to_carol = message("to carol")
        send(server.port, ["carol@example.com"], to_carol)

        # The alias ends in two local Maildirs, through the fallback.
        for user in ("alice", "bob"):
            [delivered] = server.wait_delivered(user, 1, WAIT)
            assert sales_id.encode() in delivered
        wait_until(lambda: sink.received()[partner_id] == 1, WAIT,
                   f"the partner's mail reaches the sink; log:\n{server.log()[-3000:]}")
        wait_until(lambda: len(os.listdir(archive / "new")) == 1
                   if (archive / "new").is_dir() else False,
                   WAIT, "the archive gets its message")
        [name] = os.listdir(archive / "new")
        assert archive_id.encode() in (archive / "new" / name).read_bytes()
        # What the table does not match goes on to local.
        [delivered] = server.wait_delivered("carol", 1, WAIT)
        assert carol_id.encode() in delivered

        time.sleep(0.5)
        assert sink.received() == {partner_id: 1}
        assert [len(server.delivered(u)) for u in ("alice", "bob", "carol")] == [1, 1, 1]
        assert not server.delivered("sales") and not server.delivered("gone")
    finally:
        stop(server)


def test_alias_loop_is_refused_at_rcpt(tmp_path: pathlib.Path) -> None:
    routes = tmp_path / "routes"
    routes.write_text(
        "a@example.com   alias:b@example.com\n"
        "b@example.com   alias:a@example.com\n",
        encoding="utf-8",
    )
    server = start(tmp_path, chain_config(routes))
    try:
        for recipient in ("a@example.com", "B@example.com"):
            code, text = rcpt(server.port, recipient)
            assert code == 550 and text.startswith(b"5.4.6 "), (recipient, code, text)
        # Its neighbours are untouched.
        assert rcpt(server.port, "c@example.com")[0] == 250
    finally:
        stop(server)


# -- SIGHUP -------------------------------------------------------------------------------


def rewrite_in_place(path: pathlib.Path, text: str) -> None:
    """
    Write *text* over *path*, which is as long, keeping the file's inode,
    size and modification time: the table's own check for a changed file
    cannot see it, so only SIGHUP makes the server read it.
    """
    before = path.stat()
    data = text.encode("utf-8")
    assert len(data) == before.st_size, (len(data), before.st_size)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)


class Sender(threading.Thread):
    """Sends messages to the partner one after another until told to stop."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                found, body = message("during the reload")
                send(self.port, ["someone@partner.example"], body)
                self.sent.append(found)
                time.sleep(0.02)
        except BaseException as error:
            self.error = error


def test_sighup_reloads_the_routes_file(
    tmp_path: pathlib.Path, sinks: tuple[Sink, Sink]
) -> None:
    first, second = sinks
    routes = tmp_path / "routes"
    new = (f"partner.example smtp:[127.0.0.1]:{second.port}\n"
           "newgone@example.com reject:550 5.1.1 gone since the reload\n")
    old = f"partner.example smtp:[127.0.0.1]:{first.port}\n"
    # A comment as long as the rest of the new file.
    old += "#" + "-" * (len(new) - len(old) - 2) + "\n"
    routes.write_text(old, encoding="utf-8")
    server = start(tmp_path, chain_config(routes))
    try:
        def received() -> dict[str, int]:
            return dict(first.received() + second.received())

        before = []
        for _ in range(3):
            found, body = message("before the reload")
            send(server.port, ["someone@partner.example"], body)
            before.append(found)
        wait_until(lambda: all(first.received()[f] == 1 for f in before), WAIT,
                   f"the first sink gets the mail; log:\n{server.log()[-3000:]}")
        assert rcpt(server.port, "newgone@example.com")[0] == 250

        # Mail keeps coming while the file changes and the server reloads it.
        sender = Sender(server.port)
        sender.start()
        try:
            wait_until(lambda: len(sender.sent) >= 3 or sender.error is not None, WAIT,
                       "mail is sent before the reload")
            rewrite_in_place(routes, new)
            server.process.send_signal(signal.SIGHUP)
            wait_until(lambda: f"Routing table {routes} reloaded" in server.log(), 10,
                       f"the routes file is reloaded; log:\n{server.log()[-3000:]}")
            sent_at_reload = len(sender.sent)
            wait_until(lambda: len(sender.sent) >= sent_at_reload + 3
                       or sender.error is not None, WAIT, "mail is sent after the reload")
        finally:
            sender.done.set()
            sender.join(WAIT)
        assert not sender.is_alive()
        assert sender.error is None, repr(sender.error)
        during = sender.sent

        after = []
        for _ in range(3):
            found, body = message("after the reload")
            send(server.port, ["someone@partner.example"], body)
            after.append(found)
        # The new reject entry is in use.
        assert rcpt(server.port, "newgone@example.com") == (550, b"5.1.1 gone since the reload")

        everything = [*before, *during, *after]
        wait_until(lambda: all(received().get(f) for f in everything), WAIT,
                   f"every message is delivered; log:\n{server.log()[-3000:]}")
        time.sleep(0.5)
        assert received() == dict.fromkeys(everything, 1)
        assert all(second.received()[f] == 1 for f in after), second.received()
        assert not set(after) & set(first.received())
        assert not set(before) & set(second.received())
        assert server.log().count(f"{routes} reloaded") == 1

        # A broken file on SIGHUP: the old table stays, and mail flows.
        routes.write_text(new + "partner.example bogus\n", encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "not reloaded, the old one stays" in server.log(), 10,
                   f"the failed reload is logged; log:\n{server.log()[-3000:]}")
        assert server.process.poll() is None, server.log()[-3000:]
        refusal = next(line for line in server.log().splitlines()
                       if "not reloaded, the old one stays" in line)
        assert f"{routes}, line 3" in refusal, refusal
        assert "'bogus' is not a route spec" in refusal, refusal
        found, body = message("after the failed reload")
        send(server.port, ["someone@partner.example"], body)
        wait_until(lambda: second.received()[found] == 1, WAIT,
                   f"mail still flows by the old table; log:\n{server.log()[-3000:]}")
        assert rcpt(server.port, "newgone@example.com")[0] == 550
        assert found not in first.received()
    finally:
        stop(server)


# -- DNS outage ---------------------------------------------------------------------------


@pytest.mark.parametrize("nameserver", ["silent", "closed"])
def test_dns_outage_defers_and_never_refuses_at_rcpt(
    tmp_path: pathlib.Path, nameserver: str
) -> None:
    # A nameserver that reads every query and never answers; or a port
    # where nothing listens, which the kernel refuses (ICMP port
    # unreachable).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.settimeout(0.1)
    port = silent.getsockname()[1]
    if nameserver == "closed":
        silent.close()
    config = f'router = "mx"\nnameservers = ["127.0.0.1:{port}"]\n'
    server = start(tmp_path, config, ["--retry-schedule", "1h"])
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.ehlo("client.example")
            assert client.mail(SENDER)[0] == 250
            began = time.monotonic()
            reply = client.rcpt("someone@remote.example")
            took = time.monotonic() - began
            assert reply[0] == 250, reply
            # RCPT waits for no DNS.
            assert took < 1.0, took
            _, body = message("through a DNS outage")
            code, text = client.data(body)
            assert code == 250, (code, text)

        queries = 0

        def deferred() -> dict[str, Any] | None:
            nonlocal queries
            if nameserver == "silent":
                try:
                    while True:
                        silent.recv(4096)
                        queries += 1
                except TimeoutError:
                    pass
            entries = listed(server)
            assert len(entries) == 1, entries
            [entry] = entries
            return entry if entry["state"] == "deferred" else None

        wait_until(lambda: deferred() is not None, WAIT,
                   f"the message is deferred; log:\n{server.log()[-3000:]}")
        entry = deferred()
        assert entry is not None
        assert queries > 0 or nameserver == "closed"
        [recipient] = entry["recipients"]
        assert recipient["address"] == "someone@remote.example"
        assert recipient["state"] == "pending", recipient
        assert recipient["reason"].startswith("451 4.4.3 "), recipient
        assert entry["reason"].startswith("451 4.4.3 "), entry
        # Not bounced: the queue holds this one entry (a notification to the
        # sender would be a second), and it waits in deferred/.
        assert [p.name for p in (server.queue / "deferred").iterdir()] == [f"{entry['id']}.msg"]
    finally:
        silent.close()
        stop(server)


def listed(server: Server) -> list[dict[str, Any]]:
    """What ``mailframe queue list --json`` prints of the server's queue."""
    result = subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "queue", "list", "--json",
         "--queue-dir", str(server.queue)],
        cwd=server.root, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=WAIT,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    return [json.loads(line) for line in result.stdout.splitlines()]


# -- config errors ------------------------------------------------------------------------


def test_unknown_table_setting_names_its_line(tmp_path: pathlib.Path) -> None:
    routes = tmp_path / "routes"
    routes.write_text("partner.example smtp:[127.0.0.1]:2525\n", encoding="utf-8")
    config = tmp_path / "mailframe.toml"
    config.write_text(
        chain_config(routes) + 'colour = "blue"\n',
        encoding="utf-8",
    )
    line = config.read_text().splitlines().index('colour = "blue"') + 1
    env = dict(os.environ, PYTHONPATH=str(REPO))

    checked = subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "check-config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT,
    )
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    match = re.fullmatch(
        rf"{re.escape(str(config))}: plugins\.table\.colour \(line {line}\): (.+)\n",
        checked.stderr)
    assert match is not None, checked.stderr
    problem = match.group(1)
    assert "unknown setting" in problem and "fallback" in problem, problem

    queue = tmp_path / "queue"
    started = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
         "--config", str(config),
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
         "--queue-dir", str(queue)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT,
    )
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    # A usage error, as twistd prints any bad option: no traceback before it.
    assert f"plugins.table.colour in {config}, line {line}: {problem}" in output, output
    assert "Traceback" not in output, output

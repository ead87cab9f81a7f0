"""
Real peers on loopback: a ``twistd -n mailframe`` process for each test, and
helpers to find the peer programs.

A missing peer program skips its test with the reason on a developer's
machine; with ``CI`` set in the environment it fails the test instead.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import attrs
import pytest

from tests._missing import unavailable

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
TWISTD = pathlib.Path(sys.executable).parent / "twistd"


def require(program: str) -> str:
    """The path of *program*; skip (or, under CI, fail) when it is missing."""
    found = shutil.which(program) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")
         if (p := pathlib.Path(d) / program).exists()), None)
    if found is None:
        unavailable(f"{program} is not installed (Debian: apt-get install -y postfix swaks strace)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_greeting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no 220 greeting on port {port} within {timeout} s")


@attrs.define
class Server:
    """A running ``twistd -n mailframe``."""

    port: int
    process: subprocess.Popen[bytes]
    root: pathlib.Path
    queue: pathlib.Path
    mail: pathlib.Path
    log_path: pathlib.Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def delivered(self, user: str) -> list[bytes]:
        new = self.mail / user / "new"
        if not new.is_dir():
            return []
        return [(new / name).read_bytes() for name in sorted(os.listdir(new))]

    def wait_delivered(self, user: str, count: int, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.delivered(user)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{user} has {len(self.delivered(user))} of {count} messages;"
                           f" log:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(root: pathlib.Path, extra: Sequence[str] = (), wrap: Sequence[str] = ()) -> Server:
    """Start mailframe on a free loopback port with its queue and mail in *root*."""
    if not TWISTD.exists():
        pytest.fail(f"{TWISTD} is missing: install with the README's command")
    port = free_port()
    queue, mail = root / "queue", root / "mail"
    argv = [
        *wrap, str(TWISTD), "-n", "--pidfile=", "--logfile=-", "mailframe",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
        "--hostname", "mx.example.com",
        "--queue-dir", str(queue),
        "--local-domain", f"example.com={mail}",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(port, process, root, queue, mail, log_path)
    try:
        wait_for_greeting(port)
    except TimeoutError:
        server.stop(5)
        raise AssertionError(f"mailframe did not start; log:\n{server.log()}") from None
    return server


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    running = start_server(tmp_path)
    yield running
    running.stop()


# -- helpers shared by the interop modules -------------------------------------


class RawSMTP:
    """
    An SMTP client over a plain socket, for what the library clients will not
    send: unknown parameters, partial messages, commands at chosen moments.
    """

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        """The next reply: its code and its lines, CRLFs kept; EOFError at EOF."""
        lines: list[bytes] = []
        while True:
            line = self.file.readline(4096)
            if not line:
                raise EOFError(f"connection closed after {b''.join(lines)!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def at_eof(self) -> bool:
        """Whether the server has closed the connection (and sent nothing more)."""
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def maildir_messages(mail: pathlib.Path) -> dict[str, list[bytes]]:
    """Every delivered message under *mail*, by mailbox (``mail/<user>/new/*``)."""
    found: dict[str, list[bytes]] = {}
    if not mail.is_dir():
        return found
    for user in sorted(os.listdir(mail)):
        new = mail / user / "new"
        if new.is_dir():
            found[user] = [(new / name).read_bytes() for name in sorted(os.listdir(new))]
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *predicate* every 50 ms until it holds; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def assert_orderly_exit(server: Server) -> None:
    """
    The server stopped on SIGTERM after an orderly shutdown. twistd re-raises
    the signal that stopped its reactor once it has shut down
    (``twisted.scripts.twistd.runApp``), so the status is 0 or "killed by
    SIGTERM"; the log tells an orderly end from a kill.
    """
    code = server.process.returncode
    assert code in (0, -signal.SIGTERM), f"exit status {code}; log:\n{server.log()[-3000:]}"
    log = server.log()
    assert "Server Shut Down." in log, log[-3000:]
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]

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
from collections.abc import Iterator, Sequence

import attrs
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
TWISTD = pathlib.Path(sys.executable).parent / "twistd"


def require(program: str) -> str:
    """The path of *program*; skip (or, under CI, fail) when it is missing."""
    found = shutil.which(program) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")
         if (p := pathlib.Path(d) / program).exists()), None)
    if found is None:
        message = f"{program} is not installed (Debian: apt-get install -y postfix swaks strace)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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

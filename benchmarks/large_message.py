#!/usr/bin/env python3
"""
How much memory mailframe needs to receive one large message.

    .venv/bin/python benchmarks/large_message.py [--size-mb 50] [--rounds 3]

Each round starts a fresh ``twistd -n mailframe`` (with ``--hold``, so the
message is written durably to the spool and not delivered) on a free
loopback port, sends it one small message so that everything is imported,
resets the kernel's peak-memory mark (``/proc/PID/clear_refs``), sends one
message of ``--size-mb`` megabytes with :mod:`smtplib`, and reads the
server's resident set before and its peak (``VmHWM``) after. It prints the
rise of the peak over the resident set before, which is what the message
cost in memory: the spool streams the message to disk in 64 KiB chunks
and pauses the client while writes are pending, so the rise should not
grow with the message.

Linux only (``/proc``). The server is imported from this working tree.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TWISTD = pathlib.Path(sys.executable).parent / "twistd"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in kB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def _wait_for_greeting(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no greeting on port {port} within {timeout} s")


def one_round(size_mb: int, work: pathlib.Path, timeout: float) -> dict[str, float]:
    port = _free_port()
    argv = [
        str(TWISTD), "-n", "--pidfile=", "--logfile", str(work / "server.log"), "mailframe",
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--queue-dir", str(work / "queue"),
        "--local-domain", f"bench.example={work / 'mail'}", "--hold",
        "--max-message-size", str((size_mb + 1) * 1024 * 1024),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = subprocess.Popen(argv, cwd=work, env=env)
    try:
        _wait_for_greeting(port, timeout)
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            client.sendmail("a@bench.example", ["b@bench.example"],
                            b"Subject: warm-up\r\n\r\nhello\r\n")
        with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
            refs.write("5")
        before = _status(server.pid)
        line = b"x" * 998 + b"\r\n"
        message = b"Subject: large\r\n\r\n" + line * (size_mb * 1024 * 1024 // len(line))
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            client.sendmail("a@bench.example", ["b@bench.example"], message)
        elapsed = time.monotonic() - started
        after = _status(server.pid)
        return {
            "octets": len(message),
            "seconds": elapsed,
            "rss_before_kb": before["VmRSS"],
            "peak_after_kb": after["VmHWM"],
            "rise_mb": (after["VmHWM"] - before["VmRSS"]) / 1024,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=50, help="message size (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="the most one step may take, in seconds (default 120)")
    options = parser.parse_args(argv)
    rises = []
    print(f"{'round':>5} {'MB sent':>8} {'seconds':>8} {'RSS before':>11} {'peak after':>11}"
          f" {'rise MB':>8}")
    for number in range(1, options.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="mailframe-large-") as work:
            result = one_round(options.size_mb, pathlib.Path(work), options.timeout)
        rises.append(result["rise_mb"])
        print(f"{number:>5} {result['octets'] / 1e6:>8.1f} {result['seconds']:>8.2f}"
              f" {result['rss_before_kb'] / 1024:>9.1f}MB {result['peak_after_kb'] / 1024:>9.1f}MB"
              f" {result['rise_mb']:>8.2f}")
    print(f"median rise of peak RSS for a {options.size_mb} MB message:"
          f" {statistics.median(rises):.2f} MB (max {max(rises):.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
What the SMTP server's own code costs per message, without the network.

    .venv/bin/python benchmarks/session_cpu.py [--messages 5000] [--rounds 5] [--size 1024]
        [--log twisted|mailframe] [--server mailframe|twisted] [--instructions] [--cache]

It builds the server as ``twistd mailframe --store discard --unsafe-store``
would (the same plugins, policies and settings), connects one session to a
transport that throws its writes away, and plays ``smtp-source``'s
dialogue into it, one command per read as ``smtp-source`` sends them:
``MAIL``, ``RCPT`` (a new local part each time), ``DATA``, a 1 KB message
(``--size`` sets another, fed in reads of at most 64 KiB) and ``RSET``.
The per-message log line is written to ``/dev/null`` through Twisted's
text observer, as twistd writes it to a file (or, with ``--log mailframe``,
through :func:`mailframe.logs.text_observer`, which ``twistd --logger``
takes). It prints the CPU
time (``time.process_time``) per message: the median over the rounds and
the best beside it, after a warm-up.

This is the part of the server's CPU that mailframe's code decides; the
rest, under a real load, is the reactor and the kernel. Without sockets,
threads or disks, the figure is steadier than a load test's, but other
work on the machine still moves it: compare runs made one after the other,
or count instructions (see ``benchmarks/README.rst``).
``--profile`` prints the functions that cost most, from :mod:`cProfile`.

``--server twisted`` plays the same dialogue into twisted.mail's ESMTP
server instead, built as the benchmark harness's ``twisted-discard`` peer
builds it (its lines are dropped, and it logs nothing per message): the
same measure for the peer that mailframe's discard store is compared with.
``--instructions`` counts instructions per message instead of timing
them, which other work on the machine does not move: it runs this script
under ``valgrind --tool=callgrind`` twice at once, for the warm-up alone
and for the warm-up and one round, and divides the difference by the
messages. ``--cache`` adds callgrind's simulation of the caches and the
branch predictor, and reports the L1 data cache misses and mispredicted
branches per message as well: two runs of the same instructions can take
different times.

mailframe is imported from this working tree.
"""

from __future__ import annotations

import argparse
import cProfile
import pathlib
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import LogPublisher, textFileLogObserver  # noqa: E402

#: The header smtp-source sends, roughly.
HEADER = (
    b"From: <sender@bench.example>\r\nTo: <rcpt@bench.example>\r\n"
    b"Date: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-Id: <1@bench.example>\r\n"
    b"Subject: benchmark\r\n\r\n"
)
#: A line of smtp-source's body.
LINE = b"La de da de da 1.\r\n"
#: The most one read gives the server, as Twisted reads a TCP socket.
READ_SIZE = 65536


def message(size: int) -> list[bytes]:
    """A message of about *size* octets, and its dot, in reads of a socket."""
    data = HEADER + LINE * max(1, (size - len(HEADER)) // len(LINE)) + b".\r\n"
    return [data[i : i + READ_SIZE] for i in range(0, len(data), READ_SIZE)]


class _Sink(StringTransport):
    """A transport that counts the messages accepted and keeps nothing."""

    accepted = 0
    #: How the server's reply to a final dot that accepts the message starts.
    acceptance = b"250 2.0.0 Ok: queued as "

    def write(self, data: bytes) -> None:
        if data.startswith(self.acceptance):
            self.accepted += 1

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))


def session(workdir: str, size: int = 1024, log: str = "twisted") -> Callable[[int], None]:
    """
    A connected session; the function it returns sends one message of
    about *size* octets.
    """
    from twisted.internet import reactor

    from mailframe.compose import build_mail_service
    from mailframe.logs import text_observer
    from mailframe.protocols import server
    from mailframe.tap import Options

    options = Options()
    options.parseOptions([
        "--listen", "tcp:25:interface=127.0.0.1", "--queue-dir", f"{workdir}/queue",
        "--local-domain", f"bench.example={workdir}/mail",
        "--store", "discard", "--unsafe-store",
    ])
    service = build_mail_service(options.config, reactor, max_connections=10)
    # The server's logger, and only it, writes to the text observer (the
    # class's own Logger: reading the attribute makes a new one).
    sink = open("/dev/null", "w")
    observer = textFileLogObserver(sink) if log == "twisted" else text_observer(sink)
    publisher = LogPublisher(observer)
    vars(server.SMTPServerProtocol)["log"].observer = publisher
    factory = service.listeners[0].factory
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = factory.buildProtocol(address)
    transport = _Sink(peerAddress=address)
    return _play(protocol, transport, size)


def twisted_session(size: int = 1024) -> Callable[[int], None]:
    """
    As :func:`session`, for twisted.mail's ESMTP server that drops what it
    is sent: an ``IMessageDelivery`` that takes every sender and recipient,
    and one ``IMessage`` per transaction whose lines go nowhere.
    """
    from twisted.internet import defer
    from twisted.mail import smtp
    from zope.interface import implementer

    @implementer(smtp.IMessage)
    class Dropped:
        def lineReceived(self, line: bytes) -> None:
            pass

        def eomReceived(self) -> defer.Deferred[None]:
            return defer.succeed(None)

        def connectionLost(self) -> None:
            pass

    @implementer(smtp.IMessageDelivery)
    class Delivery:
        def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
            return None

        def validateFrom(self, helo: Any, origin: Any) -> Any:
            return origin

        def validateTo(self, user: Any) -> Callable[[], Dropped]:
            return Dropped

    protocol = smtp.ESMTP()
    protocol.host = b"bench.example"
    protocol.delivery = Delivery()
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    transport = _Sink(peerAddress=address)
    transport.acceptance = b"250 Delivery in progress"
    return _play(protocol, transport, size)


def _play(protocol: Any, transport: _Sink, size: int) -> Callable[[int], None]:
    """Connect *protocol* to *transport*; the function sends one message."""
    protocol.makeConnection(transport)
    protocol.dataReceived(b"EHLO client.bench.example\r\n")
    reads = message(size)

    def one(number: int) -> None:
        protocol.dataReceived(b"MAIL FROM:<sender@bench.example>\r\n")
        protocol.dataReceived(b"RCPT TO:<%drcpt@bench.example>\r\n" % number)
        protocol.dataReceived(b"DATA\r\n")
        for data in reads:
            protocol.dataReceived(data)
        protocol.dataReceived(b"RSET\r\n")

    one.accepted = lambda: transport.accepted  # type: ignore[attr-defined]
    return one


def measure(one: Callable[[int], None], messages: int) -> float:
    """
    CPU µs per message over *messages* messages.

    :raises SystemExit: unless the server accepted every one of them.
    """
    before = one.accepted()  # type: ignore[attr-defined]
    start = time.process_time()
    for number in range(messages):
        one(number)
    spent = time.process_time() - start
    accepted = one.accepted() - before  # type: ignore[attr-defined]
    if accepted != messages:
        raise SystemExit(f"{accepted} of {messages} messages were accepted")
    return spent / messages * 1e6


#: What ``--cache`` reports, each the sum of callgrind's events: L1 data
#: cache misses (reads and writes) and mispredicted branches (conditional
#: and indirect).
_SIMULATED = {"D1mr": "l1d", "D1mw": "l1d", "Bcm": "mispredicts", "Bim": "mispredicts"}


def callgrind_events(text: str) -> dict[str, int]:
    """The program's totals in a callgrind output file, by event name."""
    names = re.search(r"^events: (.+)$", text, re.MULTILINE)
    totals = re.search(r"^summary: (.+)$", text, re.MULTILINE)
    if names is None or totals is None:
        raise ValueError("not a callgrind output file")
    return dict(zip(names[1].split(), (int(n) for n in totals[1].split()), strict=True))


def _collect(argv: list[str], simulate: bool, out: pathlib.Path) -> subprocess.Popen[str]:
    options = ["--cache-sim=yes", "--branch-sim=yes"] if simulate else []
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *options, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def instructions(args: argparse.Namespace) -> dict[str, int]:
    """
    Instructions per message, from two runs under callgrind, made at once;
    with ``--cache``, also L1 data cache misses and mispredicted branches
    per message, as callgrind simulates them.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    base = [sys.executable, __file__, "--server", args.server, "--size", str(args.size),
            "--log", args.log, "--messages", str(args.messages), "--just-run"]
    with tempfile.TemporaryDirectory(prefix="mailframe-callgrind-") as workdir:
        outs = [pathlib.Path(workdir, name) for name in ("warm-up", "measured")]
        runs = [_collect([*base, rounds], args.cache, out)
                for rounds, out in zip("01", outs, strict=True)]
        outputs = [run.communicate(timeout=3600)[0] for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            if run.returncode != 0:
                raise SystemExit(f"the run under valgrind failed:\n{output}")
        warm_up, measured = (callgrind_events(out.read_text()) for out in outs)
    spent = {"instructions": measured["Ir"] - warm_up["Ir"]}
    if args.cache:
        for event, name in _SIMULATED.items():
            spent[name] = spent.get(name, 0) + measured[event] - warm_up[event]
    return {name: count // args.messages for name, count in spent.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--size", type=int, default=1024,
                        help="octets in a message, about (default 1024)")
    parser.add_argument("--log", choices=("twisted", "mailframe"), default="twisted",
                        help="the text observer of the log line (default twisted)")
    parser.add_argument("--server", choices=("mailframe", "twisted"), default="mailframe",
                        help="mailframe (default), or twisted.mail's ESMTP server")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per message under valgrind, instead of time")
    parser.add_argument("--cache", action="store_true",
                        help="with the instructions, the L1 data cache misses and mispredicted"
                             " branches per message that valgrind simulates")
    parser.add_argument("--profile", action="store_true",
                        help="print the costliest functions of one more round")
    # For --instructions: the warm-up, then this many rounds, and no figures.
    parser.add_argument("--just-run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1 or args.size < 1:
        parser.error("--messages, --rounds and --size must be at least 1")
    if args.instructions or args.cache:
        counts = instructions(args)
        heading = "| server | messages | octets | instructions/msg |"
        rule = "|--------|---------:|-------:|-----------------:|"
        row = (f"| {args.server} | {args.messages:8d} | {args.size:6d}"
               f" | {counts['instructions']:16d} |")
        if args.cache:
            heading += " L1d misses/msg | mispredicts/msg |"
            rule += "---------------:|----------------:|"
            row += f" {counts['l1d']:14d} | {counts['mispredicts']:15d} |"
        print(heading)
        print(rule)
        print(row)
        return 0
    with tempfile.TemporaryDirectory(prefix="mailframe-session-") as workdir:
        if args.server == "twisted":
            one = twisted_session(args.size)
        else:
            one = session(workdir, args.size, args.log)
        measure(one, min(args.messages, 500))  # warm-up
        if args.just_run is not None:
            for _ in range(args.just_run):
                measure(one, args.messages)
            return 0
        figures = [measure(one, args.messages) for _ in range(args.rounds)]
        print("| server | messages | octets | rounds | median CPU µs/msg | best CPU µs/msg |")
        print("|--------|---------:|-------:|-------:|------------------:|----------------:|")
        print(f"| {args.server} | {args.messages:8d} | {args.size:6d} | {args.rounds:6d}"
              f" | {statistics.median(figures):17.1f} | {min(figures):15.1f} |")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(measure, one, args.messages)
            stats: Any = pstats.Stats(profile, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())

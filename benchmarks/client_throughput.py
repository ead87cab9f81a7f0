#!/usr/bin/env python3
"""
How fast mailframe's SMTP client sends mail, beside aiosmtplib.

    .venv/bin/python benchmarks/client_throughput.py [--messages 2000]
        [--connections 1 10] [--size 1024] [--rounds 3] [--json PATH]

Each run starts a fresh Postfix ``smtp-sink`` on a free loopback port, then
a fresh child Python process (this script with ``--worker``) that sends
``--messages`` messages of ``--size`` octets, one recipient each, over
``--connections`` connections that are opened once and reused. The child
measures the wall time and its own CPU time (``getrusage(RUSAGE_SELF)``,
user + system) from the first connection to the last reply to QUIT, after
its imports and set-up. The sink is stopped after every run.

The clients (``--variants``):

``mailframe``
    :class:`mailframe.transports.SMTPTransport`, the path the queue runner
    uses, with a nexthop route to the sink and the messages in a
    :class:`~mailframe.testing.MemoryQueueStore`. ``--connections``
    coroutines each call :meth:`~mailframe.transports.SMTPTransport.deliver`
    for the next queue entry, one at a time; the transport keeps up to that
    many connections (``connections_per_destination``) and reuses them for
    every message (``messages_per_connection`` is ``--messages``). No TLS.
``aiosmtplib``
    ``--connections`` asyncio tasks, each with one ``aiosmtplib.SMTP``
    connection, calling ``sendmail()`` with the same message octets in a
    loop, then ``quit()``. No TLS.

Both take the next message from one shared counter, so a faster connection
sends more. The variants run interleaved within each round, in an order
that rotates from round to round. The table shows medians over the rounds,
and ratios to aiosmtplib paired within a round. The exit status is 1 when a
run failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = ("mailframe", "aiosmtplib")
REFERENCE = "aiosmtplib"
SENDER = "sender@bench.example"
RECIPIENT = "rcpt@bench.example"
HELO = "client.bench.example"
HEADER = (
    b"From: <sender@bench.example>\r\n"
    b"To: <rcpt@bench.example>\r\n"
    b"Subject: client throughput\r\n"
    b"Message-ID: <client-throughput@bench.example>\r\n"
    b"\r\n"
)
#: The smallest --size: the header section and one empty body line.
MIN_SIZE = len(HEADER) + 2
#: Seconds to wait for the sink's 220 greeting.
SINK_READY_TIMEOUT = 10.0
GAVE_UP = "gave up: the run's time ran out"
#: Seconds the child keeps for itself inside the run timeout, to report
#: what it sent before the parent gives up on it.
CHILD_MARGIN = 5.0


# -- the message ---------------------------------------------------------------------


def make_message(size: int) -> bytes:
    """A message of exactly *size* octets: a few header fields, then lines of 78."""
    if size < MIN_SIZE:
        raise ValueError(f"a message has at least {MIN_SIZE} octets")
    left = size - len(HEADER)
    line = b"x" * 76 + b"\r\n"
    lines = [line] * (left // len(line))
    rest = left % len(line)
    if rest == 1:
        # One octet cannot be a line of its own: lengthen the last one.
        lines[-1] = b"x" * 77 + b"\r\n"
    elif rest:
        lines.append(b"x" * (rest - 2) + b"\r\n")
    message = HEADER + b"".join(lines)
    assert len(message) == size, (len(message), size)
    return message


# -- the child: one client sending ---------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall time and this process's CPU time between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._started: tuple[float, float] | None = None
        self.stopped = False

    def start(self) -> None:
        self._started = (time.perf_counter(), _cpu_seconds())

    def stop(self) -> None:
        if self._started is None or self.stopped:
            return
        self.stopped = True
        self.wall = time.perf_counter() - self._started[0]
        self.cpu = _cpu_seconds() - self._started[1]


class Tally:
    """Messages sent, and the first few errors."""

    def __init__(self) -> None:
        self.sent = 0
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < 5 and text not in self.errors:
            self.errors.append(text)

    def out_of_time(self, deadline: float) -> bool:
        """Checked before each message, so that every client stops in time."""
        if time.monotonic() < deadline:
            return False
        self.error(GAVE_UP)
        return True


def send_mailframe(port: int, message: bytes, count: int, connections: int,
                   deadline: float, meter: Meter, tally: Tally) -> dict[str, Any]:
    """Send through :class:`~mailframe.transports.SMTPTransport` on Twisted's reactor."""
    import random

    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    from twisted.python.failure import Failure

    import mailframe
    from mailframe.address import Mailbox
    from mailframe.envelope import DeliveryStatus, Envelope, QueueEntry, Route
    from mailframe.testing import MemoryQueueStore, MemoryResolver
    from mailframe.transports import SMTPTransport, SMTPTransportSettings

    def now(d: defer.Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    reactor: Any = _reactor
    # The queue is filled before the clock starts: only delivery is timed.
    store = MemoryQueueStore(reactor)
    recipient = Mailbox.parse(RECIPIENT)
    envelope = Envelope(Mailbox.parse(SENDER), (recipient,))
    entries: list[QueueEntry] = []
    for _ in range(count):
        writer = store.open_writer()
        writer.write(message)
        entries.append(now(store.get(now(writer.commit(envelope)))))
    transport = SMTPTransport(store, reactor, MemoryResolver(), random.Random(0),
                              SMTPTransportSettings(
                                  helo_name=HELO, tls="none",
                                  connections_per_destination=connections,
                                  messages_per_connection=count))
    route = Route("smtp", {"nexthop": f"127.0.0.1:{port}"})
    pending = iter(entries)

    async def worker() -> None:
        for entry in pending:
            if tally.out_of_time(deadline):
                return
            results = await transport.deliver(entry, [(recipient, recipient)], route)
            if meter.stopped:
                # Given up: what the shutdown does to the sessions is no result.
                return
            if all(r.status is DeliveryStatus.DELIVERED for r in results):
                tally.sent += 1
            else:
                tally.error("; ".join(str(r.reply) for r in results))

    async def run() -> None:
        meter.start()
        try:
            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(worker()) for _ in range(connections)],
                consumeErrors=True)
        finally:
            await transport.stop()
            meter.stop()

    def finished(result: object) -> None:
        if isinstance(result, Failure):
            tally.error(f"{getattr(result.type, '__name__', 'error')}: {result.getErrorMessage()}")
        if guard.active():
            guard.cancel()
        reactor.stop()

    def give_up() -> None:
        meter.stop()
        tally.error(GAVE_UP)
        reactor.stop()

    # A backstop for a delivery that never returns.
    guard = reactor.callLater(max(deadline - time.monotonic(), 0.1), give_up)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addBoth(finished))
    reactor.run(installSignalHandlers=False)
    return {"module": mailframe.__file__}


def send_aiosmtplib(port: int, message: bytes, count: int, connections: int,
                    deadline: float, meter: Meter, tally: Tally) -> dict[str, Any]:
    """Send with ``aiosmtplib.SMTP.sendmail`` over reused connections."""
    import asyncio

    import aiosmtplib

    pending = iter(range(count))

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname=HELO,
                               use_tls=False, start_tls=False, timeout=30)
        await smtp.connect()
        try:
            for _ in pending:
                if tally.out_of_time(deadline):
                    break
                try:
                    await smtp.sendmail(SENDER, [RECIPIENT], message)
                except aiosmtplib.SMTPResponseException as error:
                    tally.error(f"{error.code} {error.message}")
                else:
                    tally.sent += 1
        except BaseException:
            # Broken, perhaps in the middle of DATA: no QUIT.
            smtp.close()
            raise
        await smtp.quit()

    async def run() -> None:
        # Not asyncio.wait_for: on Python 3.11, cancelling a worker here did
        # not stop it. aiosmtplib awaits each reply with wait_for, which on
        # 3.11 drops a cancellation when the reply is already in. So every
        # worker checks the deadline; a reply that never comes has
        # aiosmtplib's timeout, then the parent's.
        meter.start()
        try:
            await asyncio.gather(*(worker() for _ in range(connections)))
        except Exception as error:
            tally.error(f"{type(error).__name__}: {error}")
        finally:
            meter.stop()

    asyncio.run(run())
    return {"module": aiosmtplib.__file__}


SENDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "mailframe": send_mailframe,
    "aiosmtplib": send_aiosmtplib,
}


def worker_main(args: argparse.Namespace) -> int:
    """Send once and print the outcome as one JSON line."""
    # The deadline counts from here, so that set-up is bounded too.
    deadline = time.monotonic() + args.timeout
    message = make_message(args.size)
    connections = args.connections[0]
    meter, tally = Meter(), Tally()
    extra = SENDERS[args.worker](args.port, message, args.messages, connections,
                                 deadline, meter, tally)
    ok = tally.sent == args.messages and not tally.errors
    out = {
        "ok": ok,
        "sent": tally.sent,
        "failed": args.messages - tally.sent,
        "elapsed_s": round(meter.wall, 6),
        "cpu_s": round(meter.cpu, 6),
        "msgs_per_s": round(tally.sent / meter.wall, 1) if meter.wall > 0 else 0.0,
        "cpu_us_per_msg": round(meter.cpu / max(tally.sent, 1) * 1e6, 1),
        **extra,
    }
    if tally.errors:
        out["error"] = "; ".join(tally.errors)
    print(json.dumps(out), flush=True)
    return 0 if ok else 1


# -- the parent: sinks, children, rounds ---------------------------------------------


def find_sink(given: str | None) -> str | None:
    """``--smtp-sink``, ``$SMTP_SINK``, ``PATH``, then the usual sbin directories."""
    for candidate in (given, os.environ.get("SMTP_SINK")):
        if candidate:
            return candidate
    found = shutil.which("smtp-sink")
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = pathlib.Path(directory) / "smtp-sink"
        if path.exists():
            return str(path)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_greeting(port: int, process: subprocess.Popen[bytes], what: str = "smtp-sink",
                      timeout: float = SINK_READY_TIMEOUT) -> None:
    """Wait until *process* (named *what*) greets with 220 on *port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(512)
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no 220 from {what} on port {port} within {timeout:g} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def sink_counters(text: str) -> dict[str, int]:
    """The last ``sess=N quit=N mesg=N`` record that ``smtp-sink -c`` printed."""
    for record in reversed(text.replace("\n", "\r").split("\r")):
        fields = dict(part.split("=", 1) for part in record.split() if "=" in part)
        if "mesg" in fields:
            try:
                return {key: int(value) for key, value in fields.items()}
            except ValueError:
                continue
    return {}


def child_env() -> dict[str, str]:
    """The environment of a child: it imports mailframe from this working tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_with_sink(
    sink_path: str, command_for: Callable[[int, str], list[str]], timeout: float,
) -> tuple[dict[str, Any], dict[str, int]]:
    """
    Start a fresh ``smtp-sink`` on a free loopback port, run the child that
    ``command_for(port, scratch_directory)`` names, and stop the sink.

    :return: what the child printed as its last line (JSON), or ``ok``
        false and an ``error``; and the sink's counters.
    """
    port = free_port()
    outcome: dict[str, Any] = {"port": port}
    argv = [sink_path, "-c"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    argv += [f"127.0.0.1:{port}", "1024"]
    with tempfile.TemporaryDirectory(prefix="mailframe-bench-") as tmp:
        counters = pathlib.Path(tmp) / "sink.out"
        with open(counters, "wb") as out:
            sink = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            wait_for_greeting(port, sink)
            outcome.update(_run_child(command_for(port, tmp), timeout))
            # Let the sink count the sessions that just closed.
            time.sleep(0.2)
        except RuntimeError as error:
            outcome.update(ok=False, error=str(error))
        finally:
            stop_process(sink)
            seen = sink_counters(counters.read_text(errors="replace"))
    return outcome, seen


def _run_child(command: list[str], timeout: float) -> dict[str, Any]:
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               env=child_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"killed after {timeout:g} s"}
    lines = child.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (child.stderr or child.stdout).strip()[-800:]
        return {"ok": False, "error": f"exit status {child.returncode}: {tail}"}
    if child.returncode != 0 and result.get("ok"):
        result.update(ok=False, error=f"exit status {child.returncode}")
    return result


def run_once(sink_path: str, variant: str, connections: int,
             args: argparse.Namespace) -> dict[str, Any]:
    """One run: a fresh sink, one child sending through *variant*, the sink stopped."""
    record: dict[str, Any] = {"variant": variant, "connections": connections,
                              "messages": args.messages}

    def command(port: int, scratch: str) -> list[str]:
        return [
            sys.executable, str(pathlib.Path(__file__).resolve()),
            "--worker", variant, "--port", str(port),
            "--messages", str(args.messages), "--connections", str(connections),
            "--size", str(args.size),
            "--timeout", str(max(args.timeout - CHILD_MARGIN, 1.0)),
        ]

    outcome, seen = run_with_sink(sink_path, command, args.timeout)
    record.update(outcome)
    if seen:
        # The greeting probe is one session, without a message.
        record["sink_messages"] = seen.get("mesg", 0)
        record["sink_sessions"] = max(seen.get("sess", 0) - 1, 0)
        if record.get("ok") and record["sink_messages"] != record.get("sent"):
            record.update(ok=False, error=f"the sink counted {record['sink_messages']}"
                          f" messages, the client {record.get('sent')}")
    return record


def summarise(runs: Sequence[dict[str, Any]], variants: Sequence[str],
              connection_counts: Sequence[int]) -> list[dict[str, Any]]:
    """Medians over rounds, and ratios to the reference paired within a round."""
    ok = [r for r in runs if r.get("ok")]
    rows = []
    for connections in connection_counts:
        reference = {r["round"]: r for r in ok
                     if r["variant"] == REFERENCE and r["connections"] == connections}
        for variant in variants:
            mine = [r for r in ok if r["variant"] == variant and r["connections"] == connections]
            row: dict[str, Any] = {"variant": variant, "connections": connections,
                                   "runs": len(mine)}
            if mine:
                rates = [r["msgs_per_s"] for r in mine]
                row.update(
                    median_msgs_per_s=statistics.median(rates),
                    min_msgs_per_s=min(rates),
                    max_msgs_per_s=max(rates),
                    median_cpu_us_per_msg=statistics.median(r["cpu_us_per_msg"] for r in mine),
                )
                pairs = [(r, reference[r["round"]]) for r in mine if r["round"] in reference]
                if pairs:
                    row[f"ratio_vs_{REFERENCE}"] = statistics.median(
                        r["msgs_per_s"] / ref["msgs_per_s"] for r, ref in pairs)
                    row[f"cpu_ratio_vs_{REFERENCE}"] = statistics.median(
                        r["cpu_us_per_msg"] / ref["cpu_us_per_msg"] for r, ref in pairs)
            rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"| variant | connections | median msgs/s | min\N{EN DASH}max msgs/s | median CPU µs/msg"
        f" | ratio vs {REFERENCE} | CPU ratio vs {REFERENCE} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row["runs"]:
            lines.append(f"| {row['variant']} | {row['connections']} | failed | | | | |")
            continue
        ratio = row.get(f"ratio_vs_{REFERENCE}")
        cpu_ratio = row.get(f"cpu_ratio_vs_{REFERENCE}")
        lines.append(
            f"| {row['variant']} | {row['connections']} | {row['median_msgs_per_s']:.0f}"
            f" | {row['min_msgs_per_s']:.0f}\N{EN DASH}{row['max_msgs_per_s']:.0f}"
            f" | {row['median_cpu_us_per_msg']:.0f}"
            f" | {'' if ratio is None else f'{ratio:.2f}'}"
            f" | {'' if cpu_ratio is None else f'{cpu_ratio:.2f}'} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {}
    for name in ("twisted", "aiosmtplib"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    try:
        found["mailframe"] = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        found["mailframe"] = "unknown"
    return found


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def message_size(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"a message has at least {MIN_SIZE} octets")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Messages per second and client CPU per message of mailframe's SMTP"
                    " client and aiosmtplib, each sending to a fresh smtp-sink.")
    p.add_argument("--messages", type=positive, default=2000, metavar="N",
                   help="messages per run (default 2000)")
    p.add_argument("--connections", type=positive, nargs="+", default=[1, 10], metavar="C",
                   help="connection counts to measure (default: 1 10)")
    p.add_argument("--size", type=message_size, default=1024,
                   help="octets per message, header section included (default 1024)")
    p.add_argument("--rounds", type=positive, default=3, help="rounds (default 3)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated clients to measure (default {','.join(VARIANTS)})")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one run may take before its child is killed (default 120)")
    p.add_argument("--smtp-sink", metavar="PATH",
                   help="the smtp-sink program (default: $SMTP_SINK, PATH, /usr/sbin)")
    p.add_argument("--json", metavar="PATH", help="also write every run and the summary here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser().error(f"--variants: choose from {', '.join(VARIANTS)}")
    connection_counts = list(dict.fromkeys(args.connections))
    sink_path = find_sink(args.smtp_sink)
    if sink_path is None:
        print("smtp-sink not found: install Postfix (Debian: apt-get install postfix)"
              " or give --smtp-sink", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "smtp_sink": sink_path,
        "versions": versions(),
        "options": {"messages": args.messages, "connections": connection_counts,
                    "size": args.size, "rounds": args.rounds, "variants": variants,
                    "timeout": args.timeout},
    }
    runs = []
    for number in range(args.rounds):
        # Rotate the order (A B, B A, ...) so slow stretches land on everyone.
        shift = number % len(variants)
        order = variants[shift:] + variants[:shift]
        for connections in connection_counts:
            for variant in order:
                record = run_once(sink_path, variant, connections, args)
                record["round"] = number
                runs.append(record)
                state = (f"{record['msgs_per_s']:.0f} msgs/s,"
                         f" {record['cpu_us_per_msg']:.0f} µs CPU/msg" if record.get("ok")
                         else f"FAILED: {record.get('error')}")
                print(f"round {number + 1}/{args.rounds} {variant} c{connections}: {state}",
                      file=sys.stderr, flush=True)
    load_end = meta["loadavg_end"] = os.getloadavg()
    rows = summarise(runs, variants, connection_counts)
    print(f"{args.messages} messages of {args.size} octets, one recipient each, to smtp-sink;"
          f" {args.rounds} round(s); load average {load_start[0]:.1f}"
          f" at the start, {load_end[0]:.1f} at the end.\n")
    print(table(rows))
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        print("\nFailed runs:")
        for r in failed:
            sent = f" (sent {r['sent']} of {r['messages']})" if "sent" in r else ""
            print(f"- round {r['round'] + 1}, {r['variant']} c{r['connections']}:"
                  f" {r.get('error')}{sent}")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"meta": meta, "runs": runs, "summary": rows}, indent=2) + "\n",
            encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
mailframe's own server benchmark: messages a second and server CPU per
message, with Postfix's ``smtp-source`` as the client and ``smtp-sink`` as
the downstream host.

    .venv/bin/python benchmarks/mta_bench.py [--rounds 5] [--quick] [--json PATH]

Each run starts a fresh ``twistd -n mailframe`` on a free loopback port, in
its own scratch directory, with its log on (to a file, as an operator runs
it), and drives it with ``smtp-source -s SESSIONS -m MESSAGES -l LENGTH -r
RCPTS -d``. The scenarios (``--scenarios``):

``small-hold``
    1 KB bodies, 1 recipient, 20 sessions reusing their connections; the
    spool store with ``--hold``: every message is committed durably, then
    kept. Timed until ``smtp-source`` exits.
``small-discard``
    the same load; ``--store discard``: nothing is written. The protocol's
    own cost.
``small-maildir``
    the same load; the spool store, and every message delivered into its
    recipient's Maildir. Timed until the log shows every recipient
    delivered; the Maildirs are counted afterwards.
``large-hold``
    100 KB bodies, 500 messages; as ``small-hold``.
``relay-small``
    1 KB bodies, 1 recipient; ``--smarthost`` to a fresh ``smtp-sink -D``
    that writes every transaction to a file before its ``250``. Timed until
    the sink holds every recipient.
``relay-rcpt10``
    2000 messages of 10 recipients each, as ``relay-small``; the table shows
    the downstream transactions per message (1.00: one each).

Figures per run: msgs/s (messages over the timed interval), server CPU
µs/msg (user + system of the server's whole process tree, from
``/proc/PID/stat``, over the same interval), and, for the spool store, the
directory ``fsync`` calls per message (from the line the spool logs when it
stops). The table shows the median over the rounds and the minimum beside
it. Rounds are interleaved: each round runs every scenario once, in an
order that rotates from round to round.

Then ``benchmarks/client_throughput.py`` runs with ``--connections 10``
for the client comparison with aiosmtplib, unless ``--no-client``.

Linux only (``/proc``). mailframe is imported from this working tree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import attrs

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from client_throughput import free_port, wait_for_greeting

REPO = pathlib.Path(__file__).resolve().parent.parent
TWISTD = pathlib.Path(sys.executable).parent / "twistd"
CLIENT = pathlib.Path(__file__).resolve().parent / "client_throughput.py"
SYNCFS_CONFIG = pathlib.Path(__file__).resolve().parent / "syncfs.toml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.example"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"rcpt@{DOMAIN}"
#: Seconds a server or sink may take to greet after it starts.
READY_TIMEOUT = 30.0
#: Seconds between looks at the log or the sink's dump while a run drains.
POLL = 0.02
#: A run fails when nothing more arrives for this long after injection ended.
STALL = 15.0
#: The line the spool logs when it stops (see SpoolQueueStore.stop).
FSYNCS = re.compile(r"Spool \S+ stopped: (\d+) fsyncs, (\d+) of directories")
#: The line the queue runner logs for each delivered recipient.
DELIVERED = b"status=delivered"


@attrs.frozen
class Scenario:
    """One load: the ``smtp-source`` options, and how mailframe runs."""

    name: str
    sessions: int
    messages: int
    length: int
    rcpts: int
    #: ``hold``, ``discard``, ``maildir`` or ``relay``.
    mode: str
    what: str

    def scaled(self, scale: float) -> Scenario:
        return attrs.evolve(self, messages=max(int(self.messages * scale), self.sessions))


SCENARIOS = (
    Scenario("small-hold", 20, 5000, 1024, 1, "hold", "1 KB, 1 rcpt, 20 sessions; spool, --hold"),
    Scenario("small-discard", 20, 5000, 1024, 1, "discard",
             "1 KB, 1 rcpt, 20 sessions; discard store"),
    # 2000, not 5000: every message makes a Maildir of its own, which
    # takes longer to deliver into, and to remove, than the rest of a round.
    Scenario("small-maildir", 20, 2000, 1024, 1, "maildir",
             "1 KB, 1 rcpt, 20 sessions; spool, delivered to Maildirs"),
    Scenario("large-hold", 20, 500, 102400, 1, "hold",
             "100 KB, 1 rcpt, 20 sessions; spool, --hold"),
    Scenario("relay-small", 20, 5000, 1024, 1, "relay",
             "1 KB, 1 rcpt, 20 sessions; spool, relayed to smtp-sink"),
    Scenario("relay-rcpt10", 20, 2000, 1024, 10, "relay",
             "1 KB, 10 rcpts, 20 sessions; spool, relayed to smtp-sink"),
)


# -- /proc ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int]:
    """(ppid, CPU ticks of the process and its reaped children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[1]), sum(int(rest[i]) for i in (11, 12, 13, 14))


def tree_cpu(root: int) -> float:
    """CPU seconds of *root* and its descendants, reaped children included."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stats[int(name)] = _stat(int(name))
            except (OSError, ValueError, IndexError):
                continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        ticks += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return ticks / CLK_TCK


# -- processes -----------------------------------------------------------------------


def find_tool(name: str, variable: str) -> str | None:
    """``$VARIABLE``, ``PATH``, then the usual sbin directories."""
    given = os.environ.get(variable)
    if given:
        return given
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = pathlib.Path(directory) / name
        if path.exists():
            return str(path)
    return None


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def server_argv(scenario: Scenario, port: int, work: pathlib.Path,
                sink_port: int | None, tuned: bool = False) -> list[str]:
    """
    The server's command. *tuned* adds the operator's two options for
    speed: the log through :func:`mailframe.logs.text_observer`, and, for
    the spool and the Maildir deliveries, ``sync = "filesystem"``
    (``benchmarks/syncfs.toml``).
    """
    argv = [
        # The log goes to stdout, which is a file: twistd's own log file
        # would rotate at 1 MB, in the middle of a run.
        str(TWISTD), "-n", "--pidfile=",
        *(["--logger", "mailframe.logs.text_observer"] if tuned else []),
        "mailframe",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
        "--hostname", "mta.bench.example", "--queue-dir", str(work / "queue"),
    ]
    if tuned and scenario.mode != "discard":
        argv += ["--config", str(SYNCFS_CONFIG)]
    if scenario.mode == "relay":
        return [*argv, "--smarthost", f"127.0.0.1:{sink_port}"]
    argv += ["--local-domain", f"{DOMAIN}={work / 'mail'}"]
    if scenario.mode == "hold":
        argv.append("--hold")
    elif scenario.mode == "discard":
        argv += ["--store", "discard", "--unsafe-store"]
    return argv


def source_argv(source: str, scenario: Scenario, port: int) -> list[str]:
    return [source, "-s", str(scenario.sessions), "-m", str(scenario.messages),
            "-l", str(scenario.length), "-r", str(scenario.rcpts), "-N", "-M", DOMAIN,
            "-f", SENDER, "-t", RECIPIENT, "-d", f"127.0.0.1:{port}"]


class Counter:
    """Counts a marker in a growing file, reading only what is new."""

    def __init__(self, path: pathlib.Path, marker: bytes) -> None:
        self.path, self.marker = path, marker
        self.count = self._offset = 0
        self._tail = b""

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        self._offset += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self.count += data[:cut].count(self.marker)
        self._tail = data[cut:]
        return self.count


def count_files(directory: pathlib.Path, pattern: str) -> int:
    return sum(1 for _ in directory.glob(pattern)) if directory.is_dir() else 0


def one_run(scenario: Scenario, tools: dict[str, str], timeout: float,
            tuned: bool = False) -> dict[str, Any]:
    """A fresh server (and sink), one smtp-source load, the server stopped."""
    record: dict[str, Any] = {"scenario": scenario.name, "messages": scenario.messages,
                              "ok": False}
    expected = scenario.messages * scenario.rcpts
    with tempfile.TemporaryDirectory(prefix="mailframe-mta-bench-") as tmp:
        work = pathlib.Path(tmp)
        sink = None
        dump = work / "relayed.dump"
        if scenario.mode == "relay":
            sink_port = free_port()
            argv = [tools["smtp-sink"], "-c", "-D", str(dump), "-m", "4096"]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
                os.chmod(work, 0o777)
            with open(work / "sink.out", "wb") as out:
                sink = subprocess.Popen([*argv, f"127.0.0.1:{sink_port}", "1024"],
                                        stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        else:
            sink_port = None
        port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        with open(work / "server.log", "wb") as out:
            argv = server_argv(scenario, port, work, sink_port, tuned)
            server = subprocess.Popen(argv, cwd=work,
                                      env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            if sink is not None:
                assert sink_port is not None
                wait_for_greeting(sink_port, sink, "smtp-sink", READY_TIMEOUT)
            wait_for_greeting(port, server, "mailframe", READY_TIMEOUT)
            if scenario.mode == "relay":
                done = Counter(dump, b"X-Rcpt-Args:")
            elif scenario.mode == "maildir":
                done = Counter(work / "server.log", DELIVERED)
            else:
                done = None
            cpu_before = tree_cpu(server.pid)
            started = time.monotonic()
            deadline = started + timeout
            source = subprocess.Popen(source_argv(tools["smtp-source"], scenario, port),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
            try:
                output, _ = source.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                source.kill()
                source.communicate()
                record["error"] = f"smtp-source killed after {timeout:g} s"
                return record
            injected = time.monotonic()
            if source.returncode != 0:
                tail = output.decode(errors="replace").strip()[-300:]
                record["error"] = f"smtp-source exit status {source.returncode}: {tail}"
                return record
            if done is not None:
                last, last_at = done.poll(), injected
                while last < expected:
                    now = time.monotonic()
                    if now > deadline or now - last_at > STALL:
                        record["error"] = f"{last} of {expected} recipients delivered"
                        return record
                    time.sleep(POLL)
                    seen = done.poll()
                    if seen != last:
                        last, last_at = seen, time.monotonic()
            finished = time.monotonic()
            cpu = tree_cpu(server.pid) - cpu_before
            elapsed = finished - started
            record.update(
                elapsed_s=round(elapsed, 3),
                inject_s=round(injected - started, 3),
                msgs_per_s=round(scenario.messages / elapsed, 1),
                cpu_us_per_msg=round(cpu / scenario.messages * 1e6, 1),
            )
        except RuntimeError as error:
            record["error"] = str(error)
            return record
        finally:
            stop(server)
            if sink is not None:
                time.sleep(0.2)
                stop(sink)
            log = (work / "server.log").read_text(errors="replace") \
                if (work / "server.log").exists() else ""
            if "error" in record:
                record["log_tail"] = log[-1500:]
        found = FSYNCS.findall(log)
        if found:
            record["dir_fsyncs_per_msg"] = round(int(found[-1][1]) / scenario.messages, 3)
            record["fsyncs_per_msg"] = round(int(found[-1][0]) / scenario.messages, 3)
        # What arrived where it should, counted once the server stopped.
        if scenario.mode == "hold":
            kept = count_files(work / "queue" / "hold", "*.msg")
            if kept != scenario.messages:
                record["error"] = f"{kept} of {scenario.messages} messages on hold"
                return record
        elif scenario.mode == "maildir":
            delivered = count_files(work / "mail", "*/new/*")
            if delivered != expected:
                record["error"] = f"{delivered} of {expected} messages in the Maildirs"
                return record
        elif scenario.mode == "relay":
            text = dump.read_bytes()
            rcpts, transactions = text.count(b"X-Rcpt-Args:"), text.count(b"X-Mail-Args:")
            if rcpts < expected:
                record["error"] = f"the sink holds {rcpts} of {expected} recipients"
                return record
            record["downstream_txn_per_msg"] = round(transactions / scenario.messages, 2)
        record["ok"] = True
    return record


# -- the table -----------------------------------------------------------------------


def summarise(runs: Sequence[dict[str, Any]],
              scenarios: Sequence[Scenario]) -> list[dict[str, Any]]:
    rows = []
    for scenario in scenarios:
        mine = [r for r in runs if r["scenario"] == scenario.name and r.get("ok")]
        row: dict[str, Any] = {"scenario": scenario.name, "what": scenario.what,
                               "messages": scenario.messages, "runs": len(mine),
                               "failed": sum(1 for r in runs if r["scenario"] == scenario.name
                                             and not r.get("ok"))}
        if mine:
            rates = [r["msgs_per_s"] for r in mine]
            cpus = [r["cpu_us_per_msg"] for r in mine]
            row.update(median_msgs_per_s=statistics.median(rates), min_msgs_per_s=min(rates),
                       median_cpu_us_per_msg=statistics.median(cpus),
                       min_cpu_us_per_msg=min(cpus))
            for key in ("dir_fsyncs_per_msg", "downstream_txn_per_msg"):
                values = [r[key] for r in mine if key in r]
                if values:
                    row[key] = statistics.median(values)
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| scenario | what | msgs | runs | median msgs/s | min msgs/s"
             " | median CPU µs/msg | min CPU µs/msg | dir fsyncs/msg | downstream txn/msg |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        if not row["runs"]:
            lines.append(f"| {row['scenario']} | {row['what']} | {row['messages']} | 0"
                         " | failed | | | | | |")
            continue
        extra = [f"{row[k]:.2f}" if k in row else "" for k in
                 ("dir_fsyncs_per_msg", "downstream_txn_per_msg")]
        lines.append(
            f"| {row['scenario']} | {row['what']} | {row['messages']} | {row['runs']}"
            f" | {row['median_msgs_per_s']:.0f} | {row['min_msgs_per_s']:.0f}"
            f" | {row['median_cpu_us_per_msg']:.0f} | {row['min_cpu_us_per_msg']:.0f}"
            f" | {extra[0]} | {extra[1]} |")
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def parser() -> argparse.ArgumentParser:
    names = ",".join(s.name for s in SCENARIOS)
    p = argparse.ArgumentParser(
        description="mailframe's messages per second and server CPU µs per message under"
                    " smtp-source, median and minimum over interleaved rounds.")
    p.add_argument("--rounds", type=positive, default=5, help="rounds (default 5)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the message counts (default 1)")
    p.add_argument("--scenarios", default=names, help=f"comma-separated (default {names})")
    p.add_argument("--quick", action="store_true",
                   help="a short look: --scale 0.1, 1 round, and a short client run")
    p.add_argument("--no-client", action="store_true",
                   help="leave out the client comparison (client_throughput.py)")
    p.add_argument("--client-messages", type=positive, default=2000,
                   help="messages per client run (default 2000)")
    p.add_argument("--run-timeout", type=float, default=120.0,
                   help="seconds one run may take from the start of injection (default 120)")
    p.add_argument("--max-minutes", type=float, default=15.0,
                   help="start no run after this long (default 15)")
    p.add_argument("--tuned", action="store_true",
                   help="run the server with twistd --logger mailframe.logs.text_observer"
                        " and sync = \"filesystem\" for the spool and the Maildir deliveries"
                        " (benchmarks/syncfs.toml)")
    p.add_argument("--json", metavar="PATH", help="also write every run and the summary here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Stopped, it still stops the server and the sink of the run under way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.scale, args.rounds, args.client_messages = 0.1, 1, 500
    by_name = {s.name: s for s in SCENARIOS}
    chosen = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        parser().error(f"unknown scenarios {', '.join(unknown)}; choose from"
                       f" {', '.join(by_name)}")
    scenarios = [by_name[n].scaled(args.scale) for n in chosen]
    tools = {}
    for name, variable in (("smtp-source", "SMTP_SOURCE"), ("smtp-sink", "SMTP_SINK")):
        found = find_tool(name, variable)
        if found is None:
            print(f"{name} not found: install Postfix (Debian: apt-get install postfix)"
                  f" or set ${variable}", file=sys.stderr)
            return 2
        tools[name] = found
    load_start = os.getloadavg()
    began = time.monotonic()
    runs: list[dict[str, Any]] = []
    for number in range(args.rounds):
        shift = number % len(scenarios)
        for scenario in scenarios[shift:] + scenarios[:shift]:
            if time.monotonic() - began > args.max_minutes * 60:
                record = {"scenario": scenario.name, "ok": False,
                          "error": f"skipped: past --max-minutes {args.max_minutes:g}"}
            else:
                record = one_run(scenario, tools, args.run_timeout, args.tuned)
            record["round"] = number
            runs.append(record)
            state = (f"{record['msgs_per_s']:.0f} msgs/s, {record['cpu_us_per_msg']:.0f}"
                     " µs CPU/msg" if record.get("ok") else f"FAILED: {record.get('error')}")
            print(f"round {number + 1}/{args.rounds} {scenario.name}: {state}",
                  file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    rows = summarise(runs, scenarios)
    tuned = (" tuned (--logger mailframe.logs.text_observer, spool and maildir sync = filesystem);"
             if args.tuned else "")
    print(f"mailframe under smtp-source (-d: connections reused);{tuned} {args.rounds} round(s);"
          f" load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end.\n")
    print(table(rows))
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        print("\nFailed runs:")
        for r in failed:
            print(f"- round {r['round'] + 1}, {r['scenario']}: {r.get('error')}")
    client: dict[str, Any] | None = None
    if not args.no_client:
        command = [sys.executable, str(CLIENT), "--connections", "10",
                   "--rounds", str(max(args.rounds, 1)),
                   "--messages", str(args.client_messages), "--smtp-sink", tools["smtp-sink"]]
        print(f"\nThe client: {' '.join(command[1:])}\n", flush=True)
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True,
                              timeout=args.rounds * 4 * 120 + 60)
        print(done.stdout, end="", flush=True)
        client = {"command": command, "status": done.returncode, "output": done.stdout}
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": load_end,
            "python": sys.version.split()[0], "tools": tools,
            "options": vars(args),
        }
        pathlib.Path(args.json).write_text(json.dumps(
            {"meta": meta, "runs": runs, "summary": rows, "client": client}, indent=2) + "\n",
            encoding="utf-8")
    return 1 if failed or (client is not None and client["status"] != 0) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
The delivery side alone: how much CPU the queue runner and the SMTP
transport spend on each message they relay to a smarthost.

    .venv/bin/python benchmarks/delivery.py [--messages 3000] [--rounds 5]
        [--stores spool,memory] [--json PATH] [--profile PATH]

Each run starts a fresh Postfix ``smtp-sink`` on a free loopback port, then
a fresh child Python process (this script with ``--worker``) that:

1. fills a store (``spool``: a :class:`~mailframe.stores.SpoolQueueStore` in
   a scratch directory; ``memory``: a
   :class:`~mailframe.testing.MemoryQueueStore`) with ``--messages``
   messages of ``--size`` octets, one recipient each, committed 100 at a
   time; this is not timed;
2. starts a :class:`~mailframe.services.queuerunner.QueueRunner` with the
   ``smarthost`` router to the sink and the ``smtp`` transport, both with
   their default settings (20 entries at once, 20 connections, no TLS), and
   its log written to a file, as an operator runs it;
3. measures the wall time, the CPU time of the whole process (user and
   system, ``getrusage``: the spool's threads included) and that of the
   reactor's thread alone, from the start of the runner until the store
   has recorded every entry as done.

A run is good when every entry was delivered at its first attempt and the
sink counted every message. The table shows, per store, the median over
the rounds and the minimum beside it. The stores run interleaved within
each round, in an order that rotates from round to round.

``--profile PATH`` runs one child for the first store with
:mod:`cProfile` on (the reactor's thread only: the spool's threads are not
profiled) and writes its statistics to *PATH*; its figures are not timed
ones.

Linux only (``getrusage``). mailframe is imported from this working tree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from client_throughput import (
    find_sink,
    make_message,
    message_size,
    positive,
    run_with_sink,
)

STORES = ("spool", "memory")
SENDER = "sender@bench.example"
RECIPIENT = "rcpt@bench.example"
HELO = "relay.bench.example"
#: Messages committed at once while the store is filled.
FILL_BATCH = 100
#: Seconds the child keeps for itself inside the run timeout.
CHILD_MARGIN = 5.0


# -- the child: one store, one delivery run -------------------------------------------


def _usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def worker_main(args: argparse.Namespace) -> int:
    """Fill, deliver, and print the outcome as one JSON line."""
    import random

    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from mailframe.address import Mailbox
    from mailframe.envelope import Envelope, QueueEntry
    from mailframe.routing.routers import SmarthostRouter
    from mailframe.services.queuerunner import QueueRunner
    from mailframe.stores import SpoolQueueStore
    from mailframe.testing import MemoryQueueStore, MemoryResolver
    from mailframe.transports import SMTPTransport, SMTPTransportSettings

    reactor: Any = _reactor
    deadline = time.monotonic() + args.timeout
    scratch = pathlib.Path(args.scratch)
    log = open(scratch / "delivery.log", "w", encoding="utf-8")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)
    message = make_message(args.size)
    count = args.messages
    out: dict[str, Any] = {"ok": False, "store": args.worker, "messages": count}
    store: Any
    if args.worker == "spool":
        store = (SpoolQueueStore(scratch / "spool", reactor, threads=args.threads)
                 if args.threads else SpoolQueueStore(scratch / "spool", reactor))
    else:
        store = MemoryQueueStore(reactor)
    transport = SMTPTransport(store, reactor, MemoryResolver(), random.Random(0),
                              SMTPTransportSettings(helo_name=HELO, tls="none"))
    runner = QueueRunner(store, SmarthostRouter(f"[127.0.0.1]:{args.port}"),
                         {"smtp": transport}, reactor, random=random.Random(0))
    done = {"entries": 0, "rescheduled": 0}
    finished: defer.Deferred[None] = defer.Deferred()
    record, reschedule = store.record, store.reschedule

    def counting_record(entry: QueueEntry) -> defer.Deferred[None]:
        d: defer.Deferred[None] = record(entry)
        if entry.done:
            def counted(result: None) -> None:
                done["entries"] += 1
                if done["entries"] == count and not finished.called:
                    finished.callback(None)
            d.addCallback(counted)
        return d

    def counting_reschedule(queue_id: str, when: float, reason: str) -> defer.Deferred[None]:
        done["rescheduled"] += 1
        if "error" not in out:
            out["error"] = f"{queue_id} was deferred: {reason}"
        if not finished.called:
            finished.callback(None)
        d: defer.Deferred[None] = reschedule(queue_id, when, reason)
        return d

    store.record = counting_record
    store.reschedule = counting_reschedule
    recipient = Mailbox.parse(RECIPIENT)
    envelope = Envelope(Mailbox.parse(SENDER), (recipient,))
    profiler: Any = None

    async def fill() -> None:
        if args.worker == "spool":
            await store.recover()
        left = count
        while left:
            batch = min(left, FILL_BATCH)
            commits = []
            for _ in range(batch):
                writer = store.open_writer()
                writer.write(message)
                commits.append(writer.commit(envelope))
            await defer.gatherResults(commits)
            left -= batch

    async def run() -> None:
        nonlocal profiler
        await fill()
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
        user, system = _usage()
        thread, wall = time.thread_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        runner.startService()
        try:
            await finished
        finally:
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - wall
            thread = time.thread_time() - thread
            end_user, end_system = _usage()
            user, system = end_user - user, end_system - system
            out.update(
                delivered=done["entries"],
                elapsed_s=round(wall, 6),
                msgs_per_s=round(done["entries"] / wall, 1) if wall > 0 else 0.0,
                user_us_per_msg=round(user / count * 1e6, 1),
                sys_us_per_msg=round(system / count * 1e6, 1),
                cpu_us_per_msg=round((user + system) / count * 1e6, 1),
                reactor_us_per_msg=round(thread / count * 1e6, 1),
            )
            await runner.stopService()
            await transport.stop()
            if args.worker == "spool":
                await store.stop()

    def stopped(result: object) -> None:
        from twisted.python.failure import Failure

        if isinstance(result, Failure):
            out["error"] = f"{result.type.__name__}: {result.getErrorMessage()}"
        if guard.active():
            guard.cancel()
        reactor.stop()

    def give_up() -> None:
        out["error"] = f"gave up: {done['entries']} of {count} delivered in time"
        reactor.stop()

    guard = reactor.callLater(max(deadline - time.monotonic(), 0.1), give_up)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addBoth(stopped))
    reactor.run(installSignalHandlers=False)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    out["ok"] = "error" not in out and done["entries"] == count
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


# -- the parent: sinks, children, rounds -----------------------------------------------


def run_once(sink_path: str, store: str, args: argparse.Namespace,
             profile: str | None = None) -> dict[str, Any]:
    """One run: a fresh sink, one child delivering from *store*, the sink stopped."""
    record: dict[str, Any] = {"store": store, "messages": args.messages}

    def command(port: int, scratch: str) -> list[str]:
        argv = [
            sys.executable, str(pathlib.Path(__file__).resolve()),
            "--worker", store, "--port", str(port), "--scratch", scratch,
            "--messages", str(args.messages), "--size", str(args.size),
            "--timeout", str(max(args.timeout - CHILD_MARGIN, 1.0)),
        ]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if profile:
            argv += ["--profile", profile]
        return argv

    outcome, seen = run_with_sink(sink_path, command, args.timeout)
    record.update(outcome)
    if seen:
        record["sink_messages"] = seen.get("mesg", 0)
        if record.get("ok") and record["sink_messages"] != args.messages:
            record.update(ok=False, error=f"the sink counted {record['sink_messages']}"
                          f" messages of {args.messages}")
    return record


COLUMNS = (
    ("median msgs/s", "msgs_per_s", statistics.median),
    ("min msgs/s", "msgs_per_s", min),
    ("median CPU µs/msg", "cpu_us_per_msg", statistics.median),
    ("min CPU µs/msg", "cpu_us_per_msg", min),
    ("median user", "user_us_per_msg", statistics.median),
    ("median sys", "sys_us_per_msg", statistics.median),
    ("median reactor thread", "reactor_us_per_msg", statistics.median),
    ("min reactor thread", "reactor_us_per_msg", min),
)


def summarise(runs: Sequence[dict[str, Any]], stores: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for store in stores:
        mine = [r for r in runs if r.get("ok") and r["store"] == store]
        row: dict[str, Any] = {"store": store, "runs": len(mine)}
        if mine:
            for title, key, how in COLUMNS:
                row[title] = how(r[key] for r in mine)
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    titles = ["store", "runs", *(title for title, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join("-" * (len(t) + 2) for t in titles) + "|"]
    for row in rows:
        cells = [row["store"], str(row["runs"])]
        cells += [f"{row[t]:.0f}" if t in row else "" for t, _, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="CPU per message of the queue runner and the SMTP transport, relaying"
                    " a filled store to a fresh smtp-sink.")
    p.add_argument("--messages", type=positive, default=3000, metavar="N",
                   help="messages per run (default 3000)")
    p.add_argument("--rounds", type=positive, default=5, help="rounds (default 5)")
    p.add_argument("--stores", default=",".join(STORES),
                   help=f"comma-separated stores to measure (default {','.join(STORES)})")
    p.add_argument("--size", type=message_size, default=1024,
                   help="octets per message, header section included (default 1024)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one run may take before its child is killed (default 120)")
    p.add_argument("--smtp-sink", metavar="PATH",
                   help="the smtp-sink program (default: $SMTP_SINK, PATH, /usr/sbin)")
    p.add_argument("--threads", type=positive, metavar="T",
                   help="the spool's own threads, where its file operations run"
                        " (default: the spool's own default)")
    p.add_argument("--json", metavar="PATH", help="also write every run and the summary here")
    p.add_argument("--profile", metavar="PATH",
                   help="instead of the rounds, one profiled run; cProfile statistics to PATH")
    p.add_argument("--worker", choices=STORES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or set(stores) - set(STORES):
        parser().error(f"--stores: choose from {', '.join(STORES)}")
    sink_path = find_sink(args.smtp_sink)
    if sink_path is None:
        print("smtp-sink not found: install Postfix (Debian: apt-get install postfix)"
              " or give --smtp-sink", file=sys.stderr)
        return 2
    if args.profile:
        record = run_once(sink_path, stores[0], args, os.path.abspath(args.profile))
        print(json.dumps(record))
        return 0 if record.get("ok") else 1
    load_start = os.getloadavg()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "python": sys.version.split()[0],
        "smtp_sink": sink_path,
        "options": {"messages": args.messages, "rounds": args.rounds, "stores": stores,
                    "size": args.size, "timeout": args.timeout, "threads": args.threads},
    }
    runs = []
    for number in range(args.rounds):
        shift = number % len(stores)
        for store in stores[shift:] + stores[:shift]:
            record = run_once(sink_path, store, args)
            record["round"] = number
            runs.append(record)
            state = (f"{record['msgs_per_s']:.0f} msgs/s, {record['cpu_us_per_msg']:.0f} µs"
                     f" CPU/msg ({record['reactor_us_per_msg']:.0f} on the reactor thread)"
                     if record.get("ok") else f"FAILED: {record.get('error')}")
            print(f"round {number + 1}/{args.rounds} {store}: {state}",
                  file=sys.stderr, flush=True)
    load_end = meta["loadavg_end"] = os.getloadavg()
    rows = summarise(runs, stores)
    print(f"{args.messages} messages of {args.size} octets, one recipient each, relayed to"
          f" smtp-sink; {args.rounds} round(s); load average {load_start[0]:.1f} at the"
          f" start, {load_end[0]:.1f} at the end. CPU µs per message.\n")
    print(table(rows))
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        print("\nFailed runs:")
        for r in failed:
            print(f"- round {r['round'] + 1}, {r['store']}: {r.get('error')}")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"meta": meta, "runs": runs, "summary": rows}, indent=2) + "\n",
            encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
How the spool copes with a large deferred queue: startup recovery,
``mailframe queue list`` and ``stats``, and a due-scan.

    .venv/bin/python benchmarks/queue_scale.py [--count 100000] [--small N]
        [--due 0.01] [--batch 20] [--timeout 1800] [--json PATH] [--keep DIR]

Three spools are made side by side: an empty one, one of ``--small``
entries (default a tenth of ``--count``) and one of ``--count`` entries,
every entry deferred, ``--due`` of them (default 1%) due now and the rest
due in 12 to 36 hours. Each entry is written as the spool leaves a message
that has been tried and deferred: ``deferred/ID.msg`` (the message, its
entry as committed and the trailer), with its next attempt as its
modification time, ``env/ID.env`` (the entry after the attempt) and
``env/ID.why`` (the reply that deferred it). The files are written without
``fsync``: the benchmark measures reading a queue, not writing one, and a
durable commit of each of 100,000 entries would take most of an hour.

On each spool, each in a fresh process:

``recover()``
    :meth:`SpoolQueueStore.recover` on the reactor and the store's threads:
    wall time, and how far the process's peak resident set (``VmHWM``) rose
    above its resident set before the call (``VmRSS``, after the imports).
``queue stats``, ``queue list --json``
    the real command, ``python -m mailframe.cli queue ... --queue-dir``:
    wall time from the start of the process to its end (the interpreter's
    start and the imports included), the lines it printed, and its peak
    resident set (``ru_maxrss`` of that child alone, from ``wait4``). The
    output goes to a file, which is checked afterwards: one JSON line per
    entry, every one ``deferred``.
due-scan
    after a ``recover()`` (not timed again), :meth:`SpoolQueueStore.claim`
    of ``--batch`` entries at a time, as the queue runner claims, until a
    claim comes back empty: the time of the first claim, of all of them,
    and the entries claimed, which must be the due ones. Claiming moves
    them into ``active/``, so the due-scan runs last.

The table on stdout has a row per figure and a column per spool. Progress
goes to stderr. The exit status is 1 when a check failed (a count that is
not what was generated, a command that failed or ran out of time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
STATES = ("incoming", "active", "deferred", "hold", "corrupt")
SENDER = "sender@bench.example"
#: Lines of 76 characters in each message's body: about 1 KiB a message.
BODY_LINES = 10
#: Seconds ahead of now between which the entries that are not due are due.
LATER = (12 * 3600.0, 36 * 3600.0)
#: How long ago the entries arrived: between these many seconds.
ARRIVED = (600.0, 3 * 86400.0)
MIB = 1024 * 1024

#: The rows of the table: label, the figure's key, and how it is shown.
ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("entries", "entries", lambda v: f"{v:,}"),
    ("set-up: write the spool, no fsync (s)", "generate_s", lambda v: f"{v:.1f}"),
    ("recover() (s)", "recover_s", lambda v: f"{v:.3f}"),
    ("recover() peak RSS growth (MiB)", "recover_rss_mib", lambda v: f"{v:.1f}"),
    ("queue stats (s)", "stats_s", lambda v: f"{v:.2f}"),
    ("queue stats peak RSS (MiB)", "stats_rss_mib", lambda v: f"{v:.1f}"),
    ("queue list --json (s)", "list_s", lambda v: f"{v:.2f}"),
    ("queue list --json lines", "list_lines", lambda v: f"{v:,}"),
    ("queue list --json µs per entry, beyond the empty queue's time", "list_us_per_entry",
     lambda v: f"{v:.0f}"),
    ("queue list --json peak RSS (MiB)", "list_rss_mib", lambda v: f"{v:.1f}"),
    ("due-scan: due entries claimed", "claimed", lambda v: f"{v:,}"),
    ("due-scan: claims, the last one empty", "claims", lambda v: f"{v:,}"),
    ("due-scan: first claim (ms)", "first_claim_ms", lambda v: f"{v:.1f}"),
    ("due-scan: all claims (s)", "claims_s", lambda v: f"{v:.3f}"),
]


# -- in a child: the work that imports mailframe ---------------------------------------


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status``; ``ru_maxrss`` where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def generate(spool: pathlib.Path, count: int, due: int, seed: int) -> dict[str, Any]:
    """
    Write *count* deferred entries into a new spool, *due* of them due now,
    in the format the spool writes, without ``fsync``.
    """
    import random

    import attrs

    from mailframe.address import Mailbox
    from mailframe.envelope import (
        ClientInfo,
        EntryState,
        Envelope,
        QueuedRecipient,
        QueueEntry,
        RecipientState,
    )
    from mailframe.reply import Reply
    from mailframe.stores._ids import new_queue_id
    from mailframe.stores._serialize import entry_to_json
    from mailframe.stores.spool import _MAGIC, _TRAILER

    started = time.perf_counter()
    for name in ("tmp", "env", *STATES):
        (spool / name).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    now = time.time()
    due_ones = set(rng.sample(range(count), due))
    sender = Mailbox.parse(SENDER)
    client = ClientInfo(address="192.0.2.25", port=42424, helo="client.bench.example",
                        esmtp=True, listener="smtp")
    reply = Reply(451, "4.7.1", "Greylisted, please try again later")
    body = b"".join(b"%-76s\r\n" % (b"line %d of the queue scale benchmark" % n)
                    for n in range(BODY_LINES))
    made: set[str] = set()
    octets = 0

    def write(path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    for number in range(count):
        arrived = now - rng.uniform(*ARRIVED)
        queue_id = new_queue_id(rng, arrived)
        while queue_id in made:
            queue_id = new_queue_id(rng, arrived)
        made.add(queue_id)
        recipient = Mailbox.parse(f"user{number}@remote{number % 97}.example")
        message = (
            f"From: <{SENDER}>\r\nTo: <{recipient}>\r\n"
            f"Message-ID: <{queue_id}@bench.example>\r\nSubject: queue scale\r\n\r\n"
        ).encode() + body
        received = (f"Received: from client.bench.example ([192.0.2.25]) by mx.bench.example"
                    f" with ESMTP id {queue_id}")
        envelope = Envelope(sender, (recipient,), client=client, received_at=arrived,
                            added_headers=(received,))
        committed = QueueEntry.new(queue_id, envelope, arrived, len(message),
                                   EntryState.INCOMING)
        when = now - rng.uniform(0, 3600) if number in due_ones else now + rng.uniform(*LATER)
        attempts = rng.randint(1, 5)
        tried = attrs.evolve(committed, attempts=attempts, recipients=(
            QueuedRecipient(recipient, RecipientState.PENDING, attempts, reply,
                            "mx.remote.example", when),))
        document = entry_to_json(committed)
        path = spool / "deferred" / f"{queue_id}.msg"
        data = message + document + _TRAILER.pack(len(document), _MAGIC)
        write(str(path), data)
        os.utime(path, (when, when))
        write(str(spool / "env" / f"{queue_id}.env"), entry_to_json(tried))
        write(str(spool / "env" / f"{queue_id}.why"), str(reply).encode())
        octets += len(data)
    return {"generate_s": time.perf_counter() - started, "entries": count, "due": due,
            "msg_octets": octets}


def recover_and_claim(spool: pathlib.Path, claim: bool, batch: int) -> dict[str, Any]:
    """
    ``recover()`` the spool on the real reactor; with *claim*, then claim
    every due entry, *batch* at a time.
    """
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from mailframe.stores.spool import SpoolQueueStore

    figures: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        store = SpoolQueueStore(spool, reactor)
        # The store's first thread starts on first use: start it now, with
        # a look for an entry that is not there, so that its stack is not
        # counted as the index's memory.
        await store.get("0")
        rss = _status_kib("VmRSS")
        started = time.perf_counter()
        entries = await store.recover()
        figures["recover_s"] = time.perf_counter() - started
        figures["recovered"] = entries
        figures["recover_rss_mib"] = max(0, _status_kib("VmHWM") - rss) / 1024
        figures["rss_before_mib"] = rss / 1024
        if claim:
            now = reactor.seconds()
            claimed = claims = 0
            first: float | None = None
            started = time.perf_counter()
            while True:
                began = time.perf_counter()
                taken = await store.claim(now, batch, 3600.0)
                if first is None:
                    first = time.perf_counter() - began
                claims += 1
                if not taken:
                    break
                claimed += len(taken)
            figures["claims_s"] = time.perf_counter() - started
            figures["first_claim_ms"] = (first or 0.0) * 1000
            figures["claims"] = claims
            figures["claimed"] = claimed
        await store.stop()

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as stop:
        if stop.code:
            raise
    return figures


def worker_main(args: argparse.Namespace) -> int:
    spool = pathlib.Path(args.spool)
    if args.worker == "generate":
        figures = generate(spool, args.entries, round(args.entries * args.due), args.seed)
    else:
        figures = recover_and_claim(spool, args.worker == "claim", args.batch)
    print(json.dumps(figures))
    return 0


# -- in the parent ----------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of a child: it imports mailframe from this working tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_child(argv: Sequence[str], stdout: pathlib.Path, timeout: float) -> dict[str, Any]:
    """
    Run *argv* with its stdout in a file; its exit status, wall time, peak
    resident set (of this child alone, from ``wait4``) and stderr.
    """
    with open(stdout, "wb") as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=child_env(), cwd=REPO)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        took = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        errors = err.read().decode("utf-8", "replace")
    # ru_maxrss is in KiB on Linux.
    return {"status": process.returncode, "s": took, "rss_mib": usage.ru_maxrss / 1024,
            "stderr": errors, "timed_out": took >= timeout}


def run_worker(kind: str, spool: pathlib.Path, args: argparse.Namespace,
               scratch: pathlib.Path, count: int = 0) -> dict[str, Any]:
    out = scratch / f"{kind}.json"
    argv = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", kind,
            "--spool", str(spool), "--entries", str(count), "--due", str(args.due),
            "--seed", str(args.seed), "--batch", str(args.batch)]
    result = run_child(argv, out, args.timeout)
    if result["status"] != 0:
        raise Failed(f"{kind} on {spool.name} failed ({result['status']}): {result['stderr']}")
    figures: dict[str, Any] = json.loads(out.read_text(encoding="utf-8").splitlines()[-1])
    return figures


def run_command(spool: pathlib.Path, argv: Sequence[str], args: argparse.Namespace,
                out: pathlib.Path) -> dict[str, Any]:
    """Run ``mailframe queue ARGV --queue-dir SPOOL`` with its output in *out*."""
    result = run_child([sys.executable, "-m", "mailframe.cli", "queue", *argv,
                        "--queue-dir", str(spool)], out, args.timeout)
    if result["status"] != 0:
        what = "ran out of time" if result["timed_out"] else f"failed ({result['status']})"
        raise Failed(f"queue {' '.join(argv)} on {spool.name} {what}: {result['stderr']}")
    return result


class Failed(Exception):
    """A check failed, or a step did not finish."""


def measure(spool: pathlib.Path, count: int, args: argparse.Namespace,
            scratch: pathlib.Path) -> dict[str, Any]:
    """Every figure for one spool of *count* entries."""
    due = round(count * args.due)
    figures: dict[str, Any] = {}

    def say(what: str) -> None:
        print(f"{count:,} entries: {what}", file=sys.stderr, flush=True)

    figures.update(run_worker("generate", spool, args, scratch, count))
    say(f"spool written in {figures['generate_s']:.1f} s")

    stats = run_command(spool, ["stats", "--json"], args, scratch / "stats.json")
    counted = json.loads((scratch / "stats.json").read_text(encoding="utf-8"))
    if counted["counts"]["deferred"] != count or counted["total"] != count:
        raise Failed(f"queue stats counted {counted}, not {count} deferred entries")
    figures["stats_s"], figures["stats_rss_mib"] = stats["s"], stats["rss_mib"]
    say(f"queue stats in {stats['s']:.2f} s")

    listing = scratch / "list.jsonl"
    result = run_command(spool, ["list", "--json"], args, listing)
    lines = 0
    with open(listing, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if entry["state"] != "deferred" or entry["attempts"] < 1:
                raise Failed(f"queue list printed {line!r}")
            lines += 1
    listing.unlink()
    if lines != count:
        raise Failed(f"queue list --json printed {lines} lines, not {count}")
    figures["list_s"], figures["list_rss_mib"] = result["s"], result["rss_mib"]
    figures["list_lines"] = lines
    say(f"queue list --json in {result['s']:.2f} s")

    recovered = run_worker("recover", spool, args, scratch)
    if recovered["recovered"] != count:
        raise Failed(f"recover() found {recovered['recovered']} entries, not {count}")
    figures.update(recovered)
    say(f"recover() in {recovered['recover_s']:.3f} s")

    scanned = run_worker("claim", spool, args, scratch)
    if scanned["claimed"] != due:
        raise Failed(f"the due-scan claimed {scanned['claimed']} entries, not {due}")
    figures.update({k: v for k, v in scanned.items() if not k.startswith(("recover", "rss"))})
    say(f"due-scan of {due:,} due entries in {scanned['claims_s']:.3f} s")
    return figures


def table(columns: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: a row per figure, a column per spool."""
    head = ["figure", *(f"{c['entries']:,} entries" for c in columns)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" + "--:|" * len(columns)]
    for label, key, shown in ROWS:
        cells = [shown(c[key]) if key in c else "" for c in columns]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def filesystem(path: pathlib.Path) -> str:
    """The type of the file system that holds *path*, as ``stat -f`` names it."""
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    small = args.small if args.small is not None else max(args.count // 10, 1)
    counts = sorted({0, min(small, args.count), args.count})
    root = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-queue-scale-", dir=args.keep))
    load_start = os.getloadavg()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "filesystem": filesystem(root),
        "loadavg_start": load_start,
        "options": {"count": args.count, "small": small, "due": args.due, "batch": args.batch,
                    "seed": args.seed},
    }
    columns: list[dict[str, Any]] = []
    failure: str | None = None
    try:
        for count in counts:
            spool = root / f"spool-{count}"
            scratch = root / f"scratch-{count}"
            scratch.mkdir()
            try:
                figures = measure(spool, count, args, scratch)
            except Failed as error:
                failure = str(error)
                break
            if count and columns:
                # The command's own start (interpreter, imports) is left out.
                beyond = figures["list_s"] - columns[0]["list_s"]
                figures["list_us_per_entry"] = beyond / count * 1e6
            columns.append(figures)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    meta["loadavg_end"] = os.getloadavg()
    print(f"Deferred entries, {args.due:.0%} of them due, on {meta['filesystem']} with a warm"
          f" page cache; {meta['cpus']} CPUs, Python {meta['python']}, load average"
          f" {load_start[0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the end.\n")
    print(table(columns))
    if failure is not None:
        print(f"\nFailed: {failure}")
    if args.keep is not None:
        print(f"\nThe spools are kept in {root}")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"meta": meta, "spools": columns, "failure": failure}, indent=2) + "\n",
            encoding="utf-8")
    return 1 if failure is not None else 0


def count_of(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Startup recovery, mailframe queue list and stats, and a due-scan, on"
                    " spools of deferred entries.")
    p.add_argument("--count", type=count_of, default=100_000, metavar="N",
                   help="entries in the large spool (default 100000)")
    p.add_argument("--small", type=count_of, metavar="N",
                   help="entries in the small spool (default a tenth of --count)")
    p.add_argument("--due", type=fraction, default=0.01, metavar="FRACTION",
                   help="the fraction of entries due now (default 0.01)")
    p.add_argument("--batch", type=count_of, default=20,
                   help="entries per claim in the due-scan (default 20, the runner's)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated queue ids")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one step may take before it is killed (default 1800)")
    p.add_argument("--json", metavar="PATH", help="also write every figure here")
    p.add_argument("--keep", metavar="DIR",
                   help="make the spools under DIR and keep them (default: a temporary"
                        " directory, removed at the end)")
    p.add_argument("--worker", choices=("generate", "recover", "claim"), help=argparse.SUPPRESS)
    p.add_argument("--spool", help=argparse.SUPPRESS)
    p.add_argument("--entries", type=int, default=0, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
The spool's CPU per message, in-process: what its commit path costs beside
the system calls that the commit cannot do without.

    .venv/bin/python benchmarks/spool_commit.py [--messages 3000]
        [--writers 20] [--rounds 5] [--size 1024] [--threads T] [--no-claim]
        [--dir DIR] [--json PATH]

Each round, in this order (so that the variants are interleaved, and a
noisy moment of a shared machine falls on all of them alike):

``spool``
    a fresh :class:`~mailframe.stores.SpoolQueueStore` in a temporary
    directory, on the real reactor and its real threads; ``--writers``
    writers at a time, each ``open_writer()``, one ``write`` of
    ``--size`` octets and ``commit(envelope, hold=...)``, the next writer
    starting as one commit fires, until ``--messages`` have committed:
    what ``twistd -n mailframe --hold`` asks of the spool.
``syncfs``
    the same with the spool's ``sync = "filesystem"``: the messages that
    commit together share one ``syncfs`` instead of an ``fsync`` each
    (Linux 5.8 or later; left out elsewhere). ``syncfs`` writes out the
    whole file system, so a busy neighbour on it costs this variant more.
``raw``
    the same system calls made straight from ``--writers`` plain Python
    threads, with nothing around them: for each message ``open``
    (``O_EXCL``), ``write``, ``fsync``, ``close``, ``rename`` into
    ``hold/``, and an ``fsync`` of ``hold/`` every second message. The
    difference between ``spool`` and ``raw`` is the spool's plumbing:
    Deferreds, thread hops, waking the reactor, building the entry.
``claim``
    (unless ``--no-claim``) the queue runner's side, on a spool holding
    ``--messages`` committed entries (committed first, not timed):
    ``--writers`` loops, each ``claim(now, 1, lease)`` then
    ``record(delivered)``, which removes the entry's files, until the
    spool is empty.

The figures are the process's user and system CPU time (``os.times()``)
over the messages, in µs per message; with the reactor idle while the
``raw`` threads run, the process's time is theirs. ``fsyncs/msg`` and ``dir
fsyncs/msg`` are counted by the store (its ``stats_fsyncs`` and
``stats_dir_fsyncs``). The table gives the median over the rounds, and the
minimum beside it. Speed on a shared machine varies from run to run:
compare variants within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

# Import mailframe from this working tree.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attrs
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred

from mailframe.address import Mailbox
from mailframe.envelope import Envelope, QueueEntry, RecipientState
from mailframe.stores import SpoolQueueStore
from mailframe.stores._syncfs import load_syncfs
from mailframe.stores.spool import SYNC_FILE, SYNC_FILESYSTEM

_Run = dict[str, float]


def message(size: int) -> bytes:
    head = b"Received: from bench.example\r\nSubject: spool benchmark\r\n\r\n"
    return head + b"x" * max(size - len(head), 0)


def envelope(number: int) -> Envelope:
    return Envelope(
        sender=Mailbox.parse("sender@bench.example"),
        recipients=(Mailbox.parse(f"rcpt{number}@bench.example"),),
        received_at=time.time(),
    )


def figures(before: os.times_result, after: os.times_result, count: int) -> _Run:
    elapsed = after.elapsed - before.elapsed
    return {
        "user_us": (after.user - before.user) / count * 1e6,
        "sys_us": (after.system - before.system) / count * 1e6,
        "msgs_s": count / elapsed if elapsed > 0 else 0.0,
    }


def run_loops(count: int, loops: int, one: Callable[[int], Deferred[Any]]) -> Deferred[None]:
    """Run *one(number)* for numbers below *count*, *loops* at a time; fire when all are done."""
    done: Deferred[None] = Deferred()
    state = {"next": 0, "finished": 0}

    def start() -> None:
        number = state["next"]
        state["next"] += 1
        one(number).addCallbacks(finished, failed)

    def finished(_: object) -> None:
        state["finished"] += 1
        if state["finished"] == count:
            done.callback(None)
        elif state["next"] < count:
            start()

    def failed(failure: Any) -> None:
        if not done.called:
            done.errback(failure)

    for _ in range(min(loops, count)):
        start()
    return done


@defer.inlineCallbacks
def spool_round(
    base: str, count: int, writers: int, data: bytes, hold: bool, threads: int | None,
    sync: str = SYNC_FILE,
) -> Any:
    """Commit *count* messages; return the figures and the recovered store."""
    kwargs: dict[str, Any] = {"sync": sync}
    if threads is not None:
        kwargs["threads"] = threads
    store = SpoolQueueStore(os.path.join(base, "spool"), reactor, min_free=0, **kwargs)
    yield store.recover()
    envelopes = [envelope(n) for n in range(count)]

    def one(number: int) -> Deferred[str]:
        writer = store.open_writer()
        writer.write(data)
        return writer.commit(envelopes[number], hold="benchmark" if hold else None)

    before = os.times()
    yield run_loops(count, writers, one)
    after = os.times()
    run = figures(before, after, count)
    run["fsyncs"] = store.stats_fsyncs / count
    run["dir_fsyncs"] = store.stats_dir_fsyncs / count
    run["syncfs"] = store.stats_syncfs / count
    return run, store


@defer.inlineCallbacks
def claim_round(
    base: str, count: int, writers: int, data: bytes, threads: int | None
) -> Any:
    """Commit *count* messages (untimed), then claim and remove each."""
    _, store = yield spool_round(base, count, writers, data, False, threads)
    fsyncs, dir_fsyncs = store.stats_fsyncs, store.stats_dir_fsyncs

    @defer.inlineCallbacks
    def one(_: int) -> Any:
        entries = yield store.claim(reactor.seconds(), 1, 300.0)
        for entry in entries:
            yield store.record(delivered(entry))

    before = os.times()
    yield run_loops(count, writers, one)
    after = os.times()
    left = yield store.stats()
    if sum(n for _, n in left.counts):
        raise AssertionError(f"entries left after the claim round: {left}")
    yield store.stop()
    run = figures(before, after, count)
    run["fsyncs"] = (store.stats_fsyncs - fsyncs) / count
    run["dir_fsyncs"] = (store.stats_dir_fsyncs - dir_fsyncs) / count
    return run


def delivered(entry: QueueEntry) -> QueueEntry:
    """*entry* with every recipient delivered, as the queue runner records it."""
    recipients = tuple(
        attrs.evolve(r, state=RecipientState.DELIVERED, attempts=r.attempts + 1)
        for r in entry.recipients
    )
    return attrs.evolve(entry, recipients=recipients, attempts=entry.attempts + 1)


def raw_round(base: str, count: int, writers: int, data: bytes) -> _Run:
    """The commit's system calls from plain threads, with no spool around them."""
    tmp, hold = os.path.join(base, "tmp"), os.path.join(base, "hold")
    os.makedirs(tmp)
    os.makedirs(hold)
    fsyncs = [0, 0]
    lock = threading.Lock()

    def work(first: int) -> None:
        files = dirs = 0
        for number in range(first, count, writers):
            path = os.path.join(tmp, f"{number}.msg")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.rename(path, os.path.join(hold, f"{number}.msg"))
            files += 1
            if number % 2 == 0:
                fd = os.open(hold, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                os.fsync(fd)
                os.close(fd)
                dirs += 1
        with lock:
            fsyncs[0] += files + dirs
            fsyncs[1] += dirs

    threads = [threading.Thread(target=work, args=(i,), name=f"raw-{i}") for i in range(writers)]
    before = os.times()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.times()
    run = figures(before, after, count)
    run["fsyncs"] = fsyncs[0] / count
    run["dir_fsyncs"] = fsyncs[1] / count
    return run


@defer.inlineCallbacks
def main(options: argparse.Namespace) -> Any:
    data = message(options.size)
    # The entry JSON that the spool appends is written by the raw threads
    # too, so that both write as many octets.
    raw_data = data + b"{" + b"j" * 400 + b"}"
    runs: dict[str, list[_Run]] = {"spool": [], "raw": []}
    if load_syncfs()[0] is not None:
        runs["syncfs"] = []
    if options.claim:
        runs["claim"] = []
    for number in range(options.rounds):
        for variant in runs:
            base = tempfile.mkdtemp(prefix="mailframe-spoolbench-", dir=options.dir)
            try:
                if variant in ("spool", "syncfs"):
                    run, store = yield spool_round(
                        base, options.messages, options.writers, data, True, options.threads,
                        SYNC_FILESYSTEM if variant == "syncfs" else SYNC_FILE,
                    )
                    yield store.stop()
                elif variant == "raw":
                    run = raw_round(base, options.messages, options.writers, raw_data)
                else:
                    run = yield claim_round(
                        base, options.messages, options.writers, data, options.threads
                    )
            finally:
                shutil.rmtree(base, ignore_errors=True)
            runs[variant].append(run)
            print(f"round {number + 1} {variant}: "
                  + " ".join(f"{k}={v:.1f}" for k, v in run.items()), file=sys.stderr)
    print(table(runs, options))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as f:
            json.dump({"options": vars(options), "runs": runs}, f, indent=2)


def table(runs: dict[str, list[_Run]], options: argparse.Namespace) -> str:
    lines = [
        f"spool commit: {options.messages} messages of {options.size} octets,"
        f" {options.writers} writers, {options.rounds} rounds,"
        f" spool threads {options.threads or 'default'}; median (min)",
        "",
        "| variant | user µs/msg | sys µs/msg | msgs/s | fsyncs/msg | dir fsyncs/msg"
        " | syncfs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, found in runs.items():
        cells = []
        for key in ("user_us", "sys_us", "msgs_s", "fsyncs", "dir_fsyncs", "syncfs"):
            values = [run.get(key, 0.0) for run in found]
            best = max(values) if key == "msgs_s" else min(values)
            if key in ("fsyncs", "dir_fsyncs", "syncfs"):
                cells.append(f"{statistics.median(values):.2f}")
            else:
                cells.append(f"{statistics.median(values):.0f} ({best:.0f})")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    spool, raw = runs["spool"], runs["raw"]
    plumbing = [
        (s["user_us"] + s["sys_us"]) - (r["user_us"] + r["sys_us"])
        for s, r in zip(spool, raw, strict=True)
    ]
    lines.append("")
    median = statistics.median(plumbing)
    lines.append(f"plumbing (spool - raw, user+sys µs/msg): median {median:.0f}")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=3000, help="messages per round")
    parser.add_argument("--writers", type=int, default=20, help="concurrent writers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="octets per message")
    parser.add_argument("--threads", type=int, default=None,
                        help="the spool's threads (default: the store's default)")
    parser.add_argument("--no-claim", dest="claim", action="store_false",
                        help="leave out the claim and remove round")
    parser.add_argument("--dir", default=None, help="where the temporary spools go")
    parser.add_argument("--json", default=None, help="also write every run to this file")
    options = parser.parse_args(argv)
    if options.messages < 1 or options.writers < 1 or options.rounds < 1:
        parser.error("--messages, --writers and --rounds must be positive")
    return options


def run(argv: list[str]) -> int:
    options = parse(argv)
    status = [1]

    def ok(_: object) -> None:
        status[0] = 0

    def failed(failure: Any) -> None:
        print(failure.getTraceback(), file=sys.stderr)

    def start() -> None:
        main(options).addCallbacks(ok, failed).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return status[0]


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

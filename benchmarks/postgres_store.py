#!/usr/bin/env python3
"""
What the PostgreSQL queue store costs: sealed commits, claims and records,
and one large message.

    .venv/bin/python benchmarks/postgres_store.py [--dsn DSN] [--messages 2000]
        [--concurrency 50] [--size 4096] [--large-mb 50] [--pool-size 10]

Without ``--dsn`` it starts a throwaway PostgreSQL server from Debian's
``postgresql`` package (as the tests do: tests/pg_support.py, as root) and
stops it at the end. With ``--dsn`` the database must have the schema
(``mailframe db upgrade``); the benchmark leaves its entries deleted.

Phases, each on the global reactor with the store's own thread pool:

commit
    ``--messages`` messages of ``--size`` octets, ``--concurrency`` of them
    being written at once, each sealed by its own commit (with
    ``synchronous_commit`` on): messages a second, and the CPU time of this
    process (reactor and store threads) per message.
claim + record
    claims of 100 entries at a time, each entry renewed twice (as before
    the data and before the final dot) and recorded as delivered (which
    deletes it): entries a second and CPU per entry.
large
    one message of ``--large-mb`` MiB written through a producer that
    honours pauses: MiB a second, and the chunks it became.

The table goes to stdout; the exit status is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(reactor: Any, options: argparse.Namespace) -> int:
    import attrs
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import deferLater

    from mailframe.envelope import RecipientState
    from mailframe.stores.postgres import PostgresQueueStore
    from mailframe.testing._fakes import envelope

    store = PostgresQueueStore(options.dsn, reactor, pool_size=options.pool_size,
                               lease=600.0, node="bench")
    await store.recover()
    env = envelope("sender@example.org", "alice@example.com")
    body = (b"Subject: bench\r\n\r\n" + b"x" * options.size)[: options.size]
    rows = []
    failed = False

    # -- commit ------------------------------------------------------------------
    next_message = 0

    async def writer_loop() -> None:
        nonlocal next_message
        while next_message < options.messages:
            next_message += 1
            writer = store.open_writer()
            writer.write(body)
            await writer.commit(env)

    start, used = time.monotonic(), cpu()
    await gatherResults([Deferred.fromCoroutine(writer_loop())
                         for _ in range(options.concurrency)])
    elapsed, spent = time.monotonic() - start, cpu() - used
    stats = await store.stats()
    if sum(count for _, count in stats.counts) != options.messages:
        print(f"expected {options.messages} entries, found {stats.counts}", file=sys.stderr)
        failed = True
    rows.append(("commit", options.messages, elapsed, spent))

    # -- claim + record ------------------------------------------------------------
    start, used = time.monotonic(), cpu()
    done = 0
    while True:
        claimed = await store.claim(reactor.seconds(), 100, 600)
        if not claimed:
            break

        async def deliver(entry: Any) -> None:
            await store.renew(entry.queue_id, 600)
            await store.renew(entry.queue_id, 600)
            recipients = tuple(attrs.evolve(r, state=RecipientState.DELIVERED)
                               for r in entry.recipients)
            await store.record(attrs.evolve(entry, recipients=recipients))

        await gatherResults([Deferred.fromCoroutine(deliver(e)) for e in claimed])
        done += len(claimed)
    elapsed, spent = time.monotonic() - start, cpu() - used
    if done != options.messages:
        print(f"claimed {done} of {options.messages}", file=sys.stderr)
        failed = True
    rows.append(("claim + record", done, elapsed, spent))

    # -- large ---------------------------------------------------------------------
    class Producer:
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    total = options.large_mb * 1024 * 1024
    piece = b"y" * 65536
    writer = store.open_writer()
    producer = Producer()
    writer.registerProducer(producer, True)
    start, used = time.monotonic(), cpu()
    sent = 0
    while sent < total:
        while producer.paused:
            await deferLater(reactor, 0.001, lambda: None)
        writer.write(piece)
        sent += len(piece)
    queue_id = await writer.commit(env)
    large_elapsed = time.monotonic() - start
    writer.unregisterProducer()
    entry = await store.get(queue_id)
    if entry is None or entry.size != total:
        print(f"the large message is {entry and entry.size} octets", file=sys.stderr)
        failed = True
    await store.delete(queue_id)
    await store.stop()

    print(f"{'phase':<16} {'items':>6} {'seconds':>8} {'per second':>11} {'CPU µs each':>12}")
    for name, count, elapsed, spent in rows:
        print(f"{name:<16} {count:>6} {elapsed:>8.2f} {count / elapsed:>11.0f}"
              f" {spent / count * 1e6:>12.0f}")
    print(f"{'large':<16} {options.large_mb:>4}MB {large_elapsed:>8.2f}"
          f" {options.large_mb / large_elapsed:>8.1f}MB/s"
          f" {total // store.chunk_size:>6} chunks")
    load = os.getloadavg()
    print(f"pool_size={options.pool_size} concurrency={options.concurrency}"
          f" size={options.size} load average {load[0]:.1f}")
    return 1 if failed else 0


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=10)
    options = parser.parse_args()
    if options.dsn is None:
        from tests.pg_support import postgres

        options.dsn = postgres().new_database()
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    status: list[int] = []

    async def go(reactor: Any) -> None:
        status.append(await main(reactor, options))

    try:
        react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    except SystemExit:
        pass
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(run())

"""
The ``mailframe queue`` command: each subcommand on a memory store given to
it through its store opener, with a fake clock; and the real command, in a
child process, on a spool that a running store in this process shares.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe import _queuecmd
from mailframe._queuecmd import (
    Console,
    QueueCommandError,
    check_arguments,
    format_age,
    open_store,
    run,
)
from mailframe.address import Mailbox
from mailframe.cli import _parser, main
from mailframe.envelope import ClientInfo, DSNOptions, EntryState, QueueEntry
from mailframe.reply import Reply
from mailframe.stores import MemoryQueueStore, SpoolQueueStore
from mailframe.testing import envelope

REPO = pathlib.Path(__file__).resolve().parent.parent
#: The time of the fake clock when a test starts: 2023-11-14T22:13:20Z.
START = 1_700_000_000.0
MESSAGE = b"Received: from client.example\r\nSubject: hello\r\n\r\nThe body.\r\n"
LATER = Reply(451, "4.4.1", "try again later")


def parse(*argv: str) -> argparse.Namespace:
    """The arguments of ``mailframe queue ARGV``, checked."""
    arguments = _parser().parse_args(["queue", *argv])
    check_arguments(arguments)
    return arguments


def temp_dir(test: SynchronousTestCase) -> pathlib.Path:
    """A directory that is removed after *test* (trial's mktemp() is relative to the cwd)."""
    path = tempfile.mkdtemp(prefix="mailframe-queue-test-")
    test.addCleanup(shutil.rmtree, path, True)
    return pathlib.Path(path)


def usage_error(*argv: str) -> str:
    """Run ``mailframe queue ARGV``, which must be a usage error; its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["queue", *argv])
        except SystemExit as exit:
            assert exit.code == 2, exit.code
            return err.getvalue()
    raise AssertionError(f"{argv} was accepted")


class Spy:
    """
    A store that passes every call on to *store*, records the pages asked
    for, and fails the test if the command recovers the store or claims.
    """

    def __init__(self, store: MemoryQueueStore, out: io.StringIO) -> None:
        self._store = store
        self._out = out
        #: (state, after, limit, length of stdout so far) for each list().
        self.pages: list[tuple[Any, Any, int, int]] = []

    def list(self, state: Any = None, after: str | None = None, limit: int = 1000) -> Any:
        self.pages.append((state, after, limit, len(self._out.getvalue())))
        return self._store.list(state, after=after, limit=limit)

    def recover(self) -> Any:
        raise AssertionError("the queue command recovered the store")

    def claim(self, *args: object) -> Any:
        raise AssertionError("the queue command claimed entries")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class QueueCommandTests(SynchronousTestCase):
    """Every subcommand, on a memory store, with a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryQueueStore(self.clock, random.Random(7))
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.spy = Spy(self.store, self.out)

    # -- helpers --------------------------------------------------------------

    def queue(
        self,
        sender: str = "alice@example.com",
        *recipients: str,
        message: bytes = MESSAGE,
        hold: str | None = None,
        **fields: Any,
    ) -> str:
        """Commit a message now; its queue id."""
        fields.setdefault("received_at", self.clock.seconds())
        writer = self.store.open_writer()
        writer.write(message)
        committed = writer.commit(envelope(sender, *recipients, **fields), hold=hold)
        return str(self.successResultOf(committed))

    def attempt(self, queue_id: str, reply: Reply = LATER, delay: float = 600) -> QueueEntry:
        """
        Claim every due entry, as a runner would, and give *queue_id* one
        failed attempt for its first recipient; defer it for *delay*
        seconds. The other entries claimed are deferred and due at once.
        """
        now = self.clock.seconds()
        claimed = self.successResultOf(self.store.claim(now, 1000, 60))
        for entry in claimed:
            if entry.queue_id != queue_id:
                self.successResultOf(self.store.reschedule(entry.queue_id, now, ""))
                continue
            first = attrs.evolve(
                entry.recipients[0],
                attempts=1,
                reply=reply,
                remote="mx.example.net",
                next_attempt=now + delay,
            )
            attempted = attrs.evolve(entry, recipients=(first, *entry.recipients[1:]), attempts=1)
            self.successResultOf(self.store.record(attempted))
            self.successResultOf(self.store.reschedule(queue_id, now + delay, str(reply)))
        found = self.successResultOf(self.store.get(queue_id))
        assert found is not None
        return found

    def command(self, *argv: str) -> int:
        """Run ``mailframe queue ARGV --queue-dir spool`` on the spy store."""
        arguments = parse(*argv, "--queue-dir", "spool")
        console = Console(self.out, self.err)

        def opener(_arguments: argparse.Namespace, _reactor: object) -> Any:
            return self.spy

        return self.successResultOf(run(arguments, self.clock, console, opener))

    def entry(self, queue_id: str) -> QueueEntry | None:
        return self.successResultOf(self.store.get(queue_id))

    # -- the command line -----------------------------------------------------

    def test_store_options_before_or_after(self) -> None:
        for argv in [
            ["--queue-dir", "spool", "list", "--json"],
            ["list", "--json", "--queue-dir", "spool"],
            ["list", "--queue-dir", "spool", "--json"],
        ]:
            arguments = parse(*argv)
            self.assertEqual((arguments.queue_dir, arguments.config), ("spool", None), argv)
            self.assertTrue(arguments.json)
        for argv in [
            ["--config", "mf.toml", "delete", "A", "B"],
            ["delete", "A", "B", "--config", "mf.toml"],
            ["delete", "--config", "mf.toml", "A", "B"],
        ]:
            arguments = parse(*argv)
            self.assertEqual((arguments.queue_dir, arguments.config), (None, "mf.toml"), argv)
            self.assertEqual(arguments.queue_ids, ["A", "B"])

    def test_usage_errors(self) -> None:
        self.assertIn("give --queue-dir DIR or --config FILE", usage_error("list"))
        self.assertIn("not both", usage_error("--queue-dir", "q", "list", "--config", "c"))
        self.assertIn("not both", usage_error("stats", "--queue-dir", "q", "--config", "c"))
        self.assertIn("or --all", usage_error("delete", "--queue-dir", "q"))
        self.assertIn("or --all", usage_error("delete", "A", "--all", "--queue-dir", "q"))
        self.assertIn(
            "--state goes with --all",
            usage_error("delete", "A", "--state", "hold", "--queue-dir", "q"),
        )
        self.assertIn("invalid choice", usage_error("list", "--state", "lost", "--queue-dir", "q"))
        self.assertIn("required", usage_error("--queue-dir", "q"))
        self.assertIn("ID", usage_error("hold", "--queue-dir", "q"))

    # -- list -----------------------------------------------------------------

    def test_list_table(self) -> None:
        deferred = self.queue("alice@example.com", "bob@example.org", "carol@example.net")
        self.attempt(deferred)
        held = self.queue("", "postmaster@example.com", hold="suspicious")
        self.clock.advance(3 * 3600 + 12 * 60 + 5)
        self.assertEqual(self.command("list"), 0)
        size = len(MESSAGE)
        rows = {
            deferred: [
                f"{deferred}  deferred   3h12m  {size:>9}  alice@example.com",
                f"  ({LATER})",
                f"    bob@example.org    pending    1 attempt    {LATER}",
                "    carol@example.net  pending",
                "",
            ],
            held: [
                f"{held}  hold       3h12m  {size:>9}  <>",
                "  (suspicious)",
                "    postmaster@example.com  pending",
                "",
            ],
        }
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                "QUEUE ID            STATE        AGE       SIZE  SENDER",
                *rows[min(rows)],
                *rows[max(rows)],
                f"-- 2 entries, {2 * size} octets",
            ],
        )
        self.assertEqual(self.err.getvalue(), "")

    def test_list_empty(self) -> None:
        self.assertEqual(self.command("list"), 0)
        self.assertEqual(self.out.getvalue().splitlines()[1:], ["-- 0 entries, 0 octets"])
        self.assertEqual(self.command("list", "--json"), 0)

    def test_list_json(self) -> None:
        deferred = self.queue("alice@example.com", "bob@example.org", "carol@example.net")
        self.attempt(deferred)
        bounce = self.queue("", "alice@example.com")
        self.assertEqual(self.command("list", "--json"), 0)
        lines = self.out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertEqual(line, json.dumps(json.loads(line), sort_keys=True))
        listed = {item["id"]: item for item in map(json.loads, lines)}
        self.assertEqual(list(listed), sorted(listed))
        first, second = listed[deferred], listed[bounce]
        self.assertEqual(
            first,
            {
                "id": deferred,
                "state": "deferred",
                "arrival": START,
                "size": len(MESSAGE),
                "sender": "alice@example.com",
                "reason": str(LATER),
                "attempts": 1,
                "next_attempt": START + 600,
                "recipients": [
                    {
                        "address": "bob@example.org",
                        "state": "pending",
                        "attempts": 1,
                        "reason": "451 4.4.1 try again later",
                        "remote": "mx.example.net",
                        "next_attempt": START + 600,
                    },
                    {
                        "address": "carol@example.net",
                        "state": "pending",
                        "attempts": 0,
                        "reason": "",
                        "remote": None,
                        "next_attempt": START,
                    },
                ],
            },
        )
        self.assertEqual((second["id"], second["state"]), (bounce, "incoming"))
        self.assertEqual(second["sender"], "")
        self.assertEqual(self.err.getvalue(), "")

    def test_list_state(self) -> None:
        self.queue()
        held = self.queue(hold="operator")
        self.assertEqual(self.command("list", "--json", "--state", "hold"), 0)
        listed = [json.loads(line)["id"] for line in self.out.getvalue().splitlines()]
        self.assertEqual(listed, [held])
        self.assertEqual(self.spy.pages[0][0], EntryState.HOLD)

    def test_list_streams_page_by_page(self) -> None:
        """Each page is printed before the next is asked for."""
        self.patch(_queuecmd, "PAGE_SIZE", 2)
        ids = sorted(self.queue() for _ in range(5))
        self.assertEqual(self.command("list", "--json"), 0)
        self.assertEqual(
            [(after, limit) for _, after, limit, _ in self.spy.pages],
            [(None, 2), (ids[1], 2), (ids[3], 2), (ids[4], 2)],
        )
        printed = [length for _, _, _, length in self.spy.pages]
        self.assertEqual(printed[0], 0)
        self.assertTrue(printed[0] < printed[1] < printed[2] < printed[3])
        listed = [json.loads(line)["id"] for line in self.out.getvalue().splitlines()]
        self.assertEqual(listed, ids)

    def test_list_escapes_control_characters(self) -> None:
        queue_id = self.queue()
        self.successResultOf(self.store.hold(queue_id, "bad\x1b[2Jreason"))
        self.assertEqual(self.command("list"), 0)
        self.assertIn("  (bad\\x1b[2Jreason)", self.out.getvalue().splitlines())

    # -- show -----------------------------------------------------------------

    def test_show(self) -> None:
        bob = Mailbox.parse("bob@example.org")
        queue_id = self.queue(
            "alice@example.com",
            "bob@example.org",
            client=ClientInfo(
                "192.0.2.7",
                40123,
                "client.example",
                True,
                "TLSv1.3",
                "alice",
                "client.example",
                "submission",
            ),
            ret="HDRS",
            envid="env-1",
            dsn=((bob, DSNOptions(frozenset({"FAILURE", "SUCCESS"}), "rfc822;b@example.org")),),
            added_headers=("X-Spam: no",),
        )
        self.attempt(queue_id)
        self.clock.advance(60)
        self.assertEqual(self.command("show", queue_id), 0)
        self.assertEqual(
            self.out.getvalue(),
            f"Queue ID:      {queue_id}\n"
            "State:         deferred\n"
            f"Reason:        {LATER}\n"
            "Arrived:       2023-11-14T22:13:20Z (1m ago)\n"
            f"Size:          {len(MESSAGE)} octets\n"
            "Attempts:      1\n"
            "Next attempt:  2023-11-14T22:23:20Z (in 9m)\n"
            "Sender:        alice@example.com\n"
            "Client:        client.example [192.0.2.7]:40123, EHLO client.example, TLSv1.3,"
            " authenticated as alice, listener submission\n"
            "Body:          7BIT\n"
            "RET:           HDRS\n"
            "ENVID:         env-1\n"
            "Recipients:\n"
            f"  bob@example.org  pending    1 attempt    {LATER}\n"
            "      from mx.example.net; next attempt 2023-11-14T22:23:20Z (in 9m);"
            " NOTIFY=FAILURE,SUCCESS; ORCPT=rfc822;b@example.org\n"
            "Header fields to add:\n"
            "  X-Spam: no\n"
            "\n"
            "Received: from client.example\r\nSubject: hello\r\n\r\n",
        )

    def test_show_body(self) -> None:
        queue_id = self.queue()
        self.assertEqual(self.command("show", "--body", queue_id), 0)
        self.assertTrue(self.out.getvalue().endswith("\n\n" + MESSAGE.decode()))

    def test_show_cuts_a_long_header_section(self) -> None:
        self.patch(_queuecmd, "MAX_HEADER_SECTION", 40)
        queue_id = self.queue(message=b"Subject: " + b"x" * 100 + b"\r\n\r\nbody\r\n")
        self.assertEqual(self.command("show", queue_id), 0)
        self.assertTrue(
            self.out.getvalue().endswith(
                "\n\nSubject: " + "x" * 31 + "[header section cut after 40 octets]\n"
            )
        )

    def test_show_no_entry(self) -> None:
        self.assertEqual(self.command("show", "01NOSUCHENTRY"), 1)
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "mailframe queue: no entry 01NOSUCHENTRY\n")

    # -- flush ----------------------------------------------------------------

    def test_flush(self) -> None:
        woken: list[None] = []
        self.store.notify_on_change(lambda: woken.append(None))
        queue_id = self.queue()
        self.attempt(queue_id, delay=3600)
        held = self.queue(hold="operator")
        now = self.clock.seconds()
        self.assertEqual(self.successResultOf(self.store.claim(now, 10, 60)), [])
        self.assertEqual(self.command("flush"), 0)
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "mailframe queue: made 1 deferred entry due\n")
        self.assertTrue(woken)
        claimed = self.successResultOf(self.store.claim(now, 10, 60))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])
        self.assertEqual(self.entry(held).state, EntryState.HOLD)  # type: ignore[union-attr]

    # -- delete ---------------------------------------------------------------

    def test_delete(self) -> None:
        first, second, kept = (self.queue() for _ in range(3))
        self.assertEqual(self.command("delete", first, "01NOSUCHENTRY", second), 1)
        self.assertIsNone(self.entry(first))
        self.assertIsNone(self.entry(second))
        self.assertIsNotNone(self.entry(kept))
        self.assertEqual(
            self.err.getvalue(),
            "mailframe queue: no entry 01NOSUCHENTRY\nmailframe queue: deleted 2 entries\n",
        )
        self.assertEqual(self.out.getvalue(), "")

    def test_delete_all_reports_progress_on_stderr(self) -> None:
        self.patch(_queuecmd, "PAGE_SIZE", 4)
        self.patch(_queuecmd, "CONCURRENT_DELETES", 3)
        self.patch(_queuecmd, "PROGRESS_EVERY", 5)
        for _ in range(12):
            self.queue()
        self.assertEqual(self.command("delete", "--all"), 0)
        self.assertEqual(self.successResultOf(self.store.list()), [])
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(
            self.err.getvalue().splitlines(),
            [
                "mailframe queue: deleted 7 entries so far",
                "mailframe queue: deleted 11 entries so far",
                "mailframe queue: deleted 12 entries",
            ],
        )

    def test_delete_all_of_a_state(self) -> None:
        kept = self.queue()
        held = [self.queue(hold="spam") for _ in range(3)]
        self.assertEqual(self.command("delete", "--all", "--state", "hold"), 0)
        for queue_id in held:
            self.assertIsNone(self.entry(queue_id))
        self.assertIsNotNone(self.entry(kept))
        self.assertEqual(self.err.getvalue(), "mailframe queue: deleted 3 entries\n")

    def test_delete_all_leaves_mail_that_arrives_meanwhile(self) -> None:
        old = self.queue()
        new = self.queue(received_at=START + 1)
        self.assertEqual(self.command("delete", "--all"), 0)
        self.assertIsNone(self.entry(old))
        self.assertIsNotNone(self.entry(new))

    def test_delete_all_empty(self) -> None:
        self.assertEqual(self.command("delete", "--all"), 0)
        self.assertEqual(self.err.getvalue(), "mailframe queue: deleted 0 entries\n")

    # -- hold, release, requeue -----------------------------------------------

    def test_hold_and_release(self) -> None:
        queue_id = self.queue()
        self.assertEqual(self.command("hold", queue_id), 0)
        entry = self.entry(queue_id)
        assert entry is not None
        self.assertEqual((entry.state, entry.reason), (EntryState.HOLD, "held by an operator"))
        self.assertEqual(self.command("hold", "--reason", "looks like spam", queue_id), 0)
        self.assertEqual(self.entry(queue_id).reason, "looks like spam")  # type: ignore[union-attr]
        self.assertEqual(self.command("release", queue_id), 0)
        self.assertEqual(self.entry(queue_id).state, EntryState.DEFERRED)  # type: ignore[union-attr]
        self.assertEqual(
            self.err.getvalue().splitlines(),
            ["mailframe queue: held 1 entry"] * 2 + ["mailframe queue: released 1 entry"],
        )
        now = self.clock.seconds()
        claimed = self.successResultOf(self.store.claim(now, 10, 60))
        self.assertEqual([e.queue_id for e in claimed], [queue_id])

    def test_release_refused(self) -> None:
        queue_id = self.queue()
        self.assertEqual(self.command("release", queue_id), 1)
        self.assertEqual(
            self.err.getvalue(),
            f"mailframe queue: cannot release {queue_id}: {queue_id} is incoming, not on hold\n",
        )

    def test_requeue(self) -> None:
        queue_id = self.queue("alice@example.com", "bob@example.org", "carol@example.net")
        self.attempt(queue_id, delay=3600)
        self.assertEqual(self.command("requeue", queue_id), 0)
        entry = self.entry(queue_id)
        assert entry is not None
        self.assertLessEqual(entry.next_attempt, self.clock.seconds())
        self.assertEqual(entry.recipients[0].attempts, 1)
        self.assertEqual(self.err.getvalue(), "mailframe queue: requeued 1 entry\n")

    def test_requeue_refused_and_missing(self) -> None:
        corrupt, missing = self.queue(), "01NOSUCHENTRY"
        self.successResultOf(self.store.quarantine(corrupt, "unreadable"))
        self.assertEqual(self.command("requeue", corrupt, missing), 1)
        lines = self.err.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith(f"mailframe queue: cannot requeue {corrupt}: "))
        self.assertEqual(lines[1], f"mailframe queue: no entry {missing}")
        self.assertEqual(self.entry(corrupt).state, EntryState.CORRUPT)  # type: ignore[union-attr]

    def test_each_id_once_per_line(self) -> None:
        ids = [self.queue() for _ in range(3)]
        self.assertEqual(self.command("hold", *ids), 0)
        for queue_id in ids:
            self.assertEqual(self.entry(queue_id).state, EntryState.HOLD)  # type: ignore[union-attr]
        self.assertEqual(self.err.getvalue(), "mailframe queue: held 3 entries\n")

    # -- stats ----------------------------------------------------------------

    def test_stats(self) -> None:
        self.queue()
        deferred = self.queue()
        self.attempt(deferred)
        self.queue(hold="operator")
        self.clock.advance(90)
        self.assertEqual(self.command("stats"), 0)
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                "incoming           0",
                "active             0",
                "deferred           2",
                "hold               1",
                "corrupt            0",
                "total              3",
                f"size      {3 * len(MESSAGE):>10} octets",
                "oldest    2023-11-14T22:13:20Z (1m ago)",
            ],
        )

    def test_stats_json(self) -> None:
        self.queue()
        self.queue(hold="operator")
        self.assertEqual(self.command("stats", "--json"), 0)
        document = json.loads(self.out.getvalue())
        self.assertEqual(
            document,
            {
                "counts": {"incoming": 1, "active": 0, "deferred": 0, "hold": 1, "corrupt": 0},
                "total": 2,
                "size": 2 * len(MESSAGE),
                "oldest": START,
            },
        )

    # -- the store ------------------------------------------------------------

    def test_never_recovers_nor_claims(self) -> None:
        queue_id = self.queue()
        for argv in [
            ["list"],
            ["list", "--json"],
            ["show", queue_id],
            ["show", "--body", queue_id],
            ["flush"],
            ["stats"],
            ["hold", queue_id],
            ["release", queue_id],
            ["requeue", queue_id],
            ["delete", queue_id],
            ["delete", "--all"],
        ]:
            self.assertEqual(self.command(*argv), 0, (argv, self.err.getvalue()))

    def test_bad_config(self) -> None:
        bad = temp_dir(self) / "bad.toml"
        bad.write_text('hostname = "mx.example.com"\n\nmax_recipients = "many"\n')
        arguments = parse("list", "--config", str(bad))
        with self.assertRaises(QueueCommandError) as raised:
            open_store(arguments, self.clock)
        self.assertIn(f"{bad}: max_recipients (line 3):", raised.exception.message)
        self.assertEqual(raised.exception.status, 1)
        status = self.successResultOf(run(arguments, self.clock, Console(self.out, self.err)))
        self.assertEqual(status, 1)
        self.assertEqual(self.err.getvalue(), f"mailframe queue: {raised.exception.message}\n")

    def test_missing_queue_dir(self) -> None:
        missing = str(temp_dir(self) / "missing")
        for arguments in [parse("list", "--queue-dir", missing)]:
            status = self.successResultOf(run(arguments, self.clock, Console(self.out, self.err)))
            self.assertEqual(status, 1)
        config = temp_dir(self) / "mailframe.toml"
        config.write_text(f'queue_dir = "{missing}"\n')
        arguments = parse("stats", "--config", str(config))
        status = self.successResultOf(run(arguments, self.clock, Console(self.out, self.err)))
        self.assertEqual(status, 1)
        self.assertEqual(
            self.err.getvalue(), f"mailframe queue: {missing}: no such directory\n" * 2
        )

    def test_store_errors_are_one_line(self) -> None:
        def failing(_arguments: argparse.Namespace, _reactor: object) -> Any:
            raise PermissionError(13, "Permission denied", "spool/deferred")

        arguments = parse("list", "--queue-dir", "spool")
        status = self.successResultOf(
            run(arguments, self.clock, Console(self.out, self.err), failing)
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            self.err.getvalue(), "mailframe queue: [Errno 13] Permission denied: 'spool/deferred'\n"
        )


class FormatAgeTests(SynchronousTestCase):
    def test_two_units_at_most(self) -> None:
        cases = {
            -5: "0s",
            0: "0s",
            45: "45s",
            60: "1m",
            779: "12m",
            3600: "1h",
            3 * 3600 + 12 * 60 + 59: "3h12m",
            86400: "1d",
            2 * 86400 + 3 * 3600 + 60: "2d3h",
        }
        for seconds, text in cases.items():
            self.assertEqual(format_age(seconds), text, seconds)


def _new_spool() -> bool:
    """Whether the spool has the contract that the queue command needs."""
    return hasattr(SpoolQueueStore, "notify_on_change")


class QueueCommandOnSpoolTests(TestCase):
    """
    The real command, ``python -m mailframe.cli queue ...``, in a child
    process, on a spool that a store in this process (the server's part)
    has open: what an operator does while mailframe runs.
    """

    if not _new_spool():
        skip = "the spool does not yet serve a second process"

    def setUp(self) -> None:
        self.path = str(temp_dir(self) / "spool")
        os.makedirs(self.path)
        self.server = SpoolQueueStore(self.path, reactor)  # type: ignore[arg-type]
        self.addCleanup(self.server.stop)

    def run_test(self, test: Callable[[], Awaitable[None]]) -> Deferred[None]:
        """Run *test* once the server's store has recovered, as at a server's start."""

        async def recovered() -> None:
            await self.server.recover()
            await test()

        return Deferred.fromCoroutine(recovered())

    async def commit(self, sender: str = "alice@example.com", hold: str | None = None) -> str:
        writer = self.server.open_writer()
        writer.write(MESSAGE)
        queue_id = await writer.commit(envelope(sender, received_at=reactor.seconds()), hold=hold)
        return str(queue_id)

    async def mailframe(self, *argv: str) -> tuple[int, str, str]:
        """Run ``mailframe ARGV``: its status, stdout and stderr."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-m", "mailframe.cli", *argv], env=env, path=str(REPO)
        )
        return status, out.decode(), err.decode()

    async def listed(self, *argv: str) -> list[dict[str, Any]]:
        status, out, err = await self.mailframe(
            "queue", "list", "--json", *argv, "--queue-dir", self.path
        )
        self.assertEqual(status, 0, err)
        return [json.loads(line) for line in out.splitlines()]

    def ids(self, listed: Sequence[dict[str, Any]]) -> list[str]:
        return [item["id"] for item in listed]

    def test_list(self) -> Deferred[None]:
        async def test() -> None:
            first = await self.commit()
            held = await self.commit("", hold="policy")
            listed = await self.listed()
            self.assertEqual(self.ids(listed), sorted([first, held]))
            states = {item["id"]: (item["state"], item["sender"]) for item in listed}
            self.assertEqual(states, {first: ("incoming", "alice@example.com"), held: ("hold", "")})
            status, out, err = await self.mailframe("queue", "--queue-dir", self.path, "list")
            self.assertEqual((status, err), (0, ""))
            self.assertIn("<>", out)
            self.assertTrue(out.splitlines()[-1].startswith("-- 2 entries"))

        return self.run_test(test)

    def test_config(self) -> Deferred[None]:
        async def test() -> None:
            queue_id = await self.commit()
            config = temp_dir(self) / "mailframe.toml"
            config.write_text(f'queue_dir = "{self.path}"\n')
            status, out, err = await self.mailframe(
                "queue", "stats", "--json", "--config", str(config)
            )
            self.assertEqual(status, 0, err)
            self.assertEqual(json.loads(out)["counts"]["incoming"], 1)
            status, out, err = await self.mailframe(
                "queue", "--config", str(config), "show", "--body", queue_id
            )
            self.assertEqual(status, 0, err)
            self.assertTrue(out.endswith(MESSAGE.decode()))

        return self.run_test(test)

    def test_hold_release_delete(self) -> Deferred[None]:
        async def test() -> None:
            queue_id = await self.commit()
            other = await self.commit()
            where = ["--queue-dir", self.path]
            self.assertEqual((await self.mailframe("queue", "hold", queue_id, *where))[0], 0)
            self.assertEqual(self.ids(await self.listed("--state", "hold")), [queue_id])
            self.assertEqual((await self.mailframe("queue", "release", queue_id, *where))[0], 0)
            self.assertEqual(self.ids(await self.listed("--state", "hold")), [])
            status, _, err = await self.mailframe("queue", "release", queue_id, *where)
            self.assertEqual(status, 1)
            self.assertIn(f"cannot release {queue_id}", err)
            self.assertEqual((await self.mailframe("queue", "delete", queue_id, *where))[0], 0)
            self.assertEqual(self.ids(await self.listed()), [other])
            status, _, err = await self.mailframe("queue", "delete", queue_id, *where)
            self.assertEqual((status, err), (1, f"mailframe queue: no entry {queue_id}\n"))
            status, _, err = await self.mailframe("queue", "delete", "--all", *where)
            self.assertEqual((status, err), (0, "mailframe queue: deleted 1 entry\n"))
            self.assertEqual(await self.listed(), [])

        return self.run_test(test)

    def test_flush_wakes_the_server(self) -> Deferred[None]:
        async def test() -> None:
            queue_id = await self.commit()
            now = reactor.seconds()
            claimed = await self.server.claim(now, 10, 600)
            self.assertEqual([e.queue_id for e in claimed], [queue_id])
            await self.server.reschedule(queue_id, now + 3600, "later")
            woken: list[None] = []
            self.server.notify_on_change(lambda: woken.append(None))
            status, _, err = await self.mailframe("queue", "flush", "--queue-dir", self.path)
            self.assertEqual(status, 0, err)
            for _ in range(100):
                if woken:
                    break
                await deferLater(reactor, 0.1)
            self.assertTrue(woken, "the server was not told of the flush")
            claimed = await self.server.claim(reactor.seconds(), 10, 600)
            self.assertEqual([e.queue_id for e in claimed], [queue_id])

        return self.run_test(test)

    def test_errors(self) -> Deferred[None]:
        async def test() -> None:
            missing = os.path.join(self.path, "nowhere")
            status, out, err = await self.mailframe("queue", "list", "--queue-dir", missing)
            self.assertEqual(
                (status, out, err), (1, "", f"mailframe queue: {missing}: no such directory\n")
            )
            status, out, err = await self.mailframe(
                "queue", "show", "01NOSUCHENTRY", "--queue-dir", self.path
            )
            self.assertEqual((status, err), (1, "mailframe queue: no entry 01NOSUCHENTRY\n"))
            status, _, err = await self.mailframe("queue", "list")
            self.assertEqual(status, 2)
            self.assertIn("usage: mailframe queue list", err)

        return self.run_test(test)

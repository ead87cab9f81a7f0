"""
The ``mailframe queue`` command: look at the queue and change it, also
while a server is running on it.

The command uses nothing but :class:`~mailframe.interfaces.IQueueStore`, so
it serves every store. It opens the store without recovering it, and never
claims an entry: recovery and delivery belong to the server. Listing pages
through the queue with ``list(state, after=..., limit=...)`` and prints as
it goes, so the memory it takes is the same for ten entries or a million.

Results go to stdout; progress, summaries and errors go to stderr, so that
the output of ``--json`` is only JSON. The exit status is 0 on success, 1
when an entry does not exist or its state refuses the operation (or the
store cannot be opened), and 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.python.failure import Failure

from mailframe.address import NullPath, ReversePath
from mailframe.envelope import ClientInfo, EntryState, QueuedRecipient, QueueEntry, QueueStats
from mailframe.interfaces import IQueueStore
from mailframe.stores._errors import StoreUnavailable
from mailframe.stores.spool import SpoolQueueStore

__all__ = [
    "CONCURRENT_DELETES",
    "MAX_HEADER_SECTION",
    "PAGE_SIZE",
    "PROGRESS_EVERY",
    "Console",
    "QueueCommandError",
    "StoreOpener",
    "add_queue_command",
    "check_arguments",
    "format_age",
    "open_store",
    "run",
    "run_queue",
]

#: Entries asked of :meth:`IQueueStore.list` at a time: the most the command
#: holds in memory at once.
PAGE_SIZE = 500
#: ``delete --all`` reports its progress on stderr each time it has deleted
#: this many more entries.
PROGRESS_EVERY = 5000
#: Deletions that ``delete --all`` keeps in flight at once.
CONCURRENT_DELETES = 16
#: ``show`` prints at most this many octets of a header section.
MAX_HEADER_SECTION = 256 * 1024
#: Octets ``show --body`` copies at a time.
COPY_CHUNK = 64 * 1024
#: The exit status after stdout was closed early (``| head``): 128 + SIGPIPE,
#: what a shell reports for a program that SIGPIPE ended.
BROKEN_PIPE = 141
#: The exit status after an interrupt (Ctrl-C): 128 + SIGINT.
INTERRUPTED = 130

_PROGRAM = "mailframe queue"
_STATES = [state.value for state in EntryState]
#: Width of the queue id column; longer ids of other stores push the row.
_ID_WIDTH = 18
_TABLE_HEADER = f"{'QUEUE ID':<{_ID_WIDTH}}  {'STATE':<8}  {'AGE':>6}  {'SIZE':>9}  SENDER"
_DEFAULT_HOLD_REASON = "held by an operator"
_STATE_HELP = f"only entries in STATE ({', '.join(_STATES)})"

#: Opens the store that the command's options name.
StoreOpener = Callable[[argparse.Namespace, Any], IQueueStore]


class QueueCommandError(Exception):
    """
    A problem that ends the command with a one-line message on stderr.

    :ivar message: the message, without the program's name.
    :ivar status: the exit status.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@attrs.frozen
class Console:
    """
    Where the command writes: results to *out*, and everything else
    (errors, progress, summaries) to *err*, each line after the program's
    name.
    """

    out: TextIO
    err: TextIO

    def say(self, line: str) -> None:
        """Write one line of results."""
        self.out.write(line + "\n")

    def tell(self, message: str) -> None:
        """Write one line of news on stderr, at once."""
        self.err.write(f"{_PROGRAM}: {message}\n")
        self.err.flush()

    def raw(self, data: bytes) -> None:
        """Write octets of a message to stdout as they are."""
        self.out.flush()
        binary = getattr(self.out, "buffer", None)
        if binary is None:
            self.out.write(data.decode("utf-8", "replace"))
        else:
            binary.write(data)
            binary.flush()

    def flush(self) -> None:
        """Pass on what was written to stdout so far."""
        self.out.flush()


@attrs.frozen
class _Context:
    """What one run of a subcommand works with."""

    store: IQueueStore
    arguments: argparse.Namespace
    console: Console
    now: Callable[[], float]


# -- the command line ---------------------------------------------------------


def _store_options(parser: argparse.ArgumentParser, default: object) -> None:
    """
    ``--queue-dir`` and ``--config``, on the ``queue`` parser (with
    *default* ``None``) and on each subcommand's (with
    :data:`argparse.SUPPRESS`, so that not giving them there keeps what was
    given before the subcommand).
    """
    where = parser.add_argument_group("which queue (give one)")
    where.add_argument("--queue-dir", metavar="DIR", default=default, help="the spool directory")
    where.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="a config file: the store it names (the spool in its queue_dir by default)",
    )


def add_queue_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``queue`` and its subcommands to the subcommands of ``mailframe``."""
    queue = commands.add_parser(
        "queue",
        help="look at the queue and change it",
        description="Look at the queue and change it, also while the server runs.",
    )
    _store_options(queue, None)
    queue.set_defaults(run=run_queue, queue_parser=queue)
    actions = queue.add_subparsers(dest="action", required=True, metavar="COMMAND")

    def action(
        name: str, summary: str, operation: Callable[[_Context], Awaitable[int]]
    ) -> argparse.ArgumentParser:
        description = summary[0].upper() + summary[1:] + "."
        parser = actions.add_parser(name, help=summary, description=description)
        _store_options(parser, argparse.SUPPRESS)
        parser.set_defaults(operation=operation, queue_parser=parser)
        return parser

    listing = action("list", "list the entries with their recipients", _list)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--state", choices=_STATES, metavar="STATE", help=_STATE_HELP)

    show = action("show", "show an entry's envelope and header section", _show)
    show.add_argument("queue_id", metavar="ID", help="a queue id")
    show.add_argument("--body", action="store_true", help="show the whole message")

    action("flush", "make every deferred entry due now", _flush)

    delete = action("delete", "remove entries and their messages", _delete)
    delete.add_argument("queue_ids", metavar="ID", nargs="*", help="queue ids")
    delete.add_argument(
        "--all", action="store_true", help="every entry queued when the command starts"
    )
    delete.add_argument(
        "--state", choices=_STATES, metavar="STATE", help="with --all: " + _STATE_HELP
    )

    hold = action("hold", "put entries on hold, out of delivery", _hold)
    hold.add_argument("queue_ids", metavar="ID", nargs="+", help="queue ids")
    hold.add_argument(
        "--reason",
        metavar="TEXT",
        default=_DEFAULT_HOLD_REASON,
        help=f'why (default: "{_DEFAULT_HOLD_REASON}")',
    )

    release = action("release", "release held entries; they are due now", _release)
    release.add_argument("queue_ids", metavar="ID", nargs="+", help="queue ids")

    requeue = action("requeue", "make entries due now, keeping their history", _requeue)
    requeue.add_argument("queue_ids", metavar="ID", nargs="+", help="queue ids")

    stats = action("stats", "count the entries in each state", _stats)
    stats.add_argument("--json", action="store_true", help="one JSON object")
    return queue


def check_arguments(arguments: argparse.Namespace) -> None:
    """
    Refuse what the parser cannot: exactly one of ``--queue-dir`` and
    ``--config``, and for ``delete``, IDs or ``--all``.

    :raises SystemExit: with status 2 and the usage, as :mod:`argparse` does.
    """
    parser: argparse.ArgumentParser = arguments.queue_parser
    if arguments.queue_dir is not None and arguments.config is not None:
        parser.error("give --queue-dir or --config, not both")
    if arguments.queue_dir is None and arguments.config is None:
        parser.error("give --queue-dir DIR or --config FILE")
    if arguments.action == "delete":
        if arguments.all == bool(arguments.queue_ids):
            parser.error("give the IDs to delete, or --all")
        if arguments.state is not None and not arguments.all:
            parser.error("--state goes with --all")


# -- opening the store --------------------------------------------------------


def open_store(arguments: argparse.Namespace, reactor: Any) -> IQueueStore:
    """
    The store that *arguments* name, opened as a second user beside a
    server: the spool in ``--queue-dir``, or the store that the
    ``--config`` file names, built by its plugin with the file's settings:
    by default the spool at its ``queue_dir`` (a relative ``queue_dir`` is
    relative to the current directory, as for the server). The store is not
    recovered.

    :raises QueueCommandError: when the config file is bad, the store
        cannot be built, or the spool directory does not exist.
    """
    if arguments.config is not None:
        # Imported here: the config module brings in most of mailframe,
        # which the command otherwise does without.
        from mailframe.config import load_config
        from mailframe.errors import ConfigError

        try:
            config = load_config(arguments.config)
            if config.store != "spool":
                return _configured_store(config, reactor)
        except ConfigError as error:
            # As check-config says it.
            raise QueueCommandError(f"{arguments.config}: {error}") from None
        path = config.queue_dir
    else:
        path = arguments.queue_dir
    if not os.path.isdir(path):
        raise QueueCommandError(f"{path}: no such directory")
    return SpoolQueueStore(path, reactor)


def _configured_store(config: Any, reactor: Any) -> IQueueStore:
    """The store that *config* names, built by its plugin."""
    from random import SystemRandom

    from mailframe.config import ComponentContext
    from mailframe.registry import Components, discover

    components = Components(config, discover(), ComponentContext(
        reactor=reactor, random=SystemRandom()))
    store: IQueueStore = components.get("store", config.store)
    return store


# -- running ------------------------------------------------------------------


def run_queue(arguments: argparse.Namespace) -> int:
    """Run a ``mailframe queue`` subcommand on the global reactor; return its exit status."""
    check_arguments(arguments)
    from twisted.internet.task import react

    console = Console(sys.stdout, sys.stderr)
    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        outcome.append(await run(arguments, reactor, console))

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit:
        pass
    if not outcome:
        # The reactor stopped before the command finished: a signal.
        console.tell("interrupted")
        return INTERRUPTED
    if outcome[0] == BROKEN_PIPE:
        # Nobody reads stdout any more; keep the interpreter's last flush
        # from complaining about it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return outcome[0]


def run(
    arguments: argparse.Namespace,
    reactor: Any,
    console: Console,
    opener: StoreOpener = open_store,
) -> Deferred[int]:
    """
    Run the subcommand that *arguments* name (checked by
    :func:`check_arguments`) on the store that *opener* opens.

    :param reactor: the clock for ages, and what the store is opened with.
    :return: a Deferred firing with the exit status.
    """
    return Deferred.fromCoroutine(_run(arguments, reactor, console, opener))


async def _run(
    arguments: argparse.Namespace, reactor: Any, console: Console, opener: StoreOpener
) -> int:
    try:
        store = opener(arguments, reactor)
        operation: Callable[[_Context], Awaitable[int]] = arguments.operation
        status = await operation(_Context(store, arguments, console, reactor.seconds))
        console.flush()
        idle = getattr(store, "wait_idle", None)
        if idle is not None:
            # Let a store finish work it does after its Deferreds fired.
            await idle()
    except QueueCommandError as error:
        console.tell(error.message)
        return error.status
    except BrokenPipeError:
        return BROKEN_PIPE
    except (OSError, StoreUnavailable) as error:
        console.tell(str(error))
        return 1
    except Exception:
        console.tell("unexpected error:")
        traceback.print_exc(file=console.err)
        return 1
    return status


async def _pages(store: IQueueStore, state: EntryState | None) -> AsyncIterator[list[QueueEntry]]:
    """The queue, a page at a time, in queue-id order."""
    after: str | None = None
    while True:
        page: list[QueueEntry] = await store.list(state, after=after, limit=PAGE_SIZE)
        if not page:
            return
        yield page
        after = page[-1].queue_id


def _state(name: str | None) -> EntryState | None:
    return None if name is None else EntryState(name)


# -- list ---------------------------------------------------------------------


async def _list(context: _Context) -> int:
    console = context.console
    as_json: bool = context.arguments.json
    entries = octets = 0
    if not as_json:
        console.say(_TABLE_HEADER)
    async for page in _pages(context.store, _state(context.arguments.state)):
        now = context.now()
        for entry in page:
            if as_json:
                console.say(json.dumps(entry_json(entry), sort_keys=True))
            else:
                for line in table_lines(entry, now):
                    console.say(line)
            entries += 1
            octets += entry.size
        console.flush()
    if not as_json:
        console.say(f"-- {_count(entries, 'entry', 'entries')}, {octets} octets")
    return 0


def entry_json(entry: QueueEntry) -> dict[str, Any]:
    """What ``list --json`` prints of *entry*."""
    return {
        "id": entry.queue_id,
        "state": entry.state.value,
        "arrival": entry.envelope.received_at,
        "size": entry.size,
        "sender": _sender(entry.envelope.sender, ""),
        "recipients": [_recipient_json(r) for r in entry.recipients],
        "reason": entry.reason,
        "attempts": entry.attempts,
        "next_attempt": entry.next_attempt,
    }


def _recipient_json(recipient: QueuedRecipient) -> dict[str, Any]:
    return {
        "address": str(recipient.mailbox),
        "state": recipient.state.value,
        "attempts": recipient.attempts,
        "reason": "" if recipient.reply is None else str(recipient.reply),
        "remote": recipient.remote,
        "next_attempt": recipient.next_attempt,
    }


def table_lines(entry: QueueEntry, now: float) -> list[str]:
    """
    What the ``list`` table shows of *entry*: a row, its reason in
    parentheses, and a line for each recipient.
    """
    age = format_age(now - entry.envelope.received_at)
    sender = _visible(_sender(entry.envelope.sender, "<>"))
    lines = [
        f"{entry.queue_id:<{_ID_WIDTH}}  {entry.state.value:<8}  {age:>6}  {entry.size:>9}"
        f"  {sender}"
    ]
    if entry.reason:
        lines.append(f"  ({_visible(entry.reason)})")
    lines.extend(f"    {line}" for line in _recipient_lines(entry.recipients))
    lines.append("")
    return lines


def _recipient_lines(recipients: Iterable[QueuedRecipient]) -> list[str]:
    """Recipients in aligned columns: address, state, attempts, last reply."""
    rows = [
        (
            _visible(str(r.mailbox)),
            r.state.value,
            _count(r.attempts, "attempt", "attempts") if r.attempts else "",
            "" if r.reply is None else _visible(str(r.reply)),
        )
        for r in recipients
    ]
    width = min(max((len(row[0]) for row in rows), default=0), 40)
    return [
        f"{address:<{width}}  {state:<9}  {attempts:<11}  {reply}".rstrip()
        for address, state, attempts, reply in rows
    ]


# -- show ---------------------------------------------------------------------


async def _show(context: _Context) -> int:
    queue_id: str = context.arguments.queue_id
    entry: QueueEntry | None = await context.store.get(queue_id)
    if entry is None:
        context.console.tell(f"no entry {queue_id}")
        return 1
    try:
        message: BinaryIO = await context.store.open_message(queue_id)
    except KeyError:
        context.console.tell(f"no entry {queue_id}")
        return 1
    try:
        for line in describe(entry, context.now()):
            context.console.say(line)
        context.console.say("")
        if context.arguments.body:
            while chunk := message.read(COPY_CHUNK):
                context.console.raw(chunk)
        else:
            section, cut = _header_section(message)
            context.console.raw(section)
            if cut:
                context.console.say(f"[header section cut after {MAX_HEADER_SECTION} octets]")
    finally:
        message.close()
    return 0


def describe(entry: QueueEntry, now: float) -> list[str]:
    """What ``show`` says of *entry* before its message."""
    envelope = entry.envelope
    fields = [
        ("Queue ID", entry.queue_id),
        ("State", entry.state.value),
        ("Reason", _visible(entry.reason)),
        (
            "Arrived",
            f"{_when(envelope.received_at)} ({format_age(now - envelope.received_at)} ago)",
        ),
        ("Size", f"{entry.size} octets"),
        ("Attempts", str(entry.attempts)),
        (
            "Next attempt",
            _next(entry.next_attempt, now)
            if entry.state in (EntryState.INCOMING, EntryState.DEFERRED)
            else "",
        ),
        ("Delay warning", "sent" if entry.warned else ""),
        ("Sender", _visible(_sender(envelope.sender, "<>"))),
        ("Client", _visible(_client(envelope.client))),
        ("Body", envelope.body.value + (", SMTPUTF8" if envelope.smtputf8 else "")),
        ("AUTH=", _visible(envelope.auth or "")),
        ("RET", envelope.ret or ""),
        ("ENVID", _visible(envelope.envid or "")),
    ]
    lines = [f"{name + ':':<15}{value}" for name, value in fields if value]
    lines.append("Recipients:")
    for recipient, line in zip(entry.recipients, _recipient_lines(entry.recipients), strict=True):
        lines.append(f"  {line}")
        details = _recipient_details(entry, recipient, now)
        if details:
            lines.append(f"      {details}")
    if envelope.added_headers:
        lines.append("Header fields to add:")
        lines.extend(f"  {_visible(field)}" for field in envelope.added_headers)
    return lines


def _recipient_details(entry: QueueEntry, recipient: QueuedRecipient, now: float) -> str:
    details = []
    if recipient.remote:
        details.append(f"from {_visible(recipient.remote)}")
    if recipient.attempts and recipient.next_attempt and recipient.report is None:
        details.append(f"next attempt {_next(recipient.next_attempt, now)}")
    if recipient.report is not None:
        details.append(f'"{recipient.report}" notification owed')
    options = entry.envelope.dsn_options(recipient.mailbox)
    if options.notify is not None:
        details.append("NOTIFY=" + ",".join(sorted(options.notify)))
    if options.orcpt is not None:
        details.append(f"ORCPT={_visible(options.orcpt)}")
    return "; ".join(details)


def _header_section(message: BinaryIO) -> tuple[bytes, bool]:
    """
    The header section of *message* with the empty line after it, and
    whether it was cut at :data:`MAX_HEADER_SECTION`.
    """
    lines = []
    read = 0
    while read < MAX_HEADER_SECTION:
        line = message.readline(MAX_HEADER_SECTION - read)
        if not line:
            break
        lines.append(line)
        read += len(line)
        if line in (b"\r\n", b"\n"):
            break
    else:
        return b"".join(lines), bool(message.read(1))
    return b"".join(lines), False


# -- changes ------------------------------------------------------------------


async def _flush(context: _Context) -> int:
    made = await context.store.flush()
    if isinstance(made, int):
        context.console.tell(f"made {_count(made, 'deferred entry', 'deferred entries')} due")
    else:
        context.console.tell("made the deferred entries due")
    return 0


async def _delete(context: _Context) -> int:
    if context.arguments.all:
        return await _delete_all(context)
    return await _each(context, "delete", "deleted", context.store.delete)


async def _hold(context: _Context) -> int:
    reason: str = context.arguments.reason

    def hold(queue_id: str) -> Any:
        return context.store.hold(queue_id, reason)

    return await _each(context, "hold", "held", hold)


async def _release(context: _Context) -> int:
    return await _each(context, "release", "released", context.store.release)


async def _requeue(context: _Context) -> int:
    return await _each(context, "requeue", "requeued", context.store.requeue)


async def _each(context: _Context, verb: str, done: str, operation: Callable[[str], Any]) -> int:
    """
    Apply *operation* to each queue id given, one after the other; go on
    past an id that does not exist or whose state refuses it.
    """
    status = changed = 0
    for queue_id in context.arguments.queue_ids:
        try:
            await operation(queue_id)
        except KeyError:
            context.console.tell(f"no entry {queue_id}")
            status = 1
        except ValueError as error:
            context.console.tell(f"cannot {verb} {queue_id}: {error}")
            status = 1
        else:
            changed += 1
    if changed:
        context.console.tell(f"{done} {_count(changed, 'entry', 'entries')}")
    return status


async def _delete_all(context: _Context) -> int:
    """
    Delete every entry (of ``--state``) that arrived before the command
    started: mail that a running server accepts meanwhile stays.
    """
    store, console = context.store, context.console
    started = context.now()
    status = deleted = 0
    report_at = PROGRESS_EVERY

    def outcome(result: object, queue_id: str) -> int:
        if not isinstance(result, Failure):
            return 1
        if result.check(KeyError):
            # Delivered or deleted meanwhile.
            return 0
        if result.check(ValueError):
            console.tell(f"cannot delete {queue_id}: {result.value}")
            return -1
        result.raiseException()

    async for page in _pages(store, _state(context.arguments.state)):
        wanted = [e.queue_id for e in page if e.envelope.received_at <= started]
        for start in range(0, len(wanted), CONCURRENT_DELETES):
            batch = [
                maybeDeferred(store.delete, queue_id).addBoth(outcome, queue_id)
                for queue_id in wanted[start : start + CONCURRENT_DELETES]
            ]
            results: list[int] = await gatherResults(batch, consumeErrors=True)
            deleted += results.count(1)
            if -1 in results:
                status = 1
            if deleted >= report_at:
                console.tell(f"deleted {deleted} entries so far")
                report_at = (deleted // PROGRESS_EVERY + 1) * PROGRESS_EVERY
    console.tell(f"deleted {_count(deleted, 'entry', 'entries')}")
    return status


# -- stats --------------------------------------------------------------------


async def _stats(context: _Context) -> int:
    stats: QueueStats = await context.store.stats()
    counts = {state.value: stats[state] for state in EntryState}
    total = sum(counts.values())
    if context.arguments.json:
        document = {"counts": counts, "total": total, "size": stats.size, "oldest": stats.oldest}
        context.console.say(json.dumps(document, sort_keys=True))
        return 0
    for name, count in counts.items():
        context.console.say(f"{name:<10}{count:>10}")
    context.console.say(f"{'total':<10}{total:>10}")
    if stats.size is not None:
        context.console.say(f"{'size':<10}{stats.size:>10} octets")
    if stats.oldest is not None:
        age = format_age(context.now() - stats.oldest)
        context.console.say(f"{'oldest':<10}{_when(stats.oldest)} ({age} ago)")
    return 0


# -- formatting ---------------------------------------------------------------


def format_age(seconds: float) -> str:
    """A duration in at most two units: ``45s``, ``12m``, ``3h12m``, ``2d3h``."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _when(timestamp: float) -> str:
    """A POSIX time in UTC, ISO 8601."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _next(timestamp: float, now: float) -> str:
    if timestamp <= now:
        return "due now"
    return f"{_when(timestamp)} (in {format_age(timestamp - now)})"


def _sender(sender: ReversePath, null: str) -> str:
    """The sender without angle brackets; *null* for the null reverse path."""
    return null if isinstance(sender, NullPath) else str(sender)


def _client(client: ClientInfo) -> str:
    parts = []
    if client.address:
        name = f"{client.hostname} " if client.hostname else ""
        parts.append(f"{name}[{client.address}]:{client.port}")
    if client.helo:
        parts.append(f"{'EHLO' if client.esmtp else 'HELO'} {client.helo}")
    if client.tls:
        parts.append(client.tls)
    if client.authenticated_as:
        parts.append(f"authenticated as {client.authenticated_as}")
    if client.listener:
        parts.append(f"listener {client.listener}")
    return ", ".join(parts)


def _visible(text: str) -> str:
    """*text* with control characters escaped, so that a terminal shows them."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"

"""
Delivery to a command: the message goes to the command's standard input,
and its exit status says what became of it, as with Postfix's ``pipe(8)``.

:class:`PipeTransport` is the :class:`~mailframe.interfaces.IDeliveryTransport`
named by routes such as
``Route("pipe", {"command": "/usr/bin/procmail -d ${user}"})``.

.. rubric:: The command

The route's ``command`` is split into words as a POSIX shell would split
them (:func:`shlex.split`: quotes and backslashes group and escape), but no
shell ever runs it: there are no pipes, redirections, globs or ``$(...)``.
The first word is the program: an absolute path, or a name looked up in the
``PATH`` below. It cannot hold a variable.

Variables are replaced in each word *after* the split, so a value never
becomes more than one word and its quotes or spaces mean nothing, whatever
quoting the word had in the route:

``${sender}``
    the envelope sender as RFC 5321 writes it (``"a b"@example.com``), or
    nothing for the null reverse path ``<>``;
``${recipient}``
    the recipient as RFC 5321 writes it;
``${original}``
    the recipient of the envelope that the router turned into it;
``${user}``
    the recipient's local part, unquoted;
``${domain}``
    the recipient's domain;
``${queue_id}``
    the queue id.

Every ``${`` starts one of these; anything else is an error in the route.
A word that does not start with ``-`` never comes to start with one: when
a value at the start of a word would make it look like an option (a recipient such as
``-oQ/tmp@example.com``), the command does not run, and the recipient fails
with ``550 5.1.3`` (``550 5.1.7`` for the sender), as Postfix refuses such
addresses (its ``allow_min_user``). A value inside a word, as in
``--to=${recipient}``, is safe as it is.

When the command names ``${recipient}``, ``${original}``, ``${user}`` or
``${domain}``, it runs once for each recipient, one after the other, each
recipient with its own result. Otherwise it runs once for all the
recipients of the delivery, which share its result.

.. rubric:: How it runs

The command runs with :meth:`~twisted.internet.interfaces.IReactorProcess.spawnProcess`:
in the directory of :attr:`PipeSettings.directory`, with no file open but
its standard input, output and error (Twisted closes every other
descriptor in the child), and with an environment of its own, nothing
inherited from the server's:

``PATH``
    ``/usr/bin:/bin``;
``SENDER``, ``QUEUE_ID``
    as ``${sender}`` and ``${queue_id}``;
``RECIPIENT``, ``ORIGINAL_RECIPIENT``, ``USER``, ``DOMAIN``
    as ``${recipient}``, ``${original}``, ``${user}`` and ``${domain}``,
    only when the command runs for one recipient.

:attr:`PipeSettings.uid` and :attr:`PipeSettings.gid` name the user and
group it runs as. Only a server running as root can switch to them; one
that does not delivers only when they are its own, and otherwise defers
with ``451 4.3.5``. A server running as root without them runs the command
as root.

Standard input carries, with LF line ends (as Postfix's pipe gives them;
:attr:`PipeSettings.crlf` keeps the CRLF of the stored message instead):

1. ``Return-Path: <sender>`` and ``Delivered-To: recipient``, when the
   command runs for one recipient and :attr:`PipeSettings.delivered_to` is
   set (RFC 5321 §4.4);
2. the fields that policies added
   (:attr:`Envelope.added_headers <mailframe.envelope.Envelope.added_headers>`);
3. the stored message, which starts with our own ``Received:`` field.

The message is read in chunks in a thread and written only as fast as the
command reads it, so a message of any size takes bounded memory. A command
may exit without reading all of it: its exit status decides.

.. rubric:: What its end means

The exit status is read as ``sysexits.h`` defines it (the table is
:data:`SYSEXITS`, with the enhanced status codes of Postfix's
``sys_exits.c``):

- ``0`` (``EX_OK``) delivers: ``250 2.0.0``;
- ``75`` (``EX_TEMPFAIL``) defers: ``451 4.3.0``;
- any other status bounces: ``550`` with the enhanced code of the table,
  such as ``5.1.1`` for ``67`` (``EX_NOUSER``), and ``5.3.0`` for a status
  it does not list. Postfix defers ``71`` (``EX_OSERR``); here only ``75``
  defers.

The start of what the command writes on its standard error
(:attr:`PipeSettings.max_stderr` octets, control characters made spaces)
is the text of the reply, after the status and its name. Standard output is
read and thrown away.

A command still running after :attr:`PipeSettings.timeout` seconds gets
``SIGTERM``, and ``SIGKILL`` :data:`KILL_GRACE` seconds later, and the
delivery defers with ``451 4.3.0``; so does a command killed by any
signal. Only the command's own process is signalled, not processes it
started: Twisted starts it in the server's process group. Once the command
has exited, its output pipes are closed within :data:`DRAIN_GRACE` seconds
even if something it started keeps them open.

A command that cannot be started (not found, not executable, the directory
missing, a route without ``command``) defers with ``451 4.3.5``: a mistake
in the configuration must not bounce mail.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import signal
import stat
from collections.abc import Mapping, Sequence
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailframe.address import Mailbox
from mailframe.components import ComponentMaker, Setting, SettingError
from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult, Route
from mailframe.interfaces import IDeliveryTransport, IQueueStore
from mailframe.reply import Reply

__all__ = [
    "DRAIN_GRACE",
    "KILL_GRACE",
    "PATH",
    "PER_RECIPIENT",
    "SYSEXITS",
    "VARIABLES",
    "Command",
    "CommandError",
    "PipeSettings",
    "PipeTransport",
    "UnsafeArgument",
    "credentials",
    "exit_reply",
    "pipe_maker",
]

#: The ``PATH`` of every command, and where a program named without a
#: directory is looked for.
PATH = "/usr/bin:/bin"

#: The variables a command may name, ``${name}``.
VARIABLES = ("sender", "recipient", "original", "user", "domain", "queue_id")

#: Those that make the command run once for each recipient.
PER_RECIPIENT = frozenset({"recipient", "original", "user", "domain"})

#: Seconds between ``SIGTERM`` and ``SIGKILL`` for a command that ran out
#: of time.
KILL_GRACE = 5.0

#: Seconds that the output pipes of a command that has exited may stay
#: open (held by a process it started) before they are closed.
DRAIN_GRACE = 2.0

#: Octets of the message read and written at a time. The process's pipe
#: buffers at most this and its own 64 KiB before the reading pauses.
CHUNK_SIZE = 64 * 1024

#: Exit status to ``(name, enhanced status, description)``, from
#: ``sysexits.h``, with the enhanced codes (RFC 3463) of Postfix's
#: ``sys_exits.c``; only ``EX_TEMPFAIL`` defers, so ``EX_OSERR``, which
#: Postfix defers, is ``5.3.0`` here.
SYSEXITS: Mapping[int, tuple[str, str, str]] = {
    64: ("EX_USAGE", "5.3.0", "command line usage error"),
    65: ("EX_DATAERR", "5.6.0", "data format error"),
    66: ("EX_NOINPUT", "5.3.0", "cannot open input"),
    67: ("EX_NOUSER", "5.1.1", "user unknown"),
    68: ("EX_NOHOST", "5.1.2", "host name unknown"),
    69: ("EX_UNAVAILABLE", "5.3.0", "service unavailable"),
    70: ("EX_SOFTWARE", "5.3.0", "internal software error"),
    71: ("EX_OSERR", "5.3.0", "system resource problem"),
    72: ("EX_OSFILE", "5.3.0", "critical OS file missing"),
    73: ("EX_CANTCREAT", "5.2.0", "can't create user output file"),
    74: ("EX_IOERR", "5.3.0", "input/output error"),
    75: ("EX_TEMPFAIL", "4.3.0", "temporary failure"),
    76: ("EX_PROTOCOL", "5.5.0", "remote error in protocol"),
    77: ("EX_NOPERM", "5.7.0", "permission denied"),
    78: ("EX_CONFIG", "5.3.5", "local configuration error"),
}

_EX_TEMPFAIL = 75

# RFC 3463 §3.4: X.3.5, system incorrectly configured.
_MISCONFIGURED = "4.3.5"

_VARIABLE = re.compile(r"\$\{([A-Za-z_]*)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class CommandError(ValueError):
    """The ``command`` of a route cannot be run as it is written."""


class UnsafeArgument(ValueError):
    """
    A value would start a word with ``-``, making it look like an option.

    :ivar variable: the variable whose value it is.
    """

    def __init__(self, variable: str, word: str) -> None:
        super().__init__(f"${{{variable}}} would make the option-like argument {word!r}")
        self.variable = variable


def _variables_of(word: str) -> list[str]:
    names = []
    position = word.find("${")
    while position >= 0:
        match = _VARIABLE.match(word, position)
        if match is None or match.group(1) not in VARIABLES:
            shown = match.group() if match else word[position:]
            known = ", ".join(f"${{{name}}}" for name in VARIABLES)
            raise CommandError(f"{shown!r} in {word!r} is not one of the variables {known}")
        names.append(match.group(1))
        position = word.find("${", match.end())
    return names


@attrs.frozen
class Command:
    """
    A command, split into words, with its variables not yet replaced.

    :ivar argv: the words; the first is the program.
    """

    argv: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Command:
        """
        Split *text* as a POSIX shell would, without running one.

        :raises CommandError: for an empty command, unbalanced quotes, an
            unknown variable, or a variable in the program's name.
        """
        try:
            argv = tuple(shlex.split(text))
        except ValueError as error:
            raise CommandError(f"cannot split {text!r}: {error}") from None
        if not argv:
            raise CommandError("the command is empty")
        if _variables_of(argv[0]):
            raise CommandError(f"the program {argv[0]!r} cannot hold a variable")
        for word in argv[1:]:
            _variables_of(word)
        return cls(argv)

    @property
    def program(self) -> str:
        """The program's name, without its directory, for replies and logs."""
        return os.path.basename(self.argv[0]) or self.argv[0]

    @property
    def per_recipient(self) -> bool:
        """Whether the command names a variable of one recipient."""
        return any(name in PER_RECIPIENT for word in self.argv for name in _variables_of(word))

    def expand(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """
        The words with each ``${name}`` replaced by ``values[name]``; each
        word stays one word.

        :raises UnsafeArgument: when a value would start with ``-`` a word
            that did not.
        :raises KeyError: when *values* lacks a variable that a word names.
        """
        argv = [self.argv[0]]
        for word in self.argv[1:]:
            expanded = _VARIABLE.sub(lambda match: values[match.group(1)], word)
            if expanded.startswith("-") and not word.startswith("-"):
                first = _VARIABLE.match(word)
                raise UnsafeArgument(first.group(1) if first else "?", expanded)
            argv.append(expanded)
        return tuple(argv)


def _clean(data: bytes) -> str:
    """*data* as one line of text: control characters become spaces, runs of them one."""
    text = _CONTROL.sub(" ", data.decode("utf-8", "replace"))
    return " ".join(text.split())


def exit_reply(program: str, code: int, stderr: bytes = b"") -> tuple[DeliveryStatus, Reply]:
    """
    What the exit status *code* of *program* means for delivery, with its
    standard error *stderr* as the reason: see :data:`SYSEXITS`.
    """
    reason = _clean(stderr)
    if code == 0:
        return DeliveryStatus.DELIVERED, Reply(250, "2.0.0", f"Delivered to command {program}")
    name, status, description = SYSEXITS.get(code, ("", "5.3.0", ""))
    text = f"Command {program} exited with status {code}"
    if name:
        text += f" ({name}: {description})"
    if reason:
        text += f": {reason}"
    if code == _EX_TEMPFAIL:
        return DeliveryStatus.TRANSIENT, Reply(451, status, text)
    return DeliveryStatus.PERMANENT, Reply(550, status, text)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@attrs.frozen
class PipeSettings:
    """
    How commands run.

    :ivar timeout: seconds a command may run before it is killed.
    :ivar crlf: keep the CRLF line ends of the stored message on standard
        input, instead of LF.
    :ivar delivered_to: put ``Return-Path:`` and ``Delivered-To:`` before
        the message when the command runs for one recipient.
    :ivar uid: the user id to run commands as, or ``None`` for the server's.
    :ivar gid: the group id to run commands as, or ``None`` for the server's.
    :ivar directory: the working directory of commands.
    :ivar max_stderr: octets of standard error kept as the reply's text.
    """

    timeout: float = 600.0
    crlf: bool = False
    delivered_to: bool = True
    uid: int | None = None
    gid: int | None = None
    directory: str = "/"
    max_stderr: int = 2048


@implementer(IPushProducer)
class _StdinFeed:
    """
    The producer registered with the command's standard input: the
    process's pipe pauses it while its buffer is full.
    """

    def __init__(self) -> None:
        self.open = True
        self._paused = False
        self._waiter: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.open = False
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)

    def writable(self) -> Deferred[None]:
        """Fires when the pipe takes more, or once standard input is closed."""
        if not self.open or not self._paused:
            return succeed(None)
        self._waiter = Deferred()
        return self._waiter


class _LineEnds:
    """Turns CRLF into LF in a stream cut into chunks anywhere."""

    def __init__(self) -> None:
        self._carry = b""

    def convert(self, chunk: bytes) -> bytes:
        chunk = self._carry + chunk
        self._carry = b"\r" if chunk.endswith(b"\r") else b""
        if self._carry:
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        carry, self._carry = self._carry, b""
        return carry


class _CommandProcess(ProcessProtocol):
    """
    One run of a command: keeps the start of its standard error, throws its
    standard output away, and enforces the time limit.

    :ivar ended: fires once the command has exited and its output is read
        (or :data:`DRAIN_GRACE` has passed).
    """

    def __init__(self, clock: Any, timeout: float, max_stderr: int) -> None:
        self.clock = clock
        self.timeout = timeout
        self.max_stderr = max_stderr
        self.feed = _StdinFeed()
        self.stderr = bytearray()
        self.timed_out = False
        self.aborted = False
        self.reason: BaseException | None = None
        self.ended: Deferred[None] = Deferred()
        self._timer: IDelayedCall | None = None
        self._drain: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.feed, True)  # type: ignore[union-attr]
        self._timer = self.clock.callLater(self.timeout, self._time_out)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 2:
            room = self.max_stderr - len(self.stderr)
            if room > 0:
                self.stderr += data[:room]

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 0:
            self.feed.stopProducing()

    def processExited(self, reason: Failure) -> None:
        self.reason = reason.value
        self._cancel_timer()
        self.feed.stopProducing()
        self._drain = self.clock.callLater(DRAIN_GRACE, self._close_pipes)

    def processEnded(self, reason: Failure) -> None:
        if self.reason is None:
            self.reason = reason.value
        self._finish()

    def abort(self) -> None:
        """Kill the command: its standard input cannot be completed."""
        self.aborted = True
        self.feed.stopProducing()
        self._signal("KILL")

    def _time_out(self) -> None:
        self.timed_out = True
        self.feed.stopProducing()
        self._signal("TERM")
        self._timer = self.clock.callLater(KILL_GRACE, self._kill)

    def _kill(self) -> None:
        self._timer = None
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass

    def _close_pipes(self) -> None:
        self._drain = None
        self.transport.loseConnection()  # type: ignore[union-attr]
        self._finish()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish(self) -> None:
        self._cancel_timer()
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        self._drain = None
        self.feed.stopProducing()
        if not self.ended.called:
            self.ended.callback(None)


def _find_program(name: str) -> str:
    """
    The path of the program *name*: an absolute path, or a name found in
    :data:`PATH`.

    :raises CommandError: when there is no such executable file.
    """
    if os.path.isabs(name):
        candidates = [name]
    elif "/" in name:
        raise CommandError(f"the program {name!r} is neither an absolute path nor a plain name")
    else:
        candidates = [os.path.join(directory, name) for directory in PATH.split(":")]
    for path in candidates:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and os.access(path, os.X_OK):
            return path
    raise CommandError(f"no executable program {name!r}")


@implementer(IDeliveryTransport)
class PipeTransport:
    """
    Delivers by running the route's ``command``; see the module.

    :param store: where messages are read from.
    :param reactor: provides ``IReactorProcess`` and ``IReactorTime``: the
        commands and their time limit.
    :param threadpool: where the message is read.
    :param settings: the :class:`PipeSettings`.
    """

    log = Logger()

    def __init__(
        self,
        store: IQueueStore,
        reactor: Any,
        threadpool: ThreadPool,
        settings: PipeSettings | None = None,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.threadpool = threadpool
        self.settings = settings if settings is not None else PipeSettings()

    def deliver(
        self, entry: QueueEntry, recipients: Sequence[tuple[Mailbox, Mailbox]], route: Route
    ) -> Deferred[list[RecipientResult]]:
        return Deferred.fromCoroutine(self._deliver(entry, list(recipients), route))

    async def _deliver(
        self, entry: QueueEntry, recipients: list[tuple[Mailbox, Mailbox]], route: Route
    ) -> list[RecipientResult]:
        if not recipients:
            return []
        if route.reject is not None:
            return _fail(recipients, route.reject, DeliveryStatus.PERMANENT)
        try:
            command = Command.parse(route.arguments.get("command", ""))
            program = _find_program(command.argv[0])
            credentials = self._credentials()
            if not os.path.isdir(self.settings.directory):
                raise CommandError(f"no directory {self.settings.directory!r} to run in")
        except CommandError as error:
            self.log.error("Cannot run the pipe command of {queue_id}: {reason}",
                           queue_id=entry.queue_id, reason=str(error), route=route)
            reply = Reply(451, _MISCONFIGURED, f"Cannot run the pipe command: {error}")
            return _fail(recipients, reply, DeliveryStatus.TRANSIENT)
        try:
            message: IO[bytes] = await self.store.open_message(entry.queue_id)
        except Exception:
            self.log.failure("Cannot read the message of {queue_id}", queue_id=entry.queue_id)
            reply = Reply(451, "4.3.0", "Cannot read the queued message")
            return _fail(recipients, reply, DeliveryStatus.TRANSIENT)
        results: list[RecipientResult] = []
        try:
            if command.per_recipient:
                for recipient, original in recipients:
                    status, reply = await self._run(
                        entry, command, program, credentials, message, (recipient, original))
                    results.append(RecipientResult(recipient, status, reply, original=original))
                return results
            status, reply = await self._run(entry, command, program, credentials, message, None)
            return _fail(recipients, reply, status)
        except Exception:
            self.log.failure("Pipe delivery of {queue_id} failed", queue_id=entry.queue_id)
        finally:
            message.close()
        reply = Reply(451, "4.3.0", "Local error in the pipe transport")
        return results + _fail(recipients[len(results):], reply, DeliveryStatus.TRANSIENT)

    def _credentials(self) -> tuple[int | None, int | None]:
        """
        The uid and gid to pass to ``spawnProcess``: ``None`` where no
        switch is needed.

        :raises CommandError: when a switch is needed and the server does
            not run as root.
        """
        uid, gid = self.settings.uid, self.settings.gid
        if uid is None and gid is None:
            return None, None
        if os.geteuid() == 0:
            return uid, gid
        if uid in (None, os.geteuid()) and gid in (None, os.getegid()):
            return None, None
        raise CommandError(f"only a server running as root can run commands as"
                           f" uid {uid} and gid {gid}")

    def _values(
        self, entry: QueueEntry, recipient: tuple[Mailbox, Mailbox] | None
    ) -> dict[str, str]:
        values = {"sender": str(entry.envelope.sender), "queue_id": entry.queue_id}
        if recipient is not None:
            final, original = recipient
            values.update(recipient=str(final), original=str(original),
                          user=final.local_part, domain=final.domain)
        return values

    def _prefix(self, entry: QueueEntry, recipient: tuple[Mailbox, Mailbox] | None) -> bytes:
        envelope = entry.envelope
        lines = list(envelope.added_headers)
        if recipient is not None and self.settings.delivered_to:
            lines[:0] = [f"Return-Path: <{envelope.sender}>", f"Delivered-To: {recipient[0]}"]
        end = "\r\n" if self.settings.crlf else "\n"
        return "".join(line + end for line in lines).encode("utf-8")

    async def _run(
        self,
        entry: QueueEntry,
        command: Command,
        program: str,
        credentials: tuple[int | None, int | None],
        message: IO[bytes],
        recipient: tuple[Mailbox, Mailbox] | None,
    ) -> tuple[DeliveryStatus, Reply]:
        values = self._values(entry, recipient)
        try:
            argv = command.expand(values)
        except UnsafeArgument as error:
            detail = "5.1.7" if error.variable == "sender" else "5.1.3"
            self.log.info("{queue_id}: not running {command}: {reason}",
                          queue_id=entry.queue_id, command=command.program, reason=str(error))
            return DeliveryStatus.PERMANENT, Reply(
                550, detail, f"Address unsafe as an argument of command {command.program}")
        environment = {"PATH": PATH, "SENDER": values["sender"], "QUEUE_ID": entry.queue_id}
        if recipient is not None:
            environment.update(RECIPIENT=values["recipient"], ORIGINAL_RECIPIENT=values["original"],
                               USER=values["user"], DOMAIN=values["domain"])
        message.seek(0)
        uid, gid = credentials
        process = _CommandProcess(self.reactor, self.settings.timeout, self.settings.max_stderr)
        try:
            transport = self.reactor.spawnProcess(
                process, program, list(argv), environment, self.settings.directory,
                uid=uid, gid=gid, childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as error:
            self.log.error("{queue_id}: cannot start {command}: {reason}",
                           queue_id=entry.queue_id, command=program, reason=error.strerror)
            return DeliveryStatus.TRANSIENT, Reply(
                451, "4.3.0", f"Cannot run command {command.program}: {error.strerror}")
        feeding = Deferred.fromCoroutine(
            self._feed(transport, process, self._prefix(entry, recipient), message))
        await process.ended
        await feeding
        status, reply = self._outcome(command.program, process)
        self.log.info(
            "{queue_id}: {command} for {recipient}: {reply}", queue_id=entry.queue_id,
            command=command.program, recipient=values.get("recipient", "all recipients"),
            status=status.value, reply=reply,
        )
        return status, reply

    async def _feed(
        self, transport: Any, process: _CommandProcess, prefix: bytes, message: IO[bytes]
    ) -> None:
        """Write *prefix* and *message* to the command's standard input, then close it."""
        feed = process.feed
        ends = None if self.settings.crlf else _LineEnds()
        try:
            if prefix:
                transport.write(prefix)
            while feed.open:
                chunk = await deferToThreadPool(
                    self.reactor, self.threadpool, message.read, CHUNK_SIZE)
                if not chunk:
                    if ends is not None and feed.open:
                        transport.write(ends.flush())
                    break
                await feed.writable()
                if feed.open:
                    transport.write(ends.convert(chunk) if ends is not None else chunk)
        except Exception:
            # The command must not take a message cut short for a whole one.
            self.log.failure("Cannot read the message for a pipe command")
            process.abort()
        finally:
            transport.unregisterProducer()
            transport.closeStdin()

    def _outcome(self, program: str, process: _CommandProcess) -> tuple[DeliveryStatus, Reply]:
        reason = _clean(bytes(process.stderr))
        suffix = f": {reason}" if reason else ""
        if process.aborted:
            return DeliveryStatus.TRANSIENT, Reply(451, "4.3.0", "Cannot read the queued message")
        if process.timed_out:
            return DeliveryStatus.TRANSIENT, Reply(
                451, "4.3.0",
                f"Command {program} timed out after {process.timeout:g}s{suffix}")
        exit_code = getattr(process.reason, "exitCode", None)
        signal_number = getattr(process.reason, "signal", None)
        if signal_number:
            return DeliveryStatus.TRANSIENT, Reply(
                451, "4.3.0",
                f"Command {program} killed by {_signal_name(signal_number)}{suffix}")
        if exit_code is None:
            return DeliveryStatus.TRANSIENT, Reply(
                451, "4.3.0", f"Command {program} ended without an exit status{suffix}")
        return exit_reply(program, exit_code, bytes(process.stderr))


def _fail(
    items: Sequence[tuple[Mailbox, Mailbox]], reply: Reply, status: DeliveryStatus
) -> list[RecipientResult]:
    return [RecipientResult(r, status, reply, original=o) for r, o in items]


def credentials(user: str, group: str) -> tuple[int | None, int | None]:
    """
    The uid and gid of the ``user`` and ``group`` settings, each a name or a
    number known to the system; without a group, the user's own.

    :raises SettingError: for an unknown user or group, or a group without
        a user.
    """
    if not user:
        if group:
            raise SettingError("group", "a group needs a user as well")
        return None, None
    try:
        account = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise SettingError("user", f"no user {user!r} on this system") from None
    if not group:
        return account.pw_uid, account.pw_gid
    try:
        found = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        raise SettingError("group", f"no group {group!r} on this system") from None
    return account.pw_uid, found.gr_gid


def _build(settings: Mapping[str, Any], context: Any) -> PipeTransport:
    uid, gid = credentials(settings["user"], settings["group"])
    return PipeTransport(
        context.store,
        context.reactor,
        context.reactor.getThreadPool(),
        PipeSettings(
            timeout=settings["timeout"],
            crlf=settings["crlf"],
            delivered_to=settings["delivered_to"],
            uid=uid,
            gid=gid,
            directory=settings["directory"],
            max_stderr=settings["max_stderr"],
        ),
    )


#: The ``pipe`` transport: routes give it ``{"command": "..."}``.
pipe_maker = ComponentMaker(
    kind="transport",
    name="pipe",
    description="Delivers by running a command with the message on its standard input",
    factory=_build,
    schema={
        "timeout": Setting(
            "duration", 600.0,
            "How long a command may run before it is killed and the delivery deferred.",
            minimum=1),
        "crlf": Setting(
            "boolean", False,
            "Give the message to commands with CRLF line ends instead of LF."),
        "delivered_to": Setting(
            "boolean", True,
            "Put Return-Path: and Delivered-To: before the message when a command runs"
            " for one recipient."),
        "user": Setting(
            "string", "",
            "The user (name or number) that commands run as; the server must run as root"
            " to switch to it. Empty: the server's own user."),
        "group": Setting(
            "string", "",
            "The group (name or number) that commands run as; empty: the user's own group."),
        "directory": Setting(
            "path", "/", "The working directory of commands."),
        "max_stderr": Setting(
            "integer", 2048,
            "Octets of a command's standard error kept as the reason of its result.",
            minimum=0),
    },
)

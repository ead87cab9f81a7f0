"""
Tests for the pipe transport: its parts on fake time with a fake process,
then whole deliveries to real commands (small Python programs run with
``sys.executable``) on the real reactor.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pwd
import random
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailframe.address import Mailbox
from mailframe.components import SettingError
from mailframe.config import ComponentContext
from mailframe.envelope import DeliveryStatus, QueueEntry, RecipientResult, Route
from mailframe.reply import Reply
from mailframe.testing import (
    ComponentMakerContract,
    MemoryQueueStore,
    TransportContract,
    envelope,
)
from mailframe.transports.pipe import (
    DRAIN_GRACE,
    KILL_GRACE,
    PATH,
    Command,
    CommandError,
    PipeSettings,
    PipeTransport,
    UnsafeArgument,
    _LineEnds,
    credentials,
    exit_reply,
    pipe_maker,
)

MESSAGE = b"Received: by relay.example\r\nSubject: hi\r\n\r\nline one\r\n.line two\r\n"
MESSAGE_LF = MESSAGE.replace(b"\r\n", b"\n")
PROGRAM = os.path.basename(sys.executable)

#: Writes its arguments, environment, directory and standard input to a
#: JSON file named by its pid in the directory of its first argument.
RECORD = """
import json, os, sys
data = sys.stdin.buffer.read()
record = {"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd(),
          "stdin": data.decode("latin-1")}
with open(os.path.join(sys.argv[1], "%d.json" % os.getpid()), "w") as f:
    json.dump(record, f)
"""


def python(code: str, *args: str) -> str:
    """A command running *code* with the test's Python and *args*."""
    return shlex.join([sys.executable, "-c", code, *args])


def queued(store: MemoryQueueStore, message: bytes, sender: str, *recipients: str,
           **fields: Any) -> QueueEntry:
    writer = store.open_writer()
    writer.write(message)
    queue_id = writer.commit(envelope(sender, *recipients, **fields)).result
    assert isinstance(queue_id, str)
    entry = store.get(queue_id).result
    assert isinstance(entry, QueueEntry)
    return entry


def real_pool() -> Any:
    """The real reactor's thread pool."""
    return reactor.getThreadPool()  # type: ignore[attr-defined]


def pairs(entry: QueueEntry) -> list[tuple[Mailbox, Mailbox]]:
    return [(r, r) for r in entry.envelope.recipients]


# -- the command line -------------------------------------------------------------------


class CommandTests(SynchronousTestCase):
    def test_split_as_a_shell_would(self) -> None:
        command = Command.parse("""/usr/bin/deliver -a 'two words' "x y" a\\ b""")
        self.assertEqual(command.argv, ("/usr/bin/deliver", "-a", "two words", "x y", "a b"))
        self.assertEqual(command.program, "deliver")

    def test_refused(self) -> None:
        for text in ("", "   ", "/bin/x 'unbalanced", "/bin/x ${nope}", "/bin/x ${}",
                     "/bin/x ${user", "${user}/bin", "/bin/${queue_id}"):
            with self.assertRaises(CommandError, msg=text):
                Command.parse(text)

    def test_per_recipient(self) -> None:
        for name in ("recipient", "original", "user", "domain"):
            self.assertTrue(Command.parse(f"/bin/x --to=${{{name}}}").per_recipient, name)
        self.assertFalse(Command.parse("/bin/x -f ${sender} ${queue_id}").per_recipient)
        self.assertFalse(Command.parse("/bin/x $user $HOME").per_recipient)

    def test_values_stay_one_word(self) -> None:
        command = Command.parse("/bin/x ${recipient} 'at ${domain}!' -f${sender}")
        values = {"recipient": '"a b; $(id) `x` > y"@example.com', "domain": "example.com",
                  "sender": "-s@example.org"}
        self.assertEqual(command.expand(values), (
            "/bin/x", '"a b; $(id) `x` > y"@example.com', "at example.com!",
            "-f-s@example.org"))

    def test_no_value_starts_an_option(self) -> None:
        command = Command.parse("/bin/x --to=${recipient} ${recipient}")
        with self.assertRaises(UnsafeArgument) as caught:
            command.expand({"recipient": "-oQ/tmp@example.com"})
        self.assertEqual(caught.exception.variable, "recipient")
        self.assertEqual(Command.parse("/bin/x --to=${recipient}").expand(
            {"recipient": "-oQ/tmp@example.com"}), ("/bin/x", "--to=-oQ/tmp@example.com"))


class ExitStatusTests(SynchronousTestCase):
    def test_sysexits(self) -> None:
        cases = {
            0: (DeliveryStatus.DELIVERED, 250, "2.0.0"),
            75: (DeliveryStatus.TRANSIENT, 451, "4.3.0"),
            67: (DeliveryStatus.PERMANENT, 550, "5.1.1"),
            69: (DeliveryStatus.PERMANENT, 550, "5.3.0"),
            70: (DeliveryStatus.PERMANENT, 550, "5.3.0"),
            71: (DeliveryStatus.PERMANENT, 550, "5.3.0"),
            77: (DeliveryStatus.PERMANENT, 550, "5.7.0"),
            78: (DeliveryStatus.PERMANENT, 550, "5.3.5"),
            1: (DeliveryStatus.PERMANENT, 550, "5.3.0"),
            255: (DeliveryStatus.PERMANENT, 550, "5.3.0"),
        }
        for code, (status, reply_code, enhanced) in cases.items():
            got_status, reply = exit_reply("procmail", code)
            self.assertEqual((got_status, reply.code, reply.status),
                             (status, reply_code, enhanced), code)

    def test_text_names_the_status_and_keeps_stderr(self) -> None:
        _, reply = exit_reply("procmail", 67, b"procmail: Unknown user \"bob\"\n")
        self.assertEqual(reply.text, (
            'Command procmail exited with status 67 (EX_NOUSER: user unknown):'
            ' procmail: Unknown user "bob"',))
        _, reply = exit_reply("filter", 3)
        self.assertEqual(reply.text, ("Command filter exited with status 3",))

    def test_stderr_made_one_clean_line(self) -> None:
        _, reply = exit_reply("x", 75, b"one\r\ntwo\x00\x1b[31m\tthree\xff\n\n")
        self.assertEqual(reply.text, (
            "Command x exited with status 75 (EX_TEMPFAIL: temporary failure):"
            " one two [31m three\ufffd",))


class LineEndTests(SynchronousTestCase):
    def test_every_split_point(self) -> None:
        data = b"a\r\nb\rc\r\n\r\n.\r\r\n"
        for split in range(len(data) + 1):
            ends = _LineEnds()
            out = ends.convert(data[:split]) + ends.convert(data[split:]) + ends.flush()
            self.assertEqual(out, b"a\nb\rc\n\n.\r\n", split)

    def test_one_byte_at_a_time(self) -> None:
        ends = _LineEnds()
        out = b"".join(ends.convert(data[i:i + 1]) for data in [MESSAGE]
                       for i in range(len(data)))
        self.assertEqual(out + ends.flush(), MESSAGE_LF)


class CredentialTests(SynchronousTestCase):
    def test_none(self) -> None:
        self.assertEqual(credentials("", ""), (None, None))

    def test_names_and_numbers(self) -> None:
        account = pwd.getpwuid(os.getuid())
        self.assertEqual(credentials(account.pw_name, ""), (account.pw_uid, account.pw_gid))
        self.assertEqual(credentials(str(account.pw_uid), str(os.getgid())),
                         (account.pw_uid, os.getgid()))

    def test_unknown(self) -> None:
        for user, group, key in (("no-such-user-here", "", "user"),
                                 (str(os.getuid()), "no-such-group-here", "group"),
                                 ("", "0", "group")):
            with self.assertRaises(SettingError) as caught:
                credentials(user, group)
            self.assertEqual(caught.exception.key, key)


# -- on fake time, with a fake process ---------------------------------------------------


class FakeProcess:
    """A process transport that records what the transport does with it."""

    def __init__(self, pause_on_write: bool = False) -> None:
        self.pause_on_write = pause_on_write
        self.producer: Any = None
        self.written: list[bytes] = []
        self.signals: list[str] = []
        self.stdin_closed = False
        self.lost = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert not self.stdin_closed
        self.written.append(data)
        if self.pause_on_write and self.producer is not None:
            self.producer.pauseProducing()

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def loseConnection(self) -> None:
        self.lost = True


@attrs.define
class Spawned:
    protocol: Any
    executable: str
    args: list[str]
    env: dict[str, str]
    path: str
    uid: int | None
    gid: int | None
    child_fds: dict[int, str]
    process: FakeProcess


class FakeProcessReactor(Clock):
    """A clock with ``spawnProcess`` and ``callFromThread``."""

    def __init__(self, pause_on_write: bool = False) -> None:
        super().__init__()
        self.pause_on_write = pause_on_write
        self.spawned: list[Spawned] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],
                     env: dict[str, str], path: str, uid: int | None = None,
                     gid: int | None = None, childFDs: dict[int, str] | None = None) -> Any:
        process = FakeProcess(self.pause_on_write)
        self.spawned.append(Spawned(protocol, executable, args, env, path, uid, gid,
                                    childFDs or {}, process))
        protocol.makeConnection(process)
        return process

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class ImmediateThreadPool:
    """Runs each call at once, in the caller's thread."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def exited(spawned: Spawned, code: int = 0, signal_number: int | None = None) -> None:
    """The fake command ends with *code*, or killed by *signal_number*."""
    reason: Exception = (ProcessDone(0) if code == 0 and signal_number is None
                         else ProcessTerminated(code or None, signal_number))
    spawned.protocol.processExited(Failure(reason))
    spawned.protocol.processEnded(Failure(reason))


class FakeProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.store = MemoryQueueStore(Clock())
        self.entry = queued(self.store, MESSAGE, "s@example.org", "alice@example.com",
                            "bob@example.com", added_headers=("X-Spam: no",))

    def transport(self, **settings: Any) -> PipeTransport:
        return PipeTransport(self.store, self.reactor, ImmediateThreadPool(),  # type: ignore[arg-type]
                             PipeSettings(**settings))

    def deliver(self, command: str, **settings: Any) -> Deferred[list[RecipientResult]]:
        route = Route("pipe", {"command": command})
        return self.transport(**settings).deliver(self.entry, pairs(self.entry), route)

    def test_how_it_runs(self) -> None:
        d = self.deliver(f"{sys.executable} -f ${{sender}} --to=${{recipient}} ${{queue_id}}",
                         directory="/tmp", uid=None)
        first = self.reactor.spawned[0]
        self.assertEqual(first.executable, sys.executable)
        self.assertEqual(first.args, [sys.executable, "-f", "s@example.org",
                                      "--to=alice@example.com", self.entry.queue_id])
        self.assertEqual(first.env, {
            "PATH": PATH, "SENDER": "s@example.org", "QUEUE_ID": self.entry.queue_id,
            "RECIPIENT": "alice@example.com", "ORIGINAL_RECIPIENT": "alice@example.com",
            "USER": "alice", "DOMAIN": "example.com",
        })
        self.assertEqual((first.path, first.uid, first.gid), ("/tmp", None, None))
        self.assertEqual(first.child_fds, {0: "w", 1: "r", 2: "r"})
        self.assertEqual(b"".join(first.process.written),
                         b"Return-Path: <s@example.org>\nDelivered-To: alice@example.com\n"
                         b"X-Spam: no\n" + MESSAGE_LF)
        self.assertTrue(first.process.stdin_closed)
        self.assertNoResult(d)
        exited(first)
        # One recipient after the other: bob's run starts once alice's ends.
        self.assertEqual(len(self.reactor.spawned), 2)
        exited(self.reactor.spawned[1], 67)
        alice, bob = self.successResultOf(d)
        self.assertEqual(alice.status, DeliveryStatus.DELIVERED)
        self.assertEqual((bob.status, bob.reply.status), (DeliveryStatus.PERMANENT, "5.1.1"))

    def test_writes_wait_while_the_pipe_is_full(self) -> None:
        self.reactor.pause_on_write = True
        big = b"x" * (3 * 65536) + b"tail\r\n"
        self.entry = queued(self.store, big, "s@example.org", "alice@example.com")
        d = self.deliver(f"{sys.executable} ${{queue_id}}", crlf=True)
        process = self.reactor.spawned[0].process
        self.assertEqual(process.written, [big[:65536]])
        for count in (2, 3):
            process.producer.resumeProducing()
            self.assertEqual(len(process.written), count)
            self.assertFalse(process.stdin_closed)
        process.producer.resumeProducing()
        self.assertEqual(len(process.written), 4)
        self.assertTrue(process.stdin_closed)
        self.assertEqual(b"".join(process.written), big)
        exited(self.reactor.spawned[0])
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)

    def test_timeout_terms_then_kills(self) -> None:
        d = self.deliver(f"{sys.executable} ${{queue_id}}", timeout=30)
        spawned = self.reactor.spawned[0]
        self.reactor.advance(29.9)
        self.assertEqual(spawned.process.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(spawned.process.signals, ["TERM"])
        self.reactor.advance(KILL_GRACE)
        self.assertEqual(spawned.process.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        exited(spawned, signal_number=signal.SIGKILL)
        results = self.successResultOf(d)
        self.assertEqual({(r.status, r.reply.code, r.reply.status) for r in results},
                         {(DeliveryStatus.TRANSIENT, 451, "4.3.0")})
        self.assertIn("timed out after 30s", results[0].reply.text[0])

    def test_no_signal_once_exited(self) -> None:
        d = self.deliver(f"{sys.executable} ${{queue_id}}", timeout=30)
        exited(self.reactor.spawned[0])
        self.reactor.advance(60)
        self.assertEqual(self.reactor.spawned[0].process.signals, [])
        self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_output_held_open_after_exit(self) -> None:
        d = self.deliver(f"{sys.executable} ${{queue_id}}")
        spawned = self.reactor.spawned[0]
        spawned.protocol.childDataReceived(2, b"went on in the background")
        spawned.protocol.processExited(Failure(ProcessTerminated(75)))
        self.assertNoResult(d)
        self.reactor.advance(DRAIN_GRACE)
        self.assertTrue(spawned.process.lost)
        result = self.successResultOf(d)[0]
        self.assertEqual(result.status, DeliveryStatus.TRANSIENT)
        self.assertTrue(result.reply.text[0].endswith(": went on in the background"))

    def test_stderr_bounded(self) -> None:
        d = self.deliver(f"{sys.executable} ${{queue_id}}", max_stderr=10)
        spawned = self.reactor.spawned[0]
        for _ in range(1000):
            spawned.protocol.childDataReceived(2, b"0123456")
            spawned.protocol.childDataReceived(1, b"thrown away" * 100)
        exited(spawned, 1)
        self.assertTrue(self.successResultOf(d)[0].reply.text[0].endswith(": 0123456012"))

    def test_unreadable_message_kills_the_command(self) -> None:
        class Broken:
            def __init__(self) -> None:
                self.closed = False

            def seek(self, offset: int) -> None:
                pass

            def read(self, size: int) -> bytes:
                raise OSError(5, "Input/output error")

            def close(self) -> None:
                self.closed = True

        broken = Broken()
        self.patch(self.store, "open_message", lambda queue_id: succeed(broken))
        d = self.deliver(f"{sys.executable} ${{queue_id}}")
        spawned = self.reactor.spawned[0]
        self.assertEqual(spawned.process.signals, ["KILL"])
        self.assertTrue(spawned.process.stdin_closed)
        exited(spawned, signal_number=signal.SIGKILL)
        result = self.successResultOf(d)[0]
        self.assertEqual((result.status, result.reply.status), (DeliveryStatus.TRANSIENT, "4.3.0"))
        self.assertTrue(broken.closed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_unsafe_address_not_run(self) -> None:
        self.entry = queued(self.store, MESSAGE, "-s@example.org", "-r@example.com",
                            "alice@example.com")
        d = self.deliver(f"{sys.executable} ${{recipient}}")
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(self.reactor.spawned[0].args[1:], ["alice@example.com"])
        exited(self.reactor.spawned[0])
        bad, good = self.successResultOf(d)
        self.assertEqual((bad.status, bad.reply.status), (DeliveryStatus.PERMANENT, "5.1.3"))
        self.assertEqual(good.status, DeliveryStatus.DELIVERED)
        d = self.deliver(f"{sys.executable} ${{sender}}")
        self.assertEqual({r.reply.status for r in self.successResultOf(d)}, {"5.1.7"})
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_misconfigured_routes_defer(self) -> None:
        for command in ("", "/no/such/program", "no-such-program-anywhere", "bin/sh",
                        "/bin/sh 'unbalanced", "/bin/sh ${nope}", "/etc/passwd"):
            results = self.successResultOf(self.deliver(command))
            self.assertEqual({(r.status, r.reply.status) for r in results},
                             {(DeliveryStatus.TRANSIENT, "4.3.5")}, command)
        results = self.successResultOf(self.deliver("sh", directory="/no/such/directory"))
        self.assertEqual({r.reply.status for r in results}, {"4.3.5"})
        self.assertEqual(self.reactor.spawned, [])

    def test_rejected_route(self) -> None:
        reply = Reply(550, "5.1.1", "No such user")
        route = Route("pipe", {"command": "/bin/sh"}, reject=reply)
        results = self.successResultOf(
            self.transport().deliver(self.entry, pairs(self.entry), route))
        self.assertEqual({(r.status, r.reply) for r in results},
                         {(DeliveryStatus.PERMANENT, reply)})

    def test_switching_user_needs_root(self) -> None:
        if os.geteuid() == 0:
            d = self.deliver("/bin/sh", uid=65534, gid=65534)
            spawned = self.reactor.spawned[0]
            self.assertEqual((spawned.uid, spawned.gid), (65534, 65534))
            exited(spawned)
            self.assertEqual(self.successResultOf(d)[0].status, DeliveryStatus.DELIVERED)
            return
        results = self.successResultOf(self.deliver("/bin/sh", uid=os.geteuid() + 1))
        self.assertEqual({r.reply.status for r in results}, {"4.3.5"})
        d = self.deliver("/bin/sh", uid=os.geteuid(), gid=os.getegid())
        self.assertEqual(self.reactor.spawned[0].uid, None)
        exited(self.reactor.spawned[0])
        self.successResultOf(d)


# -- real commands ---------------------------------------------------------------------


class PipeContractTests(TransportContract, TestCase):
    def setUp(self) -> None:
        self.store = MemoryQueueStore(Clock())
        self.entry = queued(self.store, MESSAGE, "s@example.org", "alice@example.com")

    def make_transport(self) -> PipeTransport:
        return PipeTransport(self.store, reactor, real_pool())

    def sample_delivery(self) -> tuple[QueueEntry, list[tuple[Mailbox, Mailbox]], Route]:
        route = Route("pipe", {"command": python("import sys; sys.stdin.read()")})
        return self.entry, pairs(self.entry), route

    def wait(self, d: object) -> object:
        return d

    async def test_one_result_per_recipient(self) -> None:  # type: ignore[override]
        entry, recipients, route = self.sample_delivery()
        results = await self.make_transport().deliver(entry, recipients, route)
        self.assertEqual([r.recipient for r in results], [r for r, _ in recipients])


class RealCommandTests(TestCase):
    def setUp(self) -> None:
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        self.out = pathlib.Path(work)
        self.store = MemoryQueueStore(Clock())

    def transport(self, **settings: Any) -> PipeTransport:
        return PipeTransport(self.store, reactor, real_pool(),
                             PipeSettings(**settings))

    async def deliver(self, command: str, recipients: Sequence[str] = ("alice@example.com",),
                      message: bytes = MESSAGE, sender: str = "s@example.org",
                      **settings: Any) -> list[RecipientResult]:
        entry = queued(self.store, message, sender, *recipients)
        route = Route("pipe", {"command": command})
        return await self.transport(**settings).deliver(entry, pairs(entry), route)

    def records(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.out.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
            found.append(json.loads(path.read_text()))
        return found

    async def test_delivered_exactly(self) -> None:
        results = await self.deliver(python(RECORD, str(self.out), "${recipient}"))
        self.assertEqual([(r.status, r.reply.code, r.reply.status) for r in results],
                         [(DeliveryStatus.DELIVERED, 250, "2.0.0")])
        [record] = self.records()
        self.assertEqual(record["stdin"].encode("latin-1"),
                         b"Return-Path: <s@example.org>\nDelivered-To: alice@example.com\n"
                         + MESSAGE_LF)
        self.assertEqual(record["argv"], ["alice@example.com"])
        self.assertEqual(record["cwd"], "/")
        env = {k: v for k, v in record["env"].items() if k != "LC_CTYPE"}
        self.assertEqual(env["PATH"], PATH)
        self.assertEqual(env["SENDER"], "s@example.org")
        self.assertEqual(env["RECIPIENT"], "alice@example.com")
        self.assertEqual(env["USER"], "alice")
        self.assertEqual(set(env), {"PATH", "SENDER", "QUEUE_ID", "RECIPIENT",
                                    "ORIGINAL_RECIPIENT", "USER", "DOMAIN"})

    async def test_crlf_and_no_trace_fields(self) -> None:
        await self.deliver(python(RECORD, str(self.out), "${recipient}"), crlf=True,
                           delivered_to=False)
        [record] = self.records()
        self.assertEqual(record["stdin"].encode("latin-1"), MESSAGE)

    async def test_one_run_per_recipient_without_injection(self) -> None:
        tricky = ['"a b"@example.com', '"x;$(touch /tmp/pwned)`id`|y"@example.com',
                  '"it\'s"@example.com', "-oQ/tmp@example.com", "plain@example.com"]
        results = await self.deliver(
            python(RECORD, str(self.out), "${recipient}", "--user=${user}", "${domain}"),
            tricky, sender="")
        statuses = [(r.status, r.reply.status) for r in results]
        self.assertEqual(statuses, [(DeliveryStatus.DELIVERED, "2.0.0")] * 3
                         + [(DeliveryStatus.PERMANENT, "5.1.3"),
                            (DeliveryStatus.DELIVERED, "2.0.0")])
        records = self.records()
        self.assertEqual([r["argv"] for r in records], [
            ['"a b"@example.com', "--user=a b", "example.com"],
            ['"x;$(touch /tmp/pwned)`id`|y"@example.com', "--user=x;$(touch /tmp/pwned)`id`|y",
             "example.com"],
            ["it's@example.com", "--user=it's", "example.com"],
            ["plain@example.com", "--user=plain", "example.com"],
        ])
        self.assertEqual([r["env"]["RECIPIENT"] for r in records],
                         [r["argv"][0] for r in records])
        self.assertEqual({r["env"]["SENDER"] for r in records}, {""})
        self.assertTrue(records[0]["stdin"].startswith(
            'Return-Path: <>\nDelivered-To: "a b"@example.com\n'))

    async def test_group_run(self) -> None:
        recipients = ["a@example.com", "b@example.com", "c@example.net"]
        results = await self.deliver(python(RECORD, str(self.out), "${sender}"), recipients)
        self.assertEqual([r.recipient for r in results], [Mailbox.parse(r) for r in recipients])
        self.assertEqual({r.status for r in results}, {DeliveryStatus.DELIVERED})
        [record] = self.records()
        self.assertEqual(record["stdin"].encode("latin-1"), MESSAGE_LF)
        self.assertNotIn("RECIPIENT", record["env"])

    async def test_tempfail_keeps_stderr(self) -> None:
        script = "import sys; sys.stdin.read(); sys.stderr.write('mailbox locked\\n'); exit(75)"
        results = await self.deliver(python(script), ["a@example.com", "b@example.com"])
        self.assertEqual({(r.status, r.reply) for r in results}, {(
            DeliveryStatus.TRANSIENT, Reply(451, "4.3.0", f"Command {PROGRAM} exited with status"
                                            " 75 (EX_TEMPFAIL: temporary failure): mailbox locked"),
        )})

    async def test_no_such_user(self) -> None:
        script = "import sys; sys.stderr.write('no user %s' % sys.argv[1]); exit(67)"
        [result] = await self.deliver(python(script, "${user}"))
        self.assertEqual((result.status, result.reply.code, result.reply.status),
                         (DeliveryStatus.PERMANENT, 550, "5.1.1"))
        self.assertIn("EX_NOUSER", result.reply.text[0])
        self.assertTrue(result.reply.text[0].endswith(": no user alice"))

    async def test_other_status_bounces(self) -> None:
        [result] = await self.deliver(python("exit(3)"))
        self.assertEqual((result.status, result.reply.code, result.reply.status),
                         (DeliveryStatus.PERMANENT, 550, "5.3.0"))

    async def test_killed_by_a_signal(self) -> None:
        script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        [result] = await self.deliver(python(script))
        self.assertEqual((result.status, result.reply.status),
                         (DeliveryStatus.TRANSIENT, "4.3.0"))
        self.assertIn("killed by SIGKILL", result.reply.text[0])

    async def test_timeout_kills(self) -> None:
        pid_file = self.out / "pid"
        script = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid()));"
                  " time.sleep(60)")
        [result] = await self.deliver(python(script, str(pid_file)), timeout=0.5)
        self.assertEqual((result.status, result.reply.status),
                         (DeliveryStatus.TRANSIENT, "4.3.0"))
        self.assertIn("timed out after 0.5s", result.reply.text[0])
        with self.assertRaises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)

    async def test_large_message_streamed(self) -> None:
        line = b"".join(bytes([33 + i % 90]) for i in range(997)) + b"\r\n"
        message = b"Subject: big\r\n\r\n" + line * 4096  # about 4 MB
        script = ("import hashlib, sys; h = hashlib.sha256(); n = 0\n"
                  "while True:\n"
                  "    b = sys.stdin.buffer.read(7777)\n"
                  "    if not b: break\n"
                  "    h.update(b); n += len(b)\n"
                  "open(sys.argv[1], 'w').write('%d %s' % (n, h.hexdigest()))")
        digest = self.out / "digest"
        [result] = await self.deliver(python(script, str(digest)), message=message,
                                      delivered_to=False)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        expected = message.replace(b"\r\n", b"\n")
        self.assertEqual(digest.read_text(),
                         f"{len(expected)} {hashlib.sha256(expected).hexdigest()}")

    async def test_exit_without_reading(self) -> None:
        [result] = await self.deliver(python("pass"), message=MESSAGE * 100_000)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)

    async def test_background_child_holding_output(self) -> None:
        pid_file = self.out / "pid"
        script = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c',"
                  " 'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(p.pid))")
        [result] = await self.deliver(python(script, str(pid_file)))
        self.addCleanup(_kill, int(pid_file.read_text()))
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)

    async def test_no_inherited_descriptors(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc/self/fd")
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        listing = self.out / "fds"
        script = ("import os, sys; fds = sorted(int(f) for f in os.listdir('/proc/self/fd'));"
                  " open(sys.argv[1], 'w').write(' '.join(map(str, fds)))")
        await self.deliver(python(script, str(listing)))
        # 0, 1, 2, and the descriptor that listed the directory.
        self.assertEqual(listing.read_text().split()[:3], ["0", "1", "2"])
        self.assertLessEqual(len(listing.read_text().split()), 4)

    async def test_runs_as_the_user(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("only root can run commands as another user")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        uid, gid = credentials("nobody", "")
        [result] = await self.deliver("/bin/sh -c 'id -u >&2; id -g >&2; exit 75'",
                                      uid=uid, gid=gid)
        self.assertTrue(result.reply.text[0].endswith(f": {nobody.pw_uid} {nobody.pw_gid}"))

    async def test_program_found_in_path(self) -> None:
        [result] = await self.deliver("sh -c 'exit 0'")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- the maker -------------------------------------------------------------------------


class PipeMakerTests(ComponentMakerContract, SynchronousTestCase):
    def make_maker(self) -> Any:
        return pipe_maker

    def make_context(self) -> ComponentContext:
        return ComponentContext(reactor=reactor, random=random.Random(),
                                store=MemoryQueueStore(Clock()))

    def test_builds_with_settings(self) -> None:
        account = pwd.getpwuid(os.getuid())
        transport = pipe_maker.build(
            {"timeout": "5m", "crlf": True, "delivered_to": False, "user": account.pw_name,
             "directory": "/tmp", "max_stderr": 100},
            self.make_context())
        self.assertIsInstance(transport, PipeTransport)
        self.assertEqual(transport.settings, PipeSettings(
            timeout=300.0, crlf=True, delivered_to=False, uid=account.pw_uid,
            gid=account.pw_gid, directory="/tmp", max_stderr=100))

    def test_defaults(self) -> None:
        transport = pipe_maker.build({}, self.make_context())
        self.assertEqual(transport.settings, PipeSettings())
        self.assertEqual((pipe_maker.kind, pipe_maker.name), ("transport", "pipe"))

    def test_bad_settings(self) -> None:
        for settings, key in (({"timeout": 0}, "timeout"), ({"crlf": "yes"}, "crlf"),
                              ({"max_stderr": -1}, "max_stderr"),
                              ({"user": "no-such-user-here"}, "user"),
                              ({"group": "root"}, "group")):
            with self.assertRaises(SettingError) as caught:
                pipe_maker.build(settings, self.make_context())
            self.assertEqual(caught.exception.key, key)

"""
Durability before ``250``, checked by tracing the real server's system calls.

``kill -9`` cannot show that a message was durable when it was acknowledged
(the page cache outlives a killed process), so this test runs
``twistd -n mailframe`` under ``strace -f`` and checks the order of the
system calls: for every message acknowledged with ``250 ... queued as ID``,
before the socket write of that reply began,

- ``fsync`` of the message's own file (``ID.msg``, which ends with the
  entry's envelope) returned, and before its rename began, so that a name
  in ``incoming/`` never stands for a partial file; with the spool's
  ``sync = "filesystem"``, a ``syncfs`` that began after the last write of
  the file returned did so instead;
- the entry was renamed from ``tmp/`` into the spool's ``incoming/``
  directory, once, and that rename returned;
- an ``fsync`` of ``incoming/`` that started after that rename returned
  (an ``fsync`` that started before it need not cover the new name);

and every ``fsync`` and ``syncfs`` ran on a thread other than the reactor's.

Each message is then delivered into a Maildir, and the same trace shows
that the delivered file was durable, and its name in ``new/`` too, before
the queue let the message go (the ``unlink`` of its ``active/`` file): an
``fsync`` of the file before its rename from ``tmp/`` into ``new/``, then
one of ``new/`` after it; or, with the ``maildir`` transport's ``sync =
"filesystem"``, a ``syncfs`` between the last write and the rename, and
another between the rename and the ``unlink``.

How the trace is read: with ``-f``, strace writes one line per system call
when nothing else happens in between, and otherwise splits it into
``name(args <unfinished ...>`` (at entry) and ``<... name resumed>...``
(at exit), in the order it sees the events. A thread stops at every entry
and exit until strace has printed it, so an exit that caused an event in
another thread (through the reactor's wake-up pipe) is printed before that
event. Line numbers therefore order the entries and exits of calls.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import smtplib
import subprocess
import threading
import time

import attrs
import pytest

from tests.interop.conftest import (
    Server,
    assert_orderly_exit,
    require,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.interop

MESSAGES = 20
CONNECTIONS = 5
TRACED = ("fsync,fdatasync,syncfs,rename,renameat,renameat2,write,sendto,sendmsg,writev,execve,"
          "unlink,unlinkat")

_LINE = re.compile(r"^(\d+) +(\d\d:\d\d:\d\d\.\d+) (.*)$")
_UNFINISHED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_FD = re.compile(r"^(\d+)<(.*?)>(?:,|$)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@attrs.define
class Call:
    """One system call: where its entry and exit were printed."""

    pid: int
    name: str
    args: str
    start: int
    end: int | None = None
    result: str | None = None
    started_at: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.split(" ", 1)[0] == "0"

    @property
    def fd_path(self) -> str | None:
        match = _FD.match(self.args)
        return match.group(2) if match else None

    def paths(self) -> list[str]:
        return _QUOTED.findall(self.args)


def parse_trace(text: str) -> list[Call]:
    calls: list[Call] = []
    open_calls: dict[int, Call] = {}
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if match is None:
            continue
        pid, stamp, rest = int(match.group(1)), match.group(2), match.group(3)
        if rest.startswith(("+++", "---")):
            continue
        if unfinished := _UNFINISHED.match(rest):
            call = Call(pid, unfinished.group(1), unfinished.group(2), index, started_at=stamp)
            open_calls[pid] = call
            calls.append(call)
        elif resumed := _RESUMED.match(rest):
            call = open_calls.pop(pid)
            assert call.name == resumed.group(1), line
            args, _, result = resumed.group(2).rpartition(") = ")
            call.args += args
            call.end, call.result = index, result
        elif whole := _CALL.match(rest):
            args, _, result = whole.group(2).rpartition(") = ")
            calls.append(Call(pid, whole.group(1), args, index, index, result, stamp))
    return calls


def traced_child(strace_pid: int, timeout: float = 30.0) -> int:
    """The pid of the program that strace started."""
    children = pathlib.Path(f"/proc/{strace_pid}/task/{strace_pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise AssertionError("strace started no program")


def send(port: int, count: int, first: int, replies: list[str],
         together: threading.Barrier) -> None:
    """
    Send *count* messages over one connection. Every connection sends its
    final dot when all have reached it (*together*), so that commits
    overlap as on a busy server.
    """
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("durable.example")
        for n in range(first, first + count):
            assert client.mail("sender@example.org")[0] == 250
            assert client.rcpt(f"user{n}@example.com")[0] == 250
            assert client.docmd("DATA")[0] == 354
            together.wait(60)
            client.send(f"Subject: durable {n}\r\n\r\nmessage {n}\r\n.\r\n".encode())
            code, reply = client.getreply()
            assert code == 250, reply
            replies.append(reply.decode())


@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_acknowledged_only_when_durable(tmp_path: pathlib.Path, sync: str) -> None:
    strace = require("strace")
    trace_file = tmp_path / "trace"
    config = tmp_path / "mailframe.toml"
    config.write_text(f'[plugins.spool]\nsync = "{sync}"\n[plugins.maildir]\nsync = "{sync}"\n')
    server: Server = start_server(
        tmp_path, extra=["--config", str(config)],
        wrap=[strace, "-f", "-yy", "-tt", "-e", f"trace={TRACED}", "-s", "256",
              "-o", str(trace_file)])
    try:
        twistd = traced_child(server.process.pid)
        replies: list[str] = []
        errors: list[BaseException] = []
        together = threading.Barrier(CONNECTIONS)

        def run(index: int) -> None:
            try:
                send(server.port, MESSAGES // CONNECTIONS, index * MESSAGES // CONNECTIONS,
                     replies, together)
            except BaseException as error:
                errors.append(error)
                together.abort()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert len(replies) == MESSAGES
        for n in range(MESSAGES):
            server.wait_delivered(f"user{n}", 1, timeout=60)
        # The queue lets each go once its delivery is recorded.
        wait_until(lambda: not list(server.queue.glob("active/*.msg")), 60,
                   "an empty active/")
    finally:
        # strace blocks fatal signals when it runs a program with -o; the
        # signal goes to the traced program, and strace exits after it.
        if server.process.poll() is None:
            try:
                os.kill(traced_child(server.process.pid, 5), signal.SIGTERM)
            except (AssertionError, OSError):
                pass
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    assert_orderly_exit(server)

    ids = [re.fullmatch(r"2\.0\.0 Ok: queued as (\S+)", r).group(1)  # type: ignore[union-attr]
           for r in replies]
    assert len(set(ids)) == MESSAGES
    calls = parse_trace(trace_file.read_text(errors="replace"))
    main = next(c.pid for c in calls if c.name == "execve" and c.ok)
    assert main == twistd
    covering, dir_syncs, fsyncs = check_trace(
        calls, ids, main, os.path.realpath(server.queue / "incoming"),
        os.path.realpath(server.queue / "tmp"), shared=sync == "filesystem")
    per_message = covering / MESSAGES
    print(f"\n{covering} directory fsyncs of incoming/ made {MESSAGES} messages durable"
          f" ({per_message:.2f} per message); {dir_syncs} of incoming/ in all;"
          f" {fsyncs} fsyncs in all")
    # Group commit: concurrent sessions share directory fsyncs.
    assert per_message < 1, "every message paid for a directory fsync of its own"
    if sync == "filesystem":
        spool = os.path.realpath(server.queue)
        syncfs = sum(1 for c in calls if c.name == "syncfs" and c.ok and c.fd_path == spool)
        print(f"{syncfs} syncfs of the spool made {MESSAGES} messages durable")
        assert syncfs < MESSAGES, "every message paid for a syncfs of its own"
    delivered = check_deliveries(
        calls, os.path.realpath(server.mail), os.path.realpath(server.queue / "active"),
        shared=sync == "filesystem")
    assert sorted(delivered) == sorted(ids)


def check_deliveries(calls: list[Call], mail: str, active: str, shared: bool) -> list[str]:
    """
    Assert, for every message delivered under *mail*, that its file and its
    name in ``new/`` were durable before the queue removed its entry from
    *active*; see the module's docstring.

    :return: the queue id of each delivered message.
    """
    syncs = [c for c in calls if c.name in ("fsync", "fdatasync", "syncfs")
             and c.ok and c.end is not None]
    renames = [c for c in calls if c.name.startswith("rename") and c.ok and c.end is not None]
    unlinks = [c for c in calls if c.name.startswith("unlink") and c.ok]
    found = []
    for path in sorted(pathlib.Path(mail).glob("*/new/*")):
        user, name = path.parent.parent.name, path.name
        queue_id = re.search(r" id (\S+?)[;\s]", path.read_text()).group(1)  # type: ignore[union-attr]
        found.append(queue_id)
        tmp, new = f"{mail}/{user}/tmp/{name}", f"{mail}/{user}/new/{name}"
        [rename] = [c for c in renames if c.paths() == [tmp, new]]
        [unlink] = [c for c in unlinks if c.paths() and c.paths()[-1] == f"{active}/{queue_id}.msg"]
        if shared:
            writes = [c.end for c in calls if c.name == "write" and c.end is not None
                      and c.fd_path == tmp]
            assert writes, f"{tmp} was never written"
            file_synced = any(c.name == "syncfs" and max(writes) < c.start
                              and c.end < rename.start for c in syncs)  # type: ignore[operator]
            name_synced = any(c.name == "syncfs" and rename.end < c.start  # type: ignore[operator]
                              and c.end < unlink.start for c in syncs)  # type: ignore[operator]
        else:
            file_synced = any(c.name == "fsync" and c.fd_path == tmp
                              and c.end < rename.start for c in syncs)  # type: ignore[operator]
            name_synced = any(c.name == "fsync" and c.fd_path == f"{mail}/{user}/new"
                              and rename.end < c.start  # type: ignore[operator]
                              and c.end < unlink.start for c in syncs)  # type: ignore[operator]
        assert file_synced, f"{new}: renamed into new/ before its file was durable"
        assert name_synced, f"{queue_id}: removed from the queue before {new} was durable"
    return found


def check_trace(
    calls: list[Call], ids: list[str], main: int, queue_dir: str, tmp_dir: str,
    shared: bool = False,
) -> tuple[int, int, int]:
    """
    Assert the order of the module's docstring for every queue id in *ids*.

    :param queue_dir: the directory a commit renames the entry into
        (``incoming/``), as the trace names it.
    :param shared: whether message files are made durable by ``syncfs``
        (``sync = "filesystem"``) rather than each by its own ``fsync``.
    :return: how many directory fsyncs of *queue_dir* covered the commits,
        how many there were in all, and how many fsyncs in all.
    """
    fsyncs = [c for c in calls if c.name in ("fsync", "fdatasync")]
    assert fsyncs, "no fsync traced at all"
    syncfs = [c for c in calls if c.name == "syncfs" and c.ok and c.end is not None]
    on_main = [c for c in fsyncs + syncfs if c.pid == main]
    assert not on_main, f"fsync on the reactor thread: {on_main[:3]}"
    dir_syncs = [c for c in fsyncs if c.fd_path == queue_dir and c.ok and c.end is not None]
    renames = [c for c in calls if c.name.startswith("rename") and c.ok and c.end is not None]
    socket_writes = [c for c in calls if c.name in ("write", "sendto", "sendmsg", "writev")
                     and (c.fd_path or "").startswith("TCP")]
    assert socket_writes and all(c.pid == main for c in socket_writes), "replies off the reactor"

    covering: set[int] = set()
    for queue_id in ids:
        acks = [c for c in socket_writes if f"queued as {queue_id}\\r\\n" in c.args]
        assert len(acks) == 1, f"{queue_id}: {len(acks)} socket writes of its 250"
        ack = acks[0]
        into_queue = [c for c in renames if c.paths()
                      and c.paths()[-1].startswith(f"{queue_dir}/{queue_id}.")]
        assert [c.paths() for c in into_queue] == [
            [f"{tmp_dir}/{queue_id}.msg", f"{queue_dir}/{queue_id}.msg"]], into_queue
        rename = into_queue[0]
        assert rename.end is not None and rename.end < ack.start, (
            f"{queue_id}: renamed after its 250")
        if shared:
            writes = [c.end for c in calls if c.name == "write" and c.end is not None
                      and c.fd_path == f"{tmp_dir}/{queue_id}.msg"]
            assert writes, f"{queue_id}.msg was never written"
            assert any(max(writes) < c.start and c.end is not None and c.end < rename.start
                       for c in syncfs), (
                f"{queue_id}.msg: renamed into {queue_dir} before a syncfs that began after"
                " its last write returned")
        else:
            own = [c for c in fsyncs if c.ok and c.end is not None and c.fd_path in (
                f"{tmp_dir}/{queue_id}.msg", f"{queue_dir}/{queue_id}.msg")]
            assert own, f"{queue_id}.msg was never fsynced"
            assert min(c.end for c in own if c.end is not None) < rename.start, (
                f"{queue_id}.msg: renamed into {queue_dir} before its fsync returned")
        syncs = [c for c in dir_syncs if c.start > rename.end]
        assert syncs, f"{queue_id}: no fsync of {queue_dir} after its rename"
        first = min(syncs, key=lambda c: c.start)
        assert first.end is not None and first.end < ack.start, (
            f"{queue_id}: 250 written (line {ack.start + 1}) before the fsync of {queue_dir}"
            f" that covers its rename returned (line {(first.end or 0) + 1})")
        covering.add(first.start)
    return len(covering), len(dir_syncs), len(fsyncs)


# A trace of one commit as strace -f -yy prints it, with the reactor (100)
# and a pool thread (101) interleaved; {ack} is where the 250 is written.
_SYNTHETIC = """\
100 10:00:00.000000 execve("/venv/bin/twistd", ["twistd"], 0x1 /* 1 vars */) = 0
101 10:00:00.000010 fsync(7</q/tmp/ID1.msg>) = 0
101 10:00:00.000020 close(7</q/tmp/ID1.msg>) = 0
101 10:00:00.000030 rename("/q/tmp/ID1.msg", "/q/incoming/ID1.msg") = 0
{early}101 10:00:00.000050 fsync(7</q/incoming> <unfinished ...>
100 10:00:00.000055 write(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "250 2.1.5 OK\\r\\n", 14) = 14
{ack}101 10:00:00.000060 <... fsync resumed>) = 0
{late}"""
_ACK = ('100 10:00:00.000070 sendto(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>,'
        ' "250 2.0.0 Ok: queued as ID1\\r\\n", 30, 0, NULL, 0) = 30\n')


@pytest.mark.parametrize(("where", "good"), [("late", True), ("ack", False), ("early", False)])
def test_the_trace_check_itself(where: str, good: bool) -> None:
    """The check passes on a correct trace and fails when the 250 comes too soon."""
    text = _SYNTHETIC.format(**{key: _ACK if key == where else ""
                                for key in ("early", "ack", "late")})
    calls = parse_trace(text)

    def check() -> tuple[int, int, int]:
        return check_trace(calls, ["ID1"], 100, "/q/incoming", "/q/tmp")

    if good:
        assert check() == (1, 1, 2)
    else:
        with pytest.raises(AssertionError):
            check()
    # An fsync on the reactor thread fails the check too.
    with pytest.raises(AssertionError, match="reactor thread"):
        check_trace(parse_trace(text.replace("101 10:00:00.000010", "100 10:00:00.000010")),
                    ["ID1"], 100, "/q/incoming", "/q/tmp")


_SYNC_BEFORE_RENAME = _SYNTHETIC.replace(
    '101 10:00:00.000030 rename("/q/tmp/ID1.msg", "/q/incoming/ID1.msg") = 0\n'
    "{early}101 10:00:00.000050 fsync(7</q/incoming> <unfinished ...>\n",
    "101 10:00:00.000050 fsync(7</q/incoming> <unfinished ...>\n"
    '102 10:00:00.000051 rename("/q/tmp/ID1.msg", "/q/incoming/ID1.msg") = 0\n{early}',
)
_RENAME_BEFORE_FSYNC = _SYNTHETIC.replace(
    "101 10:00:00.000010 fsync(7</q/tmp/ID1.msg>) = 0\n", ""
).replace("{early}", "{early}101 10:00:00.000040 fsync(7</q/incoming/ID1.msg>) = 0\n")


@pytest.mark.parametrize(
    ("trace", "problem"),
    [(_SYNC_BEFORE_RENAME, "no fsync of /q/incoming after its rename"),
     (_RENAME_BEFORE_FSYNC, "before its fsync returned")],
)
def test_the_trace_check_wants_the_order(trace: str, problem: str) -> None:
    """
    A directory fsync that began before the rename does not cover it, and
    the message file is fsynced before it is renamed, whatever the 250.
    """
    text = trace.format(early="", ack="", late=_ACK)
    assert _SYNTHETIC.format(early="", ack="", late=_ACK) != text
    with pytest.raises(AssertionError, match=problem):
        check_trace(parse_trace(text), ["ID1"], 100, "/q/incoming", "/q/tmp")


# The same commit with sync = "filesystem": written, then a syncfs of the
# spool covers it before the rename.
_SHARED = """\
100 10:00:00.000000 execve("/venv/bin/twistd", ["twistd"], 0x1 /* 1 vars */) = 0
101 10:00:00.000005 write(7</q/tmp/ID1.msg>, "Subject: x\\r\\n", 12) = 12
{before}101 10:00:00.000010 syncfs(8</q>) = 0
{after}101 10:00:00.000030 rename("/q/tmp/ID1.msg", "/q/incoming/ID1.msg") = 0
101 10:00:00.000050 fsync(7</q/incoming>) = 0
""" + _ACK
_LATE_WRITE = '101 10:00:00.000012 write(7</q/tmp/ID1.msg>, "x", 1) = 1\n'


@pytest.mark.parametrize(("where", "good"), [("", True), ("before", True), ("after", False)])
def test_the_trace_check_of_syncfs(where: str, good: bool) -> None:
    """
    With ``syncfs``, the message's last write returns before a ``syncfs``
    that returns before the rename; a write after it is not covered.
    """
    text = _SHARED.format(**{key: _LATE_WRITE if key == where else ""
                             for key in ("before", "after")})

    def check() -> tuple[int, int, int]:
        return check_trace(parse_trace(text), ["ID1"], 100, "/q/incoming", "/q/tmp",
                           shared=True)

    if good:
        assert check() == (1, 1, 1)
    else:
        with pytest.raises(AssertionError, match="began after its last write"):
            check()
    # Without the syncfs, the file was never made durable.
    with pytest.raises(AssertionError, match="never fsynced"):
        check_trace(parse_trace(text), ["ID1"], 100, "/q/incoming", "/q/tmp")

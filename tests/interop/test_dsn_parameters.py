"""
The DSN parameters of RFC 3461 from Python's smtplib, against ``twistd -n
mailframe``: DSN is offered, RET, ENVID, NOTIFY and ORCPT are taken and
kept, decoded, in the queued envelope, and a malformed NOTIFY is refused.

The message goes to another domain through a smarthost that refuses every
connection, so that it stays in the queue; once the server has stopped,
the queue is read through the spool store.
"""

from __future__ import annotations

import pathlib
import smtplib
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mailframe.address import Mailbox
from mailframe.envelope import DSNOptions, QueueEntry
from mailframe.stores import SpoolQueueStore
from tests.interop.conftest import Server, free_port, start_server

pytestmark = pytest.mark.interop

MESSAGE = b"From: sender@example.org\r\nSubject: dsn\r\n\r\nbody\r\n"


class _InlineReactor(Clock):
    """A clock whose callFromThread runs the call at once, for :class:`_InlinePool`."""

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)

    def getThreadPool(self) -> Any:
        raise AssertionError("the pool is given")


class _InlinePool:
    """A thread pool that runs each job at once, on the caller's thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *args: Any,
        **kwargs: Any,
    ) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def queued_entries(queue_dir: pathlib.Path) -> list[QueueEntry]:
    """The entries of a stopped server's spool, read through the store."""
    pool = cast(ThreadPool, _InlinePool())
    store = SpoolQueueStore(queue_dir, _InlineReactor(), threadpool=pool, min_free=0)
    _result(store.recover())
    entries: list[QueueEntry] = _result(store.list())
    return entries


@pytest.fixture
def held_server(tmp_path: pathlib.Path) -> Iterator[Server]:
    # Nothing listens on the smarthost's port: mail for other domains waits.
    running = start_server(tmp_path, ["--smarthost", f"127.0.0.1:{free_port()}"])
    yield running
    running.stop()


def test_dsn_parameters_are_kept_in_the_queue(held_server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", held_server.port, timeout=30) as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        assert client.has_extn("dsn"), client.esmtp_features
        refused = client.sendmail(
            "sender@example.org", ["bob@elsewhere.example"], MESSAGE,
            mail_options=["RET=HDRS", "ENVID=abc+2Bdef"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.com"],
        )
        assert refused == {}
        # RFC 3461 §4.1: NEVER stands alone.
        assert client.mail("sender@example.org")[0] == 250
        code, text = client.rcpt("carol@elsewhere.example", ["NOTIFY=NEVER,SUCCESS"])
        assert (code, text) == (501, b"5.5.4 Bad NOTIFY parameter")
    held_server.stop()
    [entry] = queued_entries(held_server.queue)
    envelope = entry.envelope
    assert envelope.recipients == (Mailbox("bob", "elsewhere.example"),)
    assert (envelope.ret, envelope.envid) == ("HDRS", "abc+def")
    assert envelope.dsn == (
        (Mailbox("bob", "elsewhere.example"),
         DSNOptions(frozenset({"SUCCESS", "FAILURE"}), "rfc822;bob@example.com")),
    )

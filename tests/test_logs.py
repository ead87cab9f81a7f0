"""
mailframe.logs: the text observer writes exactly what Twisted's classic
text does, for the events it formats itself and for those it hands on.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import signal
import smtplib
import subprocess
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from mailframe import logs
from mailframe.logs import format_classic, text_observer
from tests.interop.conftest import REPO, TWISTD, free_port, wait_for_greeting

NOW = 1_796_000_000.25


class Client:
    address = "192.0.2.7"

    def __str__(self) -> str:
        return "client at 192.0.2.7"


def boom() -> str:
    raise RuntimeError("cannot say")


def failed() -> Failure:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        return Failure()
    raise AssertionError("unreachable")


EVENTS: list[dict[str, Any]] = [
    {"log_format": "{line}", "line": "ID1: queued from=<a@b> size=10", "log_time": NOW,
     "log_namespace": "mailframe.protocols.server.SMTPServerProtocol",
     "log_level": LogLevel.info},
    {"log_format": "plain text", "log_time": NOW, "log_level": LogLevel.warn},
    {"log_format": "{a} and {b}, {{braces}}", "a": 1, "b": Client(), "log_time": NOW,
     "log_system": "worker-1"},
    {"log_format": "{client.address}", "client": Client(), "log_time": NOW},
    {"log_format": "{items[0]}", "items": ["x"], "log_time": NOW},
    {"log_format": "{f()}", "f": lambda: "called", "log_time": NOW},
    {"log_format": "{f()}", "f": boom, "log_time": NOW},
    {"log_format": "{n:>5} {s!r}", "n": 3, "s": "x", "log_time": NOW},
    {"log_format": "{missing}", "log_time": NOW},
    {"log_format": "{", "log_time": NOW},
    {"log_format": "{}", "log_time": NOW},
    {"log_format": "two\nlines", "log_time": NOW},
    {"log_format": "", "log_time": NOW},
    {"log_time": NOW, "x": 1},
    {"log_format": b"bytes {x}", "x": 1, "log_time": NOW},
    {"log_format": "no time"},
    {"log_format": "odd system", "log_system": 5, "log_time": NOW},
    {"log_format": "Failed: {why}", "why": "x", "log_failure": failed(), "log_time": NOW,
     "log_level": LogLevel.critical, "log_namespace": "n"},
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_same_text_as_twisted(event: dict[str, Any]) -> None:
    assert format_classic(dict(event)) == formatEventAsClassicLogText(dict(event))


@given(st.text(), st.floats(min_value=0, max_value=4e9),
       st.dictionaries(st.from_regex(r"[a-z]{1,3}", fullmatch=True),
                       st.one_of(st.text(), st.integers(), st.none())))
# Half a microsecond before a second: datetime rounds it up to the second.
@example("0", 1.9999995231628418, {})
def test_same_text_as_twisted_for_any_format(
    log_format: str, when: float, fields: dict[str, Any]
) -> None:
    event = {**fields, "log_format": log_format, "log_time": when,
             "log_namespace": "n", "log_level": LogLevel.info}
    assert format_classic(dict(event)) == formatEventAsClassicLogText(dict(event))


def test_the_time_changes_with_the_second() -> None:
    first = format_classic({"log_format": "a", "log_time": NOW})
    same = format_classic({"log_format": "a", "log_time": NOW + 0.5})
    later = format_classic({"log_format": "a", "log_time": NOW + 1.0})
    assert first == same != later
    assert later == formatEventAsClassicLogText({"log_format": "a", "log_time": NOW + 1.0})


def test_formats_are_parsed_once() -> None:
    logs._pieces.cache_clear()
    for n in range(5):
        format_classic({"log_format": "{line}", "line": str(n), "log_time": NOW})
    info = logs._pieces.cache_info()
    assert (info.misses, info.hits) == (1, 4)


def test_observer_writes_lines() -> None:
    out = io.StringIO()
    observer = text_observer(out)
    now = time.time()
    observer({"log_format": "hello {who}", "who": "world", "log_time": now,
              "log_namespace": "test", "log_level": LogLevel.info})
    assert out.getvalue() == formatEventAsClassicLogText(
        {"log_format": "hello {who}", "who": "world", "log_time": now,
         "log_namespace": "test", "log_level": LogLevel.info})
    assert out.getvalue().endswith("[test#info] hello world\n")


def test_twistd_logger_option(tmp_path: pathlib.Path) -> None:
    """
    ``twistd -n --logger mailframe.logs.text_observer mailframe`` logs each
    message in Twisted's classic format on standard output.
    """
    port = free_port()
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "--logger", "mailframe.logs.text_observer",
             "mailframe", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--queue-dir", str(tmp_path / "queue"), "--hold",
             "--local-domain", f"example.com={tmp_path / 'mail'}"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    try:
        wait_for_greeting(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    text = log_path.read_text()
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[mailframe\.[\w.]+#info\]"
        r" \w+: held from=<a@example\.org> size=\d+ nrcpt=1 ", text, re.MULTILINE), text

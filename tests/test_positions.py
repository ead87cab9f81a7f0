"""
Tests for the lines of the keys of a TOML document: each case is a
document, and the line of each key that it must record, or ``None`` for a
key that it must not record (text inside a string or a comment).
"""

from __future__ import annotations

import tomllib

import pytest

from mailframe._positions import key_positions
from mailframe.config import parse_config

CASES = [
    pytest.param(
        'hostname = "mx.example.com"\nqueue_dir = "/var/spool/mailframe"\n',
        {"hostname": 1, "queue_dir": 2},
        id="top-level keys",
    ),
    pytest.param(
        '# hostname = "commented"\n\n  # [plugins.fake]\nhostname = "mx"  # a comment\n',
        {"hostname": 4, "plugins": None, "plugins.fake": None},
        id="comments",
    ),
    pytest.param(
        '[plugins.table]\nfile = "/etc/table"\n\n[plugins.limits]\nmessages = 5\n',
        {"plugins": 1, "plugins.table": 1, "plugins.table.file": 2, "plugins.limits": 4,
         "plugins.limits.messages": 5},
        id="tables",
    ),
    pytest.param(
        '[ plugins . "my-plugin" ]  # a comment\n"quoted key" = 1\n\'literal\' = 2\n',
        {"plugins": 1, "plugins.my-plugin": 1, "plugins.my-plugin.quoted key": 2,
         "plugins.my-plugin.literal": 3},
        id="quoted keys and spaces in headers",
    ),
    pytest.param(
        '[plugins."a]b"]\nx = 1\n',
        {"plugins.a]b": 1, "plugins.a]b.x": 2},
        id="bracket in a quoted header key",
    ),
    pytest.param(
        'plugins.table.file = "/etc/table"\n[plugins.chain]\nrouters = ["table"]\n',
        {"plugins.table.file": 1, "plugins.chain": 2, "plugins.chain.routers": 3},
        id="dotted keys",
    ),
    pytest.param(
        '[a]\n"b" . \'c d\' = 1\n',
        {"a": 1, "a.b.c d": 2},
        id="dotted quoted keys with spaces",
    ),
    pytest.param(
        '[plugins]\ntable = { file = "/etc/table", "fallback" = "smtp" }\nz = 1\n',
        {"plugins": 1, "plugins.table": 2, "plugins.table.file": 2,
         "plugins.table.fallback": 2, "plugins.z": 3},
        id="inline tables",
    ),
    pytest.param(
        'tls_policy = {}\nhostname = "mx"\n',
        {"tls_policy": 1, "hostname": 2},
        id="empty inline table",
    ),
    pytest.param(
        'listen = [\n  "tcp:25",  # [not.a.table]\n  "tcp:587",\n  # queue_dir = "x"\n]\n'
        'queue_dir = "q"\n',
        {"listen": 1, "not.a.table": None, "queue_dir": 6},
        id="multi-line array",
    ),
    pytest.param(
        'matrix = [\n  [1, 2],\n  [\n    3,\n  ],\n]\nhostname = "mx"\n',
        {"matrix": 1, "hostname": 7},
        id="nested multi-line arrays",
    ),
    pytest.param(
        'brackets = [\n  "]", "[",\n  "}",\n]\nhostname = "mx"\n',
        {"brackets": 1, "hostname": 5},
        id="brackets inside strings of an array",
    ),
    pytest.param(
        'notice = """\n[plugins.fake]\nhostname = "inside"\n"""\nhostname = "mx"\n',
        {"notice": 1, "plugins.fake": None, "hostname": 5},
        id="multi-line basic string",
    ),
    pytest.param(
        "notice = '''\nqueue_dir = 1'''\nqueue_dir = \"q\"\n",
        {"notice": 1, "queue_dir": 3},
        id="multi-line literal string",
    ),
    pytest.param(
        'one = """on one line"""\ntwo = 2\n',
        {"one": 1, "two": 2},
        id="triple-quoted string on one line",
    ),
    pytest.param(
        's = """one"""  # """\nreal = 2\n',
        {"s": 1, "real": 2},
        id="triple quotes in a comment",
    ),
    pytest.param(
        's = """\nx""""\nreal = 2\n',
        {"s": 1, "real": 3},
        id="quote before the closing triple quotes",
    ),
    pytest.param(
        '[[listener]]\nendpoint = "tcp:25"\n\n[[listener]]\nendpoint = "tcp:587"\n'
        'auth = "required"\n',
        {"listener": 1, "listener[1]": 1, "listener[1].endpoint": 2, "listener[2]": 4,
         "listener[2].endpoint": 5, "listener[2].auth": 6},
        id="arrays of tables",
    ),
    pytest.param(
        '[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n',
        {"a": 1, "a.b": 1, "a.b[1].x": 2, "a.b[2]": 3, "a.b[2].x": 4},
        id="dotted arrays of tables",
    ),
    pytest.param(
        "a = 1\r\n[t]\r\nb = 2\r\n",
        {"a": 1, "t": 2, "t.b": 3},
        id="CRLF line ends",
    ),
    pytest.param(
        "\n\n  indented = 1\n\t[tab]\n\tkey=2\n",
        {"indented": 3, "tab": 4, "tab.key": 5},
        id="indentation and no spaces around =",
    ),
]


#: Cases that key_positions gets wrong, each with what it should record.

CASES += [
    pytest.param(
        '[plugins]\nacme.directory = "/srv/acme"\n',
        {"plugins": 1, "plugins.acme": 2, "plugins.acme.directory": 2},
        id="tables named by a dotted key",
    ),
    pytest.param(
        'commands = [ """\n  cat [\n""" ]\nhostname = "mx"\n',
        {"commands": 1, "hostname": 4},
        id="multi-line string in a multi-line array",
    ),
    pytest.param(
        's = """one \\"""\nfake = 1\n"""\nreal = 2\n',
        {"s": 1, "fake": None, "real": 4},
        id="escaped quotes in a multi-line string",
    ),
    pytest.param(
        'a = { b = { c = 1, d = 2 }, e = "f, g = h" }\n',
        {"a": 1, "a.b": 1, "a.b.c": 1, "a.b.d": 1, "a.e": 1, "a.d": None, "a.g": None},
        id="nested inline tables and commas in strings",
    ),
    pytest.param(
        '[[listener]]\nendpoint = "tcp:25"\n[listener.tls]\ncert = "c"\n',
        {"listener[1]": 1, "listener[1].tls": 3, "listener[1].tls.cert": 4},
        id="sub-table of an array of tables",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_positions(text: str, expected: dict[str, int | None]) -> None:
    tomllib.loads(text)  # every case is valid TOML
    positions = key_positions(text)
    assert {key: positions.get(key) for key in expected} == expected


def test_first_line_of_a_key_given_twice_is_kept() -> None:
    # A table header may be repeated by sub-tables; the table's own line is
    # its first.
    text = "[plugins.a]\nx = 1\n[plugins.b]\ny = 2\n"
    assert key_positions(text)["plugins"] == 1


def test_every_key_of_a_config_has_a_line() -> None:
    text = (
        '# mailframe.toml\n'
        'hostname = "mx.example.com"\n'
        'listen = ["tcp:2525:interface=127.0.0.1"]\n'
        'store = "spool"\n'
        'router = "chain"\n'
        'policies = [\n'
        '  "local-users",\n'
        '  "limits",\n'
        ']\n'
        '\n'
        '[local_domains]\n'
        '"example.com" = "/var/mail/example.com"\n'
        '\n'
        '[plugins.spool]\n'
        'min_free = 1_000_000\n'
        '\n'
        '[plugins.limits]\n'
        'messages = 100\n'
        '\n'
        '[[listener]]\n'
        'endpoint = "tcp:587"\n'
    )
    positions = key_positions(text)

    def paths(table: dict[str, object], prefix: str = "") -> list[str]:
        found = []
        for key, value in table.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for index, item in enumerate(value, 1):
                    found += paths(item, f"{prefix}{key}[{index}].")
                continue
            found.append(prefix + key)
            if isinstance(value, dict):
                found += paths(value, f"{prefix}{key}.")
        return found

    everything = paths(tomllib.loads(text))
    assert [key for key in everything if key not in positions] == []
    assert positions["local_domains.example.com"] == 12
    assert positions["plugins.limits.messages"] == 18
    assert positions["listener[1].endpoint"] == 21


def test_config_keeps_the_positions() -> None:
    config = parse_config('hostname = "mx.example.com"\n\n[plugins.spool]\nmin_free = 0\n')
    assert config.line_of("hostname") == 1
    assert config.line_of("plugins.spool") == 3
    assert config.line_of("plugins.spool.min_free") == 4
    assert config.line_of("plugins.nothing") is None

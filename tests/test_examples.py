"""
Every program in ``examples/`` runs, and says what it should.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def run(example: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(example)], cwd=REPO, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: pathlib.Path) -> None:
    result = run(example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), result.stderr


def test_custom_policy() -> None:
    result = run(REPO / "examples" / "custom_policy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert re.search(r"^friend@good\.example: accepted$", output, re.M), output
    assert re.search(r"^bulk@spam\.example: refused, 550 \S", output, re.M), output
    delivered = output.split("delivered to alice:\n", 1)
    assert len(delivered) == 2, output
    message = delivered[1]
    headers = message.split("\n\n", 1)[0].splitlines()
    assert "X-Checked-By: NoSpamFromSpamExample" in headers, message
    assert "Return-Path: <friend@good.example>" in headers, message
    assert "Delivered-To: alice@example.com" in headers, message
    assert "spam.example" not in message


def test_domain_router() -> None:
    result = run(REPO / "examples" / "domain_router.py")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    received = re.findall(r"relay-(a|b)\.example got '(\w+) \d' for <\w+@example\.(\w+)>$",
                          output, re.M)
    # Each domain went to its own relay, and only there.
    assert sorted(received) == [("a", "net", "net")] * 3 + [("b", "org", "org")], output
    assert re.search(r"^waiting: \w+@example\.net: 451 4\.4\.5 example\.net takes 2 messages"
                     r" every 2s", output, re.M), output
    assert re.search(r"^after the window: relay-a\.example got 'net \d'", output, re.M), output


def test_domain_router_maker_checks_its_settings() -> None:
    # In a child, so that importing the example leaves this process alone.
    script = textwrap.dedent("""
        import runpy, sys, types
        from mailframe.components import SettingError
        maker = runpy.run_path(sys.argv[1])["domain_router_maker"]
        assert maker.check({"smarthosts": {"example.net": "relay.example"}})["rate"] == 60
        context = types.SimpleNamespace(reactor=None, component=lambda kind, name: None)
        router = maker.build({"smarthosts": {"Example.NET": "relay.example:2525"}}, context)
        assert router.smarthosts == {"example.net": "relay.example:2525"}
        for settings, key in [({}, "smarthosts"),
                              ({"smarthosts": {}, "window": "0s"}, "window"),
                              ({"smarthosts": {"example.net": "a b"}}, "smarthosts")]:
            try:
                maker.build(settings, context)
            except SettingError as error:
                assert error.key == key, (settings, error)
            else:
                raise AssertionError(settings)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "examples" / "domain_router.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.stdout == "ok\n", result.stdout + result.stderr


def test_sqlite_policy() -> None:
    result = run(REPO / "examples" / "sqlite_policy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "RCPT TO:<alice@example.org>: 250 2.1.5 OK",
        "RCPT TO:<bob@example.org>: 250 2.1.5 OK",
        "RCPT TO:<carol@example.org>: 550 5.1.1 <carol@example.org>: User unknown",
        "added carol@example.org to the table",
        "RCPT TO:<carol@example.org>: 250 2.1.5 OK",
    ], result.stdout
    assert lines[5].startswith("DATA: 250 "), result.stdout
    assert lines[6:] == [f"delivered to {user}: 1 message(s)"
                         for user in ("alice", "bob", "carol")], result.stdout


def test_hold_policy() -> None:
    result = run(REPO / "examples" / "hold_policy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    ids = re.findall(r"^sent \"[^\"]+\": 250 2\.0\.0 Ok: queued as (\w+)$", output, re.M)
    assert len(ids) == 2, output
    suspicious = ids[1]
    lines = output.splitlines()[2:]
    assert lines == [
        "delivered to alice: \"Minutes of Monday's meeting\", X-Spam-Score: 0.0",
        f"on hold: {suspicious} (spam score 11.0), with X-Spam-Score: 11.0",
        f"released {suspicious}",
        "delivered to alice: \"URGENT: FREE CRYPTO FOR A WINNER\", X-Spam-Score: 11.0",
        "on hold now: 0",
    ], output


def test_embedding() -> None:
    result = run(REPO / "examples" / "embedding.py")
    assert result.returncode == 0, result.stdout + result.stderr
    before, after = result.stdout.split("sent a message to carol@example.net\n")
    assert before.endswith(
        "the page, before:\n0 incoming, 0 active, 0 deferred, 0 hold, 0 corrupt\n"), before
    lines = after.splitlines()
    assert lines[:2] == ["the page, after:", "0 incoming, 0 active, 1 deferred, 0 hold, 0 corrupt"]
    assert re.fullmatch(r"\w+ deferred <carol@example\.net>: 451 4\.4\.1 Cannot connect to .*",
                        lines[2]), after
    assert lines[3:] == ["stopped"], after


def _example_config(directory: pathlib.Path) -> pathlib.Path:
    """
    examples/mailframe.toml, with the files it names under ``/etc/mailframe/``
    made in *directory*, and its other paths moved there too.
    """
    from tests.certs import make_certificates

    certs = make_certificates(directory / "made", hostname="mail.example.org")
    (directory / "tls").mkdir()
    (directory / "tls" / "fullchain.pem").write_bytes(certs.cert.read_bytes())
    (directory / "tls" / "privkey.pem").write_bytes(certs.key.read_bytes())
    (directory / "passwd").write_text("alice:s3cret\n", encoding="utf-8")
    text = (REPO / "examples" / "mailframe.toml").read_text(encoding="utf-8")
    assert "/etc/mailframe/" in text and '"/var/' in text
    text = text.replace("/etc/mailframe/", f"{directory}/").replace('"/var/', f'"{directory}/var/')
    path = directory / "mailframe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def check_config(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "check-config", str(path)], cwd=path.parent,
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_example_config_checks(tmp_path: pathlib.Path) -> None:
    path = _example_config(tmp_path)
    result = check_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"{path}: ok (2 listener(s), 1 local domain(s))\n", result.stdout
    assert result.stderr == "", result.stderr


def test_example_config_says_what_it_shows(tmp_path: pathlib.Path) -> None:
    from mailframe.config import ListenerConfig, load_config

    config = load_config(str(_example_config(tmp_path)))
    assert config.local_domains == (
        ("example.org", f"{tmp_path}/var/mail/vhosts/example.org"),)
    mx, submission = config.effective_listeners()
    assert mx == ListenerConfig("tcp:25")
    assert (submission.endpoint, submission.auth, submission.require_tls) == (
        "tcp:587", "required", True)
    assert config.tls_cert is not None and config.auth_checker is not None
    assert (config.store, config.router, config.policies, config.transports) == (
        "spool", "local", ("limits", "local-users"), ("smtp", "maildir"))
    assert dict(config.plugins)["limits"]["message_rate"] == 50


def test_example_config_errors_name_the_line(tmp_path: pathlib.Path) -> None:
    """The check is real: a missing certificate is an error, with its line."""
    path = _example_config(tmp_path)
    (tmp_path / "tls" / "privkey.pem").unlink()
    result = check_config(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tls_key (line " in result.stderr, result.stderr


def test_behind_proxy() -> None:
    result = run(REPO / "examples" / "behind_proxy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"listening behind the balancer on port \d+", lines[0]), result.stdout
    assert lines[1:] == [
        "as 203.0.113.7: EHLO 250",
        "as 203.0.113.7: RCPT TO:<someone@elsewhere.example> 554 5.7.1"
        " <someone@elsewhere.example>: Relay access denied",
        "as 203.0.113.7: RCPT TO:<alice@example.com> 250 2.1.5 OK",
        "as 203.0.113.7: DATA 250 2.0.0 Ok: queued as",
        "health check: EHLO 250",
        "health check: RCPT TO:<someone@elsewhere.example> 554 5.7.1"
        " <someone@elsewhere.example>: Relay access denied",
        "delivered with: Received: from client.example (unknown [203.0.113.7])",
        "stopped",
    ], result.stdout

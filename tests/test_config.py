"""Tests for the config file, the twistd options and their errors."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.python import usage

from mailframe.config import DEFAULT_LISTEN, Config, parse_config
from mailframe.errors import ConfigError
from mailframe.tap import Options


def test_defaults_are_safe() -> None:
    config = Options()
    config.parseOptions([])
    assert config.config.listen == (DEFAULT_LISTEN,)
    assert config.config.local_domains == (("localhost", "Maildir"),)
    networks = config.config.relay_networks
    assert all(n.is_loopback for n in networks) and networks


def test_file_values() -> None:
    config = parse_config(
        'hostname = "mx.example.com"\n'
        'listen = ["tcp:2526:interface=127.0.0.1", "unix:/tmp/x.sock"]\n'
        'relay_networks = ["10.0.0.0/8"]\n'
        "max_recipients = 200\n"
        'local_users = ["alice", "Bob"]\n'
        "[local_domains]\n"
        '"example.com" = "/srv/mail/example.com"\n'
    )
    assert config.hostname == "mx.example.com"
    assert config.listen == ("tcp:2526:interface=127.0.0.1", "unix:/tmp/x.sock")
    assert config.relay_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.max_recipients == 200
    assert config.local_users == frozenset({"alice", "bob"})
    assert config.local_domains == (("example.com", "/srv/mail/example.com"),)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('hostname = "a"\nmax_recipients = 5\n', "max_recipients", 2),
        ('\n\nbogus_key = 1\n', "bogus_key", 3),
        ('relay_networks = ["10.0.0.300/8"]\n', "relay_networks", 1),
        ('hostname = "a.example"\nlisten = ["tcp:25", "haproxy:"]\n', "listen", 2),
        ('listen = ["haproxy:tcp:smtp"]\n', "listen", 1),
        ('listen = ["haproxy:tcp:25:colour=blue"]\n', "listen", 1),
        ('listen = ["haproxy:haproxy:tcp:25"]\n', "listen", 1),
        ('listen = ["haproxy:ssl:465"]\n', "listen", 1),
        ('listen = ["tcp:2x5"]\n', "listen", 1),
        ('idle_timeout = "1m"\n', "idle_timeout", 1),
        ('x = [\n', "(syntax)", 2),
        ('[local_domains]\n"bad domain" = "/tmp"\n', "local_domains", 1),
    ],
)
def test_errors_name_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert caught.value.line == line
    assert key in str(caught.value) and f"line {line}" in str(caught.value)


def test_haproxy_listeners_are_accepted() -> None:
    config = parse_config(
        'listen = ["haproxy:tcp:25:interface=127.0.0.1", "HAProxy:tcp6:2525"]\n'
        '[[listener]]\nendpoint = "haproxy:unix:/run/mailframe.sock"\nname = "lb"\n'
    )
    assert config.listen == ("haproxy:tcp:25:interface=127.0.0.1", "HAProxy:tcp6:2525")
    assert [lc.endpoint for lc in config.effective_listeners()][-1] == (
        "haproxy:unix:/run/mailframe.sock")


def test_haproxy_errors_say_what_is_wrong() -> None:
    for endpoint, said in [
        ("haproxy:", "names no endpoint after haproxy:"),
        ("haproxy:ssl:465", "implicit TLS behind a PROXY header is not supported"),
        ("haproxy:haproxy:tcp:25", "one haproxy: prefix is enough"),
        ("haproxy:tcp:smtp", "not a valid endpoint"),
    ]:
        with pytest.raises(ConfigError, match=said):
            parse_config(f'listen = ["{endpoint}"]\n')


def test_command_line_overrides_file(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "mailframe.toml"
    path.write_text('hostname = "file.example"\nmax_recipients = 300\n')
    options = Options()
    options.parseOptions(["--config", str(path), "--hostname", "cli.example",
                          "--relay-network", "none", "--listen", "tcp:0",
                          "--listen", "tcp:1:interface=127.0.0.1"])
    config: Config = options.config
    assert config.hostname == "cli.example"
    assert config.max_recipients == 300
    assert config.relay_networks == ()
    assert config.listen == ("tcp:0", "tcp:1:interface=127.0.0.1")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--max-recipients", "10"], "--max-recipients"),
        (["--max-message-size", "big"], "--max-message-size"),
        (["--relay-network", "nonsense"], "--relay-network"),
        (["--local-domain", "example.com"], "--local-domain"),
        (["--listen", "haproxy:tcp:x"], "--listen"),
        (["--submission", "haproxy:"], "--submission"),
        (["--local-users", "/nonexistent/users"], "--local-users"),
    ],
)
def test_bad_options_are_named(argv: list[str], named: str) -> None:
    options = Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(argv)
    assert str(caught.value).startswith(named + ": "), str(caught.value)


def test_bad_config_file_named_with_line(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "bad.toml"
    path.write_text('hostname = "ok.example"\nmax_message_size = -1\n')
    options = Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(["--config", str(path)])
    assert str(caught.value) == f"max_message_size in {path}, line 2: must be at least 0"


def test_bad_plugin_setting_named_when_options_are_parsed(tmp_path: object) -> None:
    """
    A plugin's settings are checked with the options: twistd prints the
    error as a usage error, with no traceback before it.
    """
    import os
    import pathlib
    import subprocess

    from tests.interop.conftest import REPO, TWISTD

    path = pathlib.Path(str(tmp_path)) / "bad.toml"
    path.write_text('[plugins.spool]\nmin_free = 0\nsync = "sometimes"\n')
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--config", str(path)])
    expected = f"plugins.spool.sync in {path}, line 3: expected one of file, filesystem"
    assert str(caught.value) == expected
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "mailframe", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_users_file(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "users"
    path.write_text("# staff\nalice\n\nBOB\n")
    options = Options()
    options.parseOptions(["--local-users", str(path)])
    assert options.config.local_users == frozenset({"alice", "bob"})
    path.write_text("alice\n../etc\n")
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--local-users", str(path)])
    assert "line 2" in str(caught.value)


def test_listener_tables_and_submission(tmp_path: object) -> None:
    import pathlib

    from tests.certs import make_certificates

    certs = make_certificates(pathlib.Path(str(tmp_path)))
    passwords = pathlib.Path(str(tmp_path)) / "passwd"
    passwords.write_text("alice:s3cret\n")
    config = parse_config(
        f'tls_cert = "{certs.cert}"\n'
        f'tls_key = "{certs.key}"\n'
        f'auth_checker = "file:{passwords}"\n'
        'listen = ["tcp:2525:interface=127.0.0.1"]\n'
        'submission = ["tcp:2587:interface=127.0.0.1"]\n'
        "[[listener]]\n"
        'endpoint = "tcp:2465:interface=127.0.0.1"\n'
        'name = "smtps"\n'
        'auth = "offered"\n'
        'relay_networks = ["none"]\n'
    )
    listeners = config.effective_listeners()
    assert [(lc.endpoint.split(":")[1], lc.name, lc.auth) for lc in listeners] == [
        ("2525", "smtp", "none"), ("2587", "submission", "required"), ("2465", "smtps", "offered")]
    assert listeners[2].relay_networks == ()


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('[[listener]]\nendpoint = "tcp:1"\n\n[[listener]]\nendpoint = "tcp:2"\nbogus = 1\n',
         "listener[2].bogus", 6),
        ('[[listener]]\nendpoint = "tcp:1"\nauth = "sometimes"\n', "listener[1].auth", 3),
        ('[[listener]]\nname = "x"\n', "listener[1].endpoint", 1),
        ('[[listener]]\nendpoint = "tcp:1"\n\n[[listener]]\nname = "mx"\n'
         'endpoint = "haproxy:tcp:two"\n', "listener[2].endpoint", 6),
        ('[[listener]]\nendpoint = "tcp:1"\nauth = "required"\n', "auth_checker", None),
        ('auth_checker = "nonsense:what"\n', "auth_checker", 1),
        ('tls_cert = "/nonexistent.pem"\n', "tls_cert", 1),
    ],
)
def test_listener_errors_name_key_and_line(text: str, key: str, line: int | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert caught.value.line == line


def test_tls_and_submission_options(tmp_path: object) -> None:
    import pathlib

    from tests.certs import make_certificates

    certs = make_certificates(pathlib.Path(str(tmp_path)))
    options = Options()
    options.parseOptions(["--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
                          "--submission", "tcp:2587", "--auth", "memory:alice:s3cret"])
    config: Config = options.config
    assert config.submission == ("tcp:2587",)
    assert config.auth_checker == "memory:alice:s3cret"
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--submission", "tcp:2587", "--auth", "memory:a:b"])
    assert str(caught.value).startswith("--tls-cert: ")
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--tls-cert", str(certs.cert)])
    assert "--tls-key" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('auth_checker = "anonymous"\n', "auth_checker", "does not check usernames"),
        ('auth_checker = "file:/nonexistent/passwd"\n', "auth_checker", "cannot read"),
        ('listen = []\n', "listen", "at least one listener"),
        ('[[listener]]\nendpoint = "tcp:1"\nstarttls = true\n', "tls_cert", "STARTTLS"),
        ('[[listener]]\nendpoint = "tcp:1"\nrequire_tls = true\n', "tls_cert", "never start"),
    ],
)
def test_settings_that_cannot_work_are_refused(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert message in str(caught.value)


def test_unicode_local_domains_are_kept_as_a_labels() -> None:
    config = parse_config('[local_domains]\n"Bücher.example" = "/srv/mail"\n')
    assert config.local_domains == (("xn--bcher-kva.example", "/srv/mail"),)


def test_outbound_settings() -> None:
    from mailframe.services.schedule import RetrySchedule

    config = parse_config(
        'smarthost = "[2001:db8::1]:587"\n'
        'smarthost_username = "relay-user"\n'
        'smarthost_password = "relay-pass"\n'
        'nameservers = ["127.0.0.1:5353", "::1"]\n'
        'retry_schedule = "1m,2m"\n'
        'smtp_tls = "encrypt"\n'
        "[tls_policy]\n"
        '"Example.ORG" = "verify"\n'
    )
    assert config.smarthost == "[2001:db8::1]:587"
    assert config.nameservers == (("127.0.0.1", 5353), ("::1", 53))
    assert config.retry_schedule == RetrySchedule((60.0, 120.0))
    assert config.tls_policy == (("example.org", "verify"),)
    options = Options()
    options.parseOptions(["--smarthost", "relay.example:25", "--smtp-port", "2525",
                          "--nameserver", "127.0.0.1:5300", "--retry-schedule", "30s"])
    assert (options.config.smarthost, options.config.smtp_port) == ("relay.example:25", 2525)
    assert options.config.nameservers == (("127.0.0.1", 5300),)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('smarthost = "relay.example"\n', "smarthost"),
        ('smtp_tls = "sometimes"\n', "smtp_tls"),
        ('nameservers = ["dns.example"]\n', "nameservers"),
        ('retry_schedule = "soon"\n', "retry_schedule"),
        ('smarthost_username = "u"\nsmarthost_password = "p"\n', "smarthost_username"),
        ('smarthost = "r.example:25"\nsmarthost_username = "u"\n', "smarthost_password"),
    ],
)
def test_outbound_errors(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key


def test_outbound_identity_settings(tmp_path: object) -> None:
    import pathlib

    from tests.certs import make_certificates

    certs = make_certificates(pathlib.Path(str(tmp_path)))
    config = parse_config(
        'smtp_helo_name = "out.example.com"\n'
        'smtp_source_address = "127.0.0.2"\n'
        'smtp_source_address6 = "::1"\n'
        f'smtp_trust_roots = ["{certs.ca}"]\n'
    )
    assert config.smtp_helo_name == "out.example.com"
    assert (config.smtp_source_address, config.smtp_source_address6) == ("127.0.0.2", "::1")
    assert config.smtp_trust_roots == (str(certs.ca),)
    for text, key in (('smtp_source_address = "::1"\n', "smtp_source_address"),
                      ('smtp_trust_roots = ["/nonexistent.pem"]\n', "smtp_trust_roots")):
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert caught.value.key == key


def test_queue_lifetime_settings() -> None:
    config = parse_config(
        'max_queue_lifetime = "2d"\n'
        'delay_warning = "0"\n'
        "bounce_size_limit = 10000\n"
        'double_bounce_recipient = "postmaster@example.com"\n'
    )
    assert config.max_queue_lifetime == 2 * 86400
    assert config.delay_warning == 0
    assert config.bounce_size_limit == 10000
    assert str(config.double_bounce_recipient) == "postmaster@example.com"
    defaults = Config()
    assert (defaults.max_queue_lifetime, defaults.delay_warning) == (5 * 86400, 4 * 3600)
    assert defaults.bounce_size_limit == 50_000
    assert defaults.double_bounce_recipient is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('\nmax_queue_lifetime = "forever"\n', "max_queue_lifetime"),
        ('\ndelay_warning = "-1h"\n', "delay_warning"),
        ("\nbounce_size_limit = -5\n", "bounce_size_limit"),
        ('\ndouble_bounce_recipient = "not an address"\n', "double_bounce_recipient"),
    ],
)
def test_queue_lifetime_errors(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert (caught.value.key, caught.value.line) == (key, 2)


def test_queue_lifetime_options() -> None:
    options = Options()
    options.parseOptions(["--max-queue-lifetime", "3d", "--delay-warning", "30m"])
    assert options.config.max_queue_lifetime == 3 * 86400
    assert options.config.delay_warning == 1800
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--delay-warning", "later"])
    assert str(caught.value).startswith("--delay-warning: ")


def test_store_and_hold_options() -> None:
    options = Options()
    options.parseOptions(["--store", "discard", "--unsafe-store", "--hold"])
    config = options.config
    assert (config.store, config.unsafe_store, config.hold) == ("discard", True, True)
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--store", "Not A Name"])
    assert str(caught.value).startswith("--store: ")

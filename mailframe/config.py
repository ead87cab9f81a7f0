"""
Configuration: one :class:`Config` value, built from a TOML file, from
command-line options, or both (the command line wins).

Every key is checked; an unknown key or a bad value is a
:class:`~mailframe.errors.ConfigError` that names the key and, for a file,
its line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.endpoints import serverFromString

from mailframe._positions import key_positions
from mailframe.address import AddressError, Mailbox, is_domain
from mailframe.core import MIN_RECIPIENTS
from mailframe.errors import ConfigError
from mailframe.policies._domains import domain_key
from mailframe.policies.relay import LOOPBACK, parse_networks
from mailframe.policies.users import load_users
from mailframe.protocols.proxy import split_proxy
from mailframe.services.queuerunner import DEFAULT_BOUNCE_SIZE_LIMIT
from mailframe.services.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_SCHEDULE,
    RetrySchedule,
    parse_duration,
)

__all__ = [
    "ComponentContext",
    "Config",
    "DEFAULT_LISTEN",
    "ListenerConfig",
    "load_config",
    "parse_config",
    "settings_from",
]

#: The default listener: loopback only, on an unprivileged port.
DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"


def _default_hostname() -> str:
    return socket.gethostname() or "localhost"


@attrs.frozen
class Config:
    """
    Everything needed to compose a mail service.

    :ivar listen: server endpoint strings (``tcp:``, ``ssl:``, ``unix:``, and
        ``haproxy:tcp:`` behind a PROXY protocol load balancer).
    :ivar hostname: the server's name.
    :ivar queue_dir: the directory of the spool.
    :ivar local_domains: ``(domain, directory)`` pairs; mail for
        ``user@domain`` goes to the Maildir ``directory/user/``.
    :ivar local_users: the known local parts, or ``None`` for any.
    :ivar relay_networks: client networks that may relay.
    :ivar max_message_size: the SIZE limit in octets.
    :ivar max_recipients: recipients per message.
    :ivar idle_timeout: seconds the server waits for a command.
    :ivar shutdown_grace: seconds connected clients get on shutdown.
    :ivar max_connections: sessions at once; ``None`` derives it from the
        open-file limit.
    :ivar max_connections_per_client: sessions from one address.
    :ivar connection_limit_exemptions: networks exempt from that limit.
    :ivar tls_cert: a PEM certificate chain for STARTTLS, or ``None``.
    :ivar tls_key: the PEM private key of *tls_cert*.
    :ivar auth_checker: a :mod:`twisted.cred.strcred` description of the
        checker that AUTH uses, such as ``file:/etc/mailframe/passwd``.
    :ivar submission: endpoints of submission listeners (RFC 6409): STARTTLS
        before AUTH, and AUTH before MAIL.
    :ivar listeners: listeners with settings of their own (``[[listener]]``
        tables).
    :ivar max_auth_failures: failed AUTH attempts from one address before
        it gets 421.
    :ivar auth_failure_delay: seconds each failure delays the next reply,
        times the failures so far.
    :ivar smarthost: ``host:port`` (or ``[address]:port``) that all mail
        for other domains goes to, instead of their MX hosts.
    :ivar smarthost_username: the AUTH user for the smarthost, if any.
    :ivar smarthost_password: its password.
    :ivar smtp_port: the port of MX hosts (25; test networks use others).
    :ivar nameservers: ``(host, port)`` pairs to send DNS queries to; empty
        for the system's.
    :ivar smtp_tls: the TLS policy for outbound SMTP: ``none``, ``may``
        (opportunistic), ``encrypt`` or ``verify``.
    :ivar tls_policy: per-destination (domain or smarthost) TLS policies.
    :ivar smtp_chunking: send with BDAT when the next hop offers CHUNKING.
    :ivar retry_schedule: the retry schedule.
    :ivar max_queue_lifetime: seconds a message may wait in the queue
        before its pending recipients expire and bounce.
    :ivar delay_warning: seconds after which the sender is told, once, that
        a message is still being retried; 0 sends no warning.
    :ivar bounce_size_limit: octets of the original message that a bounce
        may return; above it, a bounce returns the headers only.
    :ivar double_bounce_recipient: where reports go about messages from the
        null sender that could not be delivered, or ``None`` to only log
        them.
    :ivar store: the plugin name of the queue store.
    :ivar router: the plugin name of the router.
    :ivar policies: plugin names of the policies asked after relay control
        (which always comes first), in order.
    :ivar transports: plugin names of the delivery transports to start;
        a route names one of them.
    :ivar plugins: ``(plugin name, settings)`` pairs: the ``[plugins.NAME]``
        tables, checked against each plugin's schema when it is built.
    :ivar unsafe_store: allow a store that loses mail when the process
        stops (``--unsafe-store``).
    :ivar hold: put every accepted message on hold (``--hold``), for a
        maintenance window; ``mailframe queue release`` lets it go.
    :ivar workers: worker processes that share the listeners and the queue
        (``--workers``); 1 runs everything in one process.
    :ivar positions: the line of each key of the file the config came
        from, by dotted path, for errors found later.
    :ivar smtp_helo_name: the name outbound SMTP gives in EHLO; by default
        :attr:`hostname`.
    :ivar smtp_source_address: the IPv4 address outbound connections come
        from, or ``None`` for the system's choice.
    :ivar smtp_source_address6: the same for IPv6.
    :ivar smtp_trust_roots: PEM files of the certificate authorities that
        the ``verify`` policy trusts; empty for the system's.
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    hostname: str = attrs.Factory(_default_hostname)
    queue_dir: str = "mailframe-queue"
    local_domains: tuple[tuple[str, str], ...] = (("localhost", "Maildir"),)
    local_users: frozenset[str] | None = None
    relay_networks: tuple[Any, ...] = LOOPBACK
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 1000
    idle_timeout: float = 300.0
    shutdown_grace: float = 30.0
    max_connections: int | None = None
    max_connections_per_client: int = 100
    connection_limit_exemptions: tuple[Any, ...] = LOOPBACK
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_checker: str | None = None
    submission: tuple[str, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
    max_auth_failures: int = 3
    auth_failure_delay: float = 1.0
    smarthost: str | None = None
    smarthost_username: str | None = None
    smarthost_password: str | None = None
    smtp_port: int = 25
    nameservers: tuple[tuple[str, int], ...] = ()
    smtp_tls: str = "may"
    tls_policy: tuple[tuple[str, str], ...] = ()
    smtp_chunking: bool = False
    retry_schedule: RetrySchedule = DEFAULT_SCHEDULE
    max_queue_lifetime: float = DEFAULT_MAX_LIFETIME
    delay_warning: float = DEFAULT_DELAY_WARNING
    bounce_size_limit: int = DEFAULT_BOUNCE_SIZE_LIMIT
    double_bounce_recipient: Mailbox | None = None
    store: str = "spool"
    router: str = "local"
    policies: tuple[str, ...] = ("local-users",)
    transports: tuple[str, ...] = ("smtp", "maildir", "lmtp", "pipe")
    plugins: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    unsafe_store: bool = False
    hold: bool = False
    workers: int = 1
    positions: Mapping[str, int] = attrs.field(factory=dict, eq=False, repr=False)

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The ``[plugins.NAME]`` table of plugin *name*; empty if none."""
        return dict(self.plugins).get(name, {})

    def line_of(self, key: str) -> int | None:
        """The line of the dotted *key* in the file, if it came from one."""
        return self.positions.get(key)
    smtp_helo_name: str | None = None
    smtp_source_address: str | None = None
    smtp_source_address6: str | None = None
    smtp_trust_roots: tuple[str, ...] = ()

    def effective_listeners(self) -> tuple[ListenerConfig, ...]:
        """
        Every listener: those of ``listen`` (port 25 style: STARTTLS offered
        when there is a certificate, no AUTH), those of ``submission``, and
        the ``[[listener]]`` tables.
        """
        plain = tuple(ListenerConfig(endpoint) for endpoint in self.listen)
        submission = tuple(
            ListenerConfig(endpoint, name="submission", auth="required")
            for endpoint in self.submission
        )
        return plain + submission + self.listeners


#: What a listener offers of AUTH.
AUTH_MODES = ("none", "offered", "required")


@attrs.frozen
class ListenerConfig:
    """
    One listener and the settings it overrides, like a ``master.cf`` line.

    :ivar endpoint: a Twisted server endpoint string (``ssl:`` for implicit
        TLS, RFC 8314; ``haproxy:tcp:`` behind a PROXY protocol load
        balancer).
    :ivar name: the listener's name, in the logs and in
        :attr:`ClientInfo.listener <mailframe.envelope.ClientInfo.listener>`.
    :ivar starttls: offer STARTTLS; ``None`` offers it when a certificate
        is configured.
    :ivar require_tls: refuse MAIL until TLS is active.
    :ivar auth: ``"none"``, ``"offered"``, or ``"required"`` (before MAIL).
    :ivar auth_without_tls: offer AUTH before TLS is active.
    :ivar relay_networks: the relay networks here, or ``None`` for the
        server's.
    :ivar max_message_size: the SIZE limit here, or ``None``.
    :ivar max_recipients: the recipient limit here, or ``None``.
    """

    endpoint: str
    name: str = "smtp"
    starttls: bool | None = None
    require_tls: bool = False
    auth: str = "none"
    auth_without_tls: bool = False
    relay_networks: tuple[Any, ...] | None = None
    max_message_size: int | None = None
    max_recipients: int | None = None


def _listen(value: Any) -> tuple[str, ...]:
    items = _strings(value)
    for item in items:
        _check_endpoint(item)
    return items


#: Endpoint types whose strings Twisted parses without touching a file or
#: the environment, so that a bad port or option is named when the config
#: is read.
_PARSED_TYPES = ("tcp", "tcp6", "unix")


def _check_endpoint(description: str) -> None:
    """
    Refuse what cannot listen: a ``haproxy:`` prefix with nothing, another
    prefix or implicit TLS after it, and a ``tcp:``, ``tcp6:`` or ``unix:``
    string that Twisted cannot parse.
    """
    behind_proxy, inner = split_proxy(description)
    kind = inner.split(":", 1)[0].strip().lower()
    if behind_proxy:
        if not inner:
            raise ValueError(f"{description!r} names no endpoint after haproxy:,"
                             " such as haproxy:tcp:25")
        if kind == "haproxy":
            raise ValueError(f"{description!r}: one haproxy: prefix is enough")
        if kind == "ssl":
            raise ValueError(
                f"{description!r}: implicit TLS behind a PROXY header is not supported;"
                " let the balancer end TLS and pass the session on to a haproxy:tcp:"
                " listener, or listen with ssl: outside the balancer")
    if kind in _PARSED_TYPES:
        try:
            serverFromString(None, inner)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{description!r} is not a valid endpoint: {error}") from None


def _endpoint(value: Any) -> str:
    items = _listen(_string(value))
    return items[0]


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a string or a list of strings")
    return tuple(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _hostname(value: Any) -> str:
    name = _string(value)
    if not is_domain(name):
        raise ValueError(f"{name!r} is not a host name")
    return name


def _domains(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in _strings(value):
            domain, equals, directory = item.partition("=")
            if not equals or not directory:
                raise ValueError(f"{item!r} is not DOMAIN=DIRECTORY")
            pairs.append((domain, directory))
    result = []
    for domain, directory in pairs:
        if not isinstance(directory, str) or not directory:
            raise ValueError(f"the directory of {domain!r} must be a non-empty string")
        if not is_domain(domain, utf8=True):
            raise ValueError(f"{domain!r} is not a domain")
        result.append((domain_key(domain), directory))
    return tuple(result)


def _users(value: Any) -> frozenset[str]:
    if isinstance(value, list):
        return load_users(_strings(value))
    path = _string(value)
    try:
        with open(path, encoding="utf-8") as lines:
            return load_users(lines)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _networks(value: Any) -> tuple[Any, ...]:
    return parse_networks(_strings(value))


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("expected a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def _seconds(minimum: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g} seconds")
        return seconds

    return check


class _TableError(ValueError):
    """A bad key in the *index*-th table of an array of tables."""

    def __init__(self, index: int, key: str, message: str) -> None:
        self.index = index
        self.key = key
        super().__init__(message)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _auth_mode(value: Any) -> str:
    if value not in AUTH_MODES:
        raise ValueError(f"expected one of {', '.join(AUTH_MODES)}")
    return str(value)


#: [[listener]] key -> parser
_LISTENER_KEYS: dict[str, Callable[[Any], Any]] = {
    "endpoint": _endpoint,
    "name": _string,
    "starttls": _boolean,
    "require_tls": _boolean,
    "auth": _auth_mode,
    "auth_without_tls": _boolean,
    "relay_networks": _networks,
    "max_message_size": _integer(0),
    "max_recipients": _integer(MIN_RECIPIENTS),
}


def _listeners(value: Any) -> tuple[ListenerConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise ValueError("expected [[listener]] tables")
    result = []
    for index, table in enumerate(value):
        fields: dict[str, Any] = {}
        for key, item in table.items():
            if key not in _LISTENER_KEYS:
                raise _TableError(index, key, "unknown setting")
            try:
                fields[key] = _LISTENER_KEYS[key](item)
            except (ValueError, TypeError) as error:
                raise _TableError(index, key, str(error)) from None
        if "endpoint" not in fields:
            raise _TableError(index, "endpoint", "every listener needs an endpoint")
        result.append(ListenerConfig(**fields))
    return tuple(result)


def _checker(value: Any) -> str:
    from twisted.cred import strcred
    from twisted.cred.credentials import IUsernamePassword

    description = _string(value)
    if description.startswith("file:"):
        _readable(description[len("file:"):])
    try:
        checker = strcred.makeChecker(description)
    except Exception as error:
        raise ValueError(f"{description!r} is not a usable checker: {error}") from None
    # A checker that does not check passwords (such as "anonymous") would
    # let anyone authenticate, and authenticated clients may relay.
    if IUsernamePassword not in getattr(checker, "credentialInterfaces", ()):
        raise ValueError(f"{description!r} does not check usernames and passwords")
    return description


def _readable(value: Any) -> str:
    path = _string(value)
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    return path


#: Outbound TLS policies, weakest first.
TLS_POLICIES = ("none", "may", "encrypt", "verify")


def _host_port(value: Any) -> tuple[str, int]:
    """``host:port``, ``[address]:port`` or ``[ipv6]:port``."""
    text = _string(value)
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{text!r} has no host")
    return host, int(port)


def _smarthost(value: Any) -> str:
    host, port = _host_port(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nameserver(text: str) -> tuple[str, int]:
    """``address``, ``address:port`` or ``[ipv6]:port``; port 53 by default."""
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    host, port = _host_port(text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"{text!r}: a nameserver is an IP address") from None


def _nameservers(value: Any) -> tuple[tuple[str, int], ...]:
    return tuple(_nameserver(item) for item in _strings(value))


def _tls_level(value: Any) -> str:
    if value not in TLS_POLICIES:
        raise ValueError(f"expected one of {', '.join(TLS_POLICIES)}")
    return str(value)


def _tls_policy(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of destination = policy")
    return tuple((domain_key(str(k)), _tls_level(v)) for k, v in value.items())


def _address(version: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value)
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
        if address.version != version:
            raise ValueError(f"{text!r} is not an IPv{version} address")
        return str(address)

    return check


def _trust_roots(value: Any) -> tuple[str, ...]:
    return tuple(_readable(path) for path in _strings(value))


def _mailbox(value: Any) -> Mailbox:
    try:
        return Mailbox.parse(_string(value), utf8=True)
    except AddressError as e:
        raise ValueError(f"expected a mailbox such as postmaster@example.com: {e}") from None


_PLUGIN_NAME = re.compile(r"\A[a-z0-9][a-z0-9_.-]*\Z")


def _plugin_name(value: Any) -> str:
    name = _string(value)
    if not _PLUGIN_NAME.match(name):
        raise ValueError(f"{name!r} is not a plugin name")
    return name


def _plugin_names(value: Any) -> tuple[str, ...]:
    names = tuple(_plugin_name(v) for v in _strings(value))
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{name} is listed twice")
    return names


def _plugin_sections(value: Any) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    if not isinstance(value, Mapping):
        raise ValueError("expected tables: [plugins.NAME]")
    sections = []
    for name, settings in value.items():
        _plugin_name(name)
        if not isinstance(settings, Mapping):
            raise ValueError(f"plugins.{name} must be a table of settings")
        sections.append((name, dict(settings)))
    return tuple(sections)


def _schedule(value: Any) -> RetrySchedule:
    return RetrySchedule.parse(_string(value))


#: config key -> (attribute, parser)
_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "listen": ("listen", _listen),
    "hostname": ("hostname", _hostname),
    "queue_dir": ("queue_dir", _string),
    "local_domains": ("local_domains", _domains),
    "local_users": ("local_users", _users),
    "relay_networks": ("relay_networks", _networks),
    "max_message_size": ("max_message_size", _integer(0)),
    # RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
    "max_recipients": ("max_recipients", _integer(MIN_RECIPIENTS)),
    # RFC 5321 §4.5.3.2.7: at least 5 minutes.
    "idle_timeout": ("idle_timeout", _seconds(300)),
    "shutdown_grace": ("shutdown_grace", _seconds(0)),
    "max_connections": ("max_connections", _integer(1)),
    "max_connections_per_client": ("max_connections_per_client", _integer(1)),
    "connection_limit_exemptions": ("connection_limit_exemptions", _networks),
    "tls_cert": ("tls_cert", _readable),
    "tls_key": ("tls_key", _readable),
    "auth_checker": ("auth_checker", _checker),
    "submission": ("submission", _strings),
    "listener": ("listeners", _listeners),
    "max_auth_failures": ("max_auth_failures", _integer(1)),
    "auth_failure_delay": ("auth_failure_delay", _seconds(0)),
    "smarthost": ("smarthost", _smarthost),
    "smarthost_username": ("smarthost_username", _string),
    "smarthost_password": ("smarthost_password", _string),
    "smtp_port": ("smtp_port", _integer(1)),
    "nameservers": ("nameservers", _nameservers),
    "smtp_tls": ("smtp_tls", _tls_level),
    "tls_policy": ("tls_policy", _tls_policy),
    "smtp_chunking": ("smtp_chunking", _boolean),
    "retry_schedule": ("retry_schedule", _schedule),
    "max_queue_lifetime": ("max_queue_lifetime", _seconds(1)),
    "delay_warning": ("delay_warning", _seconds(0)),
    "bounce_size_limit": ("bounce_size_limit", _integer(0)),
    "double_bounce_recipient": ("double_bounce_recipient", _mailbox),
    "store": ("store", _plugin_name),
    "router": ("router", _plugin_name),
    "policies": ("policies", _plugin_names),
    "transports": ("transports", _plugin_names),
    "plugins": ("plugins", _plugin_sections),
    "unsafe_store": ("unsafe_store", _boolean),
    "hold": ("hold", _boolean),
    "workers": ("workers", _integer(1)),
    "smtp_helo_name": ("smtp_helo_name", _hostname),
    "smtp_source_address": ("smtp_source_address", _address(4)),
    "smtp_source_address6": ("smtp_source_address6", _address(6)),
    "smtp_trust_roots": ("smtp_trust_roots", _trust_roots),
}


def _line_in_table(text: str, table: str, index: int, key: str) -> int | None:
    """The line of *key* in the *index*-th ``[[table]]`` of *text*."""
    header = re.compile(rf"^[ \t]*\[\[[ \t]*{re.escape(table)}[ \t]*\]\]", re.M)
    headers = list(header.finditer(text))
    if index >= len(headers):
        return None
    start = headers[index].end()
    following = re.compile(r"^[ \t]*\[", re.M).search(text, start)
    end = following.start() if following else len(text)
    name = re.escape(key)
    match = re.compile(rf'^[ \t]*(?:{name}|"{name}")[ \t]*=', re.M).search(text, start, end)
    position = match.start() if match else headers[index].start()
    return text.count("\n", 0, position) + 1


def _line_of(text: str, key: str) -> int | None:
    name = re.escape(key)
    pattern = re.compile(rf'^[ \t]*(?:{name}|"{name}")[ \t]*=|^[ \t]*\[[ \t]*{name}[ \t]*\]', re.M)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def settings_from(
    values: Mapping[str, Any], base: Config | None = None, text: str | None = None
) -> Config:
    """
    A :class:`Config` with *values* (config keys) applied over *base*.

    :param text: the file the values came from, to name lines in errors.
    :raises ConfigError: for an unknown key or a bad value.
    """
    changes: dict[str, Any] = {}
    for key, value in values.items():
        line = _line_of(text, key) if text is not None else None
        if key not in _KEYS:
            raise ConfigError(key, "unknown setting", line)
        attribute, parse = _KEYS[key]
        try:
            changes[attribute] = parse(value)
        except _TableError as error:
            where = _line_in_table(text, key, error.index, error.key) if text else None
            raise ConfigError(f"{key}[{error.index + 1}].{error.key}", str(error), where) from None
        except (ValueError, TypeError) as error:
            raise ConfigError(key, str(error), line) from None
    config = attrs.evolve(base or Config(), **changes)
    _check_together(config, text)
    return config


def _check_together(config: Config, text: str | None) -> None:
    """Settings that are wrong only in combination."""

    def fail(key: str, message: str) -> None:
        line = _line_of(text, key) if text is not None else None
        raise ConfigError(key, message, line)

    if (config.smarthost_username is None) != (config.smarthost_password is None):
        fail("smarthost_password" if config.smarthost_password is None else "smarthost_username",
             "smarthost_username and smarthost_password go together")
    if config.smarthost_username is not None and config.smarthost is None:
        fail("smarthost_username", "credentials need a smarthost")
    if (config.tls_cert is None) != (config.tls_key is None):
        fail("tls_cert" if config.tls_cert is None else "tls_key",
             "tls_cert and tls_key go together")
    listeners = config.effective_listeners()
    if not listeners:
        fail("listen", "at least one listener is needed")
    if any(lc.auth != "none" for lc in listeners) and config.auth_checker is None:
        fail("auth_checker" if not config.submission else "submission",
             "a listener offers AUTH, but no auth_checker is set")
    for lc in listeners:
        implicit = lc.endpoint.lower().startswith("ssl:")
        can_start_tls = config.tls_cert is not None and lc.starttls is not False
        if lc.starttls and config.tls_cert is None:
            fail("tls_cert", f"listener {lc.endpoint} offers STARTTLS, which needs"
                             " tls_cert and tls_key")
        if lc.require_tls and not (implicit or can_start_tls):
            fail("tls_cert", f"listener {lc.endpoint} requires TLS, which it can never start")
        if (lc.auth != "none" and not lc.auth_without_tls and not implicit
                and not can_start_tls):
            fail("tls_cert", f"listener {lc.endpoint} offers AUTH only after STARTTLS,"
                             " which needs tls_cert and tls_key")


def parse_config(text: str, base: Config | None = None) -> Config:
    """Parse the TOML *text* of a config file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        line = int(match.group(1)) if match else text.count("\n") + 1
        raise ConfigError("(syntax)", str(error), line) from None
    config = settings_from(data, base, text)
    return attrs.evolve(config, positions=key_positions(text))


def load_config(path: str, base: Config | None = None) -> Config:
    """Read and parse the config file at *path*."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError("config", f"cannot read {path}: {error.strerror}") from None
    return parse_config(text, base)


@attrs.frozen
class ComponentContext:
    """
    What a component may need when an
    :class:`~mailframe.interfaces.IComponentMaker` builds it.

    :ivar reactor: the reactor, also the clock.
    :ivar random: a random source.
    :ivar resolver: the shared :class:`~mailframe.interfaces.IResolver`, if any.
    :ivar store: the :class:`~mailframe.interfaces.IQueueStore`, if any
        (``None`` while the store itself is built).
    :ivar tls: the server's TLS settings, if any.
    :ivar log: a :class:`twisted.logger.Logger` in the component's namespace.
    :ivar config: the whole :class:`Config`, for settings that several
        components share (local domains, the smarthost, outbound SMTP).
    :ivar listener: for a policy, the :class:`ListenerConfig` of the
        listener it is built for; policies are built once per listener.
    :ivar component: ``component(kind, name)`` is the component of that
        kind and plugin name, built with its own settings from the config
        (once); a ``chain`` router finds the routers it chains this way.
    :ivar worker: the slot of this worker process (``"1"`` to ``"N"``)
        when ``mailframe --workers N`` runs it, else ``None``; a queue
        store shared by the workers tells them apart by it.
    """

    reactor: Any
    random: Any
    resolver: Any = None
    store: Any = None
    tls: Any = None
    log: Any = None
    config: Any = None
    listener: Any = None
    component: Any = None
    worker: Any = None

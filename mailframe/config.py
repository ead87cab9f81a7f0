"""
Configuration: one :class:`Config` value, built from a TOML file, from
command-line options, or both (the command line wins).

Every key is checked; an unknown key or a bad value is a
:class:`~mailframe.errors.ConfigError` that names the key and, for a file,
its line.
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mailframe.address import is_domain
from mailframe.core import MIN_RECIPIENTS
from mailframe.errors import ConfigError
from mailframe.policies.relay import LOOPBACK, parse_networks
from mailframe.policies.users import load_users
from mailframe.services.schedule import parse_duration

__all__ = [
    "ComponentContext",
    "Config",
    "DEFAULT_LISTEN",
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

    :ivar listen: server endpoint strings (``tcp:``, ``ssl:``, ``unix:``).
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


def _listen(value: Any) -> tuple[str, ...]:
    items = _strings(value)
    for item in items:
        if item.split(":", 1)[0].strip().lower() == "haproxy":
            raise ValueError(
                "haproxy: listeners are refused: Twisted's PROXY wrapper would show"
                " the proxy's address to relay control and make an open relay"
            )
    if not items:
        raise ValueError("at least one listener is needed")
    return items


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
        if not is_domain(domain):
            raise ValueError(f"{domain!r} is not a domain")
        result.append((domain.lower(), directory))
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
}


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
        except (ValueError, TypeError) as error:
            raise ConfigError(key, str(error), line) from None
    return attrs.evolve(base or Config(), **changes)


def parse_config(text: str, base: Config | None = None) -> Config:
    """Parse the TOML *text* of a config file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        line = int(match.group(1)) if match else text.count("\n") + 1
        raise ConfigError("(syntax)", str(error), line) from None
    return settings_from(data, base, text)


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
    :ivar store: the :class:`~mailframe.interfaces.IQueueStore`, if any.
    :ivar tls: the TLS settings, if any.
    :ivar log: a :class:`twisted.logger.Logger`.
    """

    reactor: Any
    random: Any
    resolver: Any = None
    store: Any = None
    tls: Any = None
    log: Any = None

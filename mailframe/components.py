"""
What a component plugin is made of: its settings, described so that a config
file can be checked before anything starts, and a maker that builds the
component from them.

A plugin module in any distribution's ``mailframe/plugins/`` names one or
more :class:`ComponentMaker`\\ s at module level::

    # mypackage: mailframe/plugins/acme.py
    from mailframe.components import ComponentMaker, Setting

    def build(settings, context):
        from acme.router import AcmeRouter
        return AcmeRouter(settings["table"], context.reactor)

    acme_router = ComponentMaker(
        kind="router",
        name="acme",
        description="Routes by the ACME customer table",
        schema={"table": Setting("path", None, "The customer table", required=True)},
        factory=build,
    )

``getPlugins(IComponentMaker, mailframe.plugins)`` finds it; a config file
selects it with ``router = "acme"`` and gives its settings in a
``[plugins.acme]`` table, which ``mailframe check-config`` checks against
the schema: an unknown key, a missing required one or a value of the wrong
type is an error that names the key and its line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from mailframe.interfaces import IComponentMaker

__all__ = [
    "KINDS",
    "SETTING_TYPES",
    "ComponentMaker",
    "Setting",
    "SettingError",
    "parse_duration",
]

#: The kinds of component, in the order a config reference lists them.
KINDS = ("store", "router", "policy", "transport")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """
    Seconds in ``90``, ``"90s"``, ``"5m"``, ``"4h"``, ``"5d"`` or ``"1w"``.

    :raises ValueError: for anything else, or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 4h or 5d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        unit = 1
        if text and text[-1] in _UNITS:
            unit, text = _UNITS[text[-1]], text[:-1]
        try:
            seconds = float(text) * unit
        except ValueError:
            raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 4h or 5d") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 4h or 5d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class SettingError(ValueError):
    """
    A setting of a component is wrong.

    :ivar key: the setting's name.
    :ivar message: what is wrong, and what was expected.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected a whole number")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError("expected a list of strings")
    return tuple(_string(item) for item in value)


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of keys and values")
    return dict(value)


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in _strings(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network such as 192.0.2.0/24") from None
    return tuple(networks)


_HOST_PORT = re.compile(r"\A(\[[^\]]+\]|[^:\[\]\s]+)(?::(\d{1,5}))?\Z")


def _host_port(value: Any) -> str:
    text = _string(value)
    match = _HOST_PORT.match(text)
    if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
        raise ValueError(f"{text!r} is not HOST, HOST:PORT or [ADDRESS]:PORT")
    return text


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return float(value)


#: The types a :class:`Setting` may have, each with the parser that checks
#: and converts a value read from TOML.
SETTING_TYPES: Mapping[str, Callable[[Any], Any]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "duration": parse_duration,
    "strings": _strings,
    "table": _table,
    "path": _string,
    "networks": _networks,
    "host-port": _host_port,
}


def _check_type(instance: Setting, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in SETTING_TYPES:
        raise ValueError(f"unknown setting type {value!r}; one of {', '.join(SETTING_TYPES)}")


@attrs.frozen
class Setting:
    """
    One setting of a component: its type, its default and what it means.

    :ivar type: one of :data:`SETTING_TYPES`.
    :ivar default: the value when the config does not give one (used as
        is, not parsed).
    :ivar description: one or two sentences for the config reference.
    :ivar required: whether the config must give it.
    :ivar minimum: for numbers, integers and durations, the least value.
    :ivar choices: for strings, the values allowed.
    """

    type: str = attrs.field(validator=_check_type)
    default: Any
    description: str
    required: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, value: Any) -> Any:
        """
        Check and convert *value* as read from TOML.

        :raises ValueError: with what was expected.
        """
        parsed = SETTING_TYPES[self.type](value)
        if self.minimum is not None and parsed < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        values = parsed if self.type == "strings" else (parsed,)
        if self.choices and any(value not in self.choices for value in values):
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return parsed


def check_settings(
    schema: Mapping[str, Setting], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """
    *settings* checked against *schema*, with the defaults of those not
    given.

    :raises SettingError: for an unknown key, a missing required one, or a
        bad value.
    """
    for key in settings:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise SettingError(key, f"unknown setting (known: {known})")
    checked: dict[str, Any] = {}
    for key, setting in schema.items():
        if key not in settings:
            if setting.required:
                raise SettingError(key, f"required: {setting.description}")
            checked[key] = setting.default
            continue
        try:
            checked[key] = setting.parse(settings[key])
        except (ValueError, TypeError) as error:
            raise SettingError(key, str(error)) from None
    return checked


def _check_kind(instance: ComponentMaker, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {value!r}")


_NAME = re.compile(r"\A[a-z0-9][a-z0-9_.-]*\Z")


def _check_name(instance: ComponentMaker, attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(f"a name is lower-case letters, digits, '-', '_' and '.': {value!r}")


@implementer(IPlugin, IComponentMaker)
@attrs.frozen
class ComponentMaker:
    """
    An :class:`~mailframe.interfaces.IComponentMaker` from a schema and a
    factory.

    :ivar kind: ``"store"``, ``"router"``, ``"policy"`` or ``"transport"``.
    :ivar name: the name a config file uses; unique among the plugins.
    :ivar description: one line for ``mailframe plugins``.
    :ivar schema: setting name to :class:`Setting`.
    :ivar factory: ``factory(settings, context)`` builds the component from
        the checked settings and a
        :class:`~mailframe.config.ComponentContext`. Import heavy modules
        inside it, so that finding plugins stays cheap.
    :ivar durable: for stores: whether the store keeps mail across a crash.
        A store that does not starts only with ``--unsafe-store``.
    :ivar shared: for stores: whether worker processes (``--workers``) can
        share the store. Each worker recovers only what is its own (see
        :attr:`ComponentContext.worker <mailframe.config.ComponentContext>`),
        so a store must say that it can; one that lives in a process's
        memory cannot.
    :ivar validate: ``validate(settings)``, called with the settings that
        passed the schema, raises :class:`SettingError` for what the schema
        cannot say: settings that conflict, or one that this machine cannot
        honour. It runs when the config is checked, before anything is
        built, so that the error is reported as a usage error, like those
        of the schema.
    """

    kind: str = attrs.field(validator=_check_kind)
    name: str = attrs.field(validator=_check_name)
    description: str
    factory: Callable[[Mapping[str, Any], Any], Any] = attrs.field(repr=False)
    schema: Mapping[str, Setting] = attrs.field(factory=dict)
    durable: bool = True
    shared: bool = False
    validate: Callable[[Mapping[str, Any]], None] | None = attrs.field(default=None, repr=False)

    def check(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The checked settings; see :func:`check_settings` and :attr:`validate`."""
        checked = check_settings(self.schema, settings)
        if self.validate is not None:
            self.validate(checked)
        return checked

    def build(self, settings: Mapping[str, Any], context: Any) -> Any:
        """
        Check *settings* and build the component.

        :raises SettingError: when the settings are wrong.
        """
        return self.factory(self.check(settings), context)

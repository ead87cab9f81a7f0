"""
The configuration reference, generated from the code when the documentation
is built, so that it cannot drift from it.

``.. mailframe-config::``
    A table of the keys of the config file: each key of
    :data:`mailframe.config._KEYS`, its default (the default of the
    :class:`~mailframe.config.Config` field it sets) and its description
    (the ``:ivar:`` of that field in the class's docstring).
``.. mailframe-config:: listener``
    The same for the keys of a ``[[listener]]`` table, from
    ``_LISTENER_KEYS`` and :class:`~mailframe.config.ListenerConfig`.
``.. mailframe-plugins::``
    A section for each kind of component and, in it, one for each plugin
    that :func:`mailframe.registry.discover` finds: its name, description,
    distribution and the table of its settings, from its maker's schema.
    With ``:kind: router``, only the plugins of that kind, without the
    section of the kind.

A key without an ``:ivar:`` description, or a plugin module that fails to
import, is a warning, and so an error in a build with ``-W``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import attrs
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from mailframe.components import KINDS, Setting

logger = logging.getLogger(__name__)

#: The config key that selects the plugins of each kind.
SELECTORS = {"store": "store", "router": "router", "policy": "policies", "transport": "transports"}

#: Section titles of the kinds.
PLURALS = {"store": "Stores", "router": "Routers", "policy": "Policies", "transport": "Transports"}

_IVAR = re.compile(r":ivar (?:\S+ )?(\w+):\s?(.*)\Z")
_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_BARE_KEY = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_SPECIAL = re.compile(r"([^\w\s])")


def ivars(cls: type) -> dict[str, str]:
    """The ``:ivar name: text`` fields of *cls*'s docstring, each on one line."""
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent = 0
    for line in lines:
        stripped = line.strip()
        match = _IVAR.match(stripped)
        if match is not None:
            current = fields[match.group(1)] = [match.group(2)]
            indent = len(line) - len(line.lstrip())
        elif current is not None and stripped and len(line) - len(line.lstrip()) > indent:
            current.append(stripped)
        else:
            current = None
    return {name: " ".join(parts).strip() for name, parts in fields.items()}


def escape(text: str) -> str:
    """*text* as reST that shows it as it is: every mark escaped."""
    return _SPECIAL.sub(r"\\\1", text)


def duration(seconds: float) -> str:
    """``300.0`` as ``5m``: the largest unit that divides it."""
    if seconds and seconds == int(seconds):
        for unit, size in _UNITS:
            if seconds % size == 0:
                return f"{int(seconds) // size}{unit}"
    return f"{seconds:g}s"


def toml(value: Any, kind: str | None = None) -> str:
    """
    *value* as a config file would give it. *kind* is a setting type, when
    known: a duration in seconds is written with its unit.
    """
    if kind == "duration" and isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {toml(v)}" for k, v in value.items()) + "}"
    intervals = getattr(value, "intervals", None)
    if intervals is not None:  # a retry schedule
        return json.dumps(",".join(duration(i) for i in intervals))
    if isinstance(value, tuple | list | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else list(value)
        if items and all(
            isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) and isinstance(i[1], str)
            for i in items
        ):
            return toml(dict(items))
        return "[" + ", ".join(toml(item) for item in items) + "]"
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return json.dumps(str(value))
    return json.dumps(str(value), ensure_ascii=False)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def default_text(field: attrs.Attribute[Any], kind: str | None = None) -> str:
    """The reST of the default of an attrs *field*."""
    default: Any = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        doc = (getattr(default.factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else "computed at start"
    if default is None:
        return "not set"
    if isinstance(default, tuple | frozenset) and not default:
        return "none"
    return f"``{toml(default, kind)}``"


def list_table(header: list[str], rows: Iterable[list[str]], widths: str) -> list[str]:
    """The lines of a ``list-table`` of reST cells."""
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        first, *rest = row
        lines.append(f"   * - {first}")
        lines.extend(f"     - {cell}" for cell in rest)
    lines.append("")
    return lines


@attrs.frozen
class _Entry:
    """A schema entry of a maker that does not use :class:`Setting`."""

    type: str
    default: Any
    description: str
    required: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] = ()


class _Generated(SphinxDirective):
    """A directive whose reST is made from the code."""

    def parse(self, lines: list[str], source: str) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=source), node)
        env = self.env
        if not hasattr(env, "mailframe_generated"):
            env.mailframe_generated = set()  # type: ignore[attr-defined]
        env.mailframe_generated.add(env.docname)  # type: ignore[attr-defined]
        children: list[nodes.Node] = node.children
        return children

    def warn(self, message: str) -> None:
        logger.warning(message, location=self.get_location())

    def depend_on(self, module: Any) -> None:
        path = getattr(module, "__file__", None)
        if path:
            self.env.note_dependency(os.path.abspath(path))


class ConfigKeys(_Generated):
    """``.. mailframe-config:: [listener]``: the keys of the config file."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from mailframe import config

        self.depend_on(config)
        table = self.arguments[0] if self.arguments else ""
        keys: Mapping[str, tuple[str, Callable[[Any], Any]]]
        if table == "listener":
            cls: type = config.ListenerConfig
            keys = {key: (key, parse) for key, parse in config._LISTENER_KEYS.items()}
        elif table:
            self.warn(f"mailframe-config: no table named {table!r} (only 'listener')")
            return []
        else:
            cls = config.Config
            keys = config._KEYS
        descriptions = ivars(cls)
        fields = attrs.fields_dict(cls)
        rows = []
        for key, (attribute, parse) in keys.items():
            description = descriptions.get(attribute)
            if description is None:
                self.warn(
                    f"{cls.__name__}.{attribute} (the key {key!r}) has no :ivar:"
                    " description in the class's docstring"
                )
                description = ""
            kind = "duration" if "_seconds" in getattr(parse, "__qualname__", "") else None
            rows.append([f"``{key}``", default_text(fields[attribute], kind), description])
        lines = list_table(["Key", "Default", "Description"], rows, "25 20 55")
        return self.parse(lines, f"<mailframe-config {table}>")


class Plugins(_Generated):
    """``.. mailframe-plugins::``: every plugin found, with its settings."""

    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "kind": directives.unchanged_required,
    }

    def run(self) -> list[nodes.Node]:
        import sys

        from mailframe import config
        from mailframe.registry import discover

        registry = discover()
        for problem in registry.problems:
            self.warn(f"plugin module {problem.module}: {problem.message}")
        self.depend_on(config)
        for module in set(registry.modules.values()):
            self.depend_on(sys.modules.get(module))
        only = self.options.get("kind")
        if only is not None and only not in KINDS:
            self.warn(f"mailframe-plugins: no kind {only!r}; one of {', '.join(KINDS)}")
            return []
        kinds = [k for k, _ in registry.makers if k not in KINDS]
        lines: list[str] = []
        for kind in [*KINDS, *sorted(set(kinds))]:
            if only is not None and kind != only:
                continue
            names = registry.names(kind)
            if only is None:
                lines += self.kind_section(kind, names)
            for name in names:
                lines += self.plugin_section(registry, kind, name, "~" if only is None else "-")
        return self.parse(lines, "<mailframe-plugins>")

    def kind_section(self, kind: str, names: list[str]) -> list[str]:
        from mailframe.config import Config

        title = PLURALS.get(kind, f"{kind.capitalize()} plugins")
        lines = [f".. _plugins-{kind}:", "", title, "-" * len(title), ""]
        selector = SELECTORS.get(kind)
        if selector is not None:
            field = attrs.fields_dict(Config)[selector]
            example = (
                f'``{selector} = ["NAME", ...]``'
                if isinstance(field.default, tuple)
                else f'``{selector} = "NAME"``'
            )
            lines += [f"Selected with {example}; by default {default_text(field)}.", ""]
        if not names:
            lines += [f"No {kind} plugin is installed.", ""]
        return lines

    def plugin_section(self, registry: Any, kind: str, name: str, underline: str) -> list[str]:
        maker = registry.maker(kind, name)
        title = f"``{name}``"
        lines = [f".. _plugin-{kind}-{name}:", "", title, underline * len(title), ""]
        lines += [escape(maker.description), ""]
        lines += [
            f":Kind: {kind}",
            f":Distribution: {escape(self.distribution(registry, kind, name))}",
        ]
        if kind == "store":
            durable = getattr(maker, "durable", True)
            lines.append(
                ":Durable: "
                + (
                    "yes: queued mail survives a crash"
                    if durable
                    else "no: queued mail is lost when the process stops; it starts only with"
                    " ``unsafe_store = true`` (``--unsafe-store``)"
                )
            )
        lines.append("")
        schema = getattr(maker, "schema", None) or {}
        if not schema:
            lines += [f"It has no settings: a ``[plugins.{name}]`` table must be empty.", ""]
            return lines
        lines += [f"Its settings, in the ``[plugins.{name}]`` table:", ""]
        rows = []
        for key, setting in schema.items():
            if not isinstance(setting, Setting):
                setting = self.as_setting(setting)
            rows.append(
                [
                    f"``{key}``",
                    self.type_text(setting),
                    "" if setting.required else self.setting_default(setting),
                    "yes" if setting.required else "no",
                    escape(setting.description),
                ]
            )
        lines += list_table(
            ["Setting", "Type", "Default", "Required", "Description"], rows, "18 18 17 9 38"
        )
        return lines

    @staticmethod
    def as_setting(value: Any) -> _Entry:
        """
        A schema entry that is not a :class:`~mailframe.components.Setting`,
        such as a ``(type, default, description)`` tuple, for the table.
        """
        if isinstance(value, tuple) and len(value) == 3:
            kind, default, description = value
            return _Entry(getattr(kind, "__name__", str(kind)), default, str(description))
        return _Entry("", None, str(value))

    @staticmethod
    def distribution(registry: Any, kind: str, name: str) -> str:
        import sys

        import mailframe.plugins

        module = sys.modules.get(registry.modules.get((kind, name), ""))
        path = getattr(module, "__file__", None)
        own = os.path.dirname(os.path.abspath(mailframe.plugins.__file__))
        if path and os.path.dirname(os.path.abspath(path)) == own:
            return "mailframe (built in)"
        return str(registry.distribution(kind, name))

    @staticmethod
    def type_text(setting: Any) -> str:
        text = str(setting.type)
        if setting.choices:
            text += ": " + ", ".join(f"``{toml(choice)}``" for choice in setting.choices)
        if setting.minimum is not None:
            least = toml(setting.minimum, setting.type)
            text += f", at least ``{least}``"
        return text

    @staticmethod
    def setting_default(setting: Any) -> str:
        if setting.default is None:
            return "not set"
        return f"``{toml(setting.default, setting.type)}``"


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    getattr(env, "mailframe_generated", set()).discard(docname)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    if not hasattr(env, "mailframe_generated"):
        env.mailframe_generated = set()  # type: ignore[attr-defined]
    env.mailframe_generated |= getattr(other, "mailframe_generated", set())  # type: ignore[attr-defined]


def _always_outdated(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    """A plugin may have been installed or removed: read the pages again."""
    return sorted(getattr(env, "mailframe_generated", set()) - removed)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("mailframe-config", ConfigKeys)
    app.add_directive("mailframe-plugins", Plugins)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _always_outdated)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

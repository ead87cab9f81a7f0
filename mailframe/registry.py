"""
Finding component plugins, and building the components that a config names.

:func:`discover` finds every :class:`~mailframe.interfaces.IComponentMaker`
with ``twisted.plugin.getPlugins(IComponentMaker, mailframe.plugins)``, the
built-ins among them, and also tries every module of
:mod:`mailframe.plugins` so that one that fails to import is reported by
name instead of silently missing. :class:`Components` then builds what a
:class:`~mailframe.config.Config` selects, each once, checking each
plugin's ``[plugins.NAME]`` table against its schema; every error names the
plugin, the key and its line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import sys
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.plugin import getPlugins

from mailframe.components import SettingError
from mailframe.config import ComponentContext, Config
from mailframe.errors import ConfigError
from mailframe.interfaces import IComponentMaker

__all__ = ["Components", "PluginProblem", "Registry", "discover"]


@attrs.frozen
class PluginProblem:
    """
    A plugin module that could not be used.

    :ivar module: its module name, such as ``mailframe.plugins.acme``.
    :ivar message: one line: what went wrong.
    :ivar detail: the traceback, for the log.
    """

    module: str
    message: str
    detail: str = ""


@attrs.frozen
class Registry:
    """
    The makers found, by kind and name, and the modules that failed.

    :ivar makers: ``(kind, name)`` to maker.
    :ivar modules: ``(kind, name)`` to the module that defines the maker.
    :ivar problems: plugin modules that failed to import, and names given
        twice.
    """

    makers: Mapping[tuple[str, str], Any]
    modules: Mapping[tuple[str, str], str]
    problems: tuple[PluginProblem, ...] = ()

    def names(self, kind: str) -> list[str]:
        """The plugin names of one kind, sorted."""
        return sorted(name for k, name in self.makers if k == kind)

    def maker(self, kind: str, name: str) -> Any:
        """
        The maker of plugin *name* of *kind*.

        :raises LookupError: naming what is known, and any plugin module that
            failed to import, since it may have been the one meant.
        """
        found = self.makers.get((kind, name))
        if found is not None:
            return found
        known = ", ".join(self.names(kind)) or "none"
        message = f"no {kind} plugin named {name!r} (found: {known})"
        if self.problems:
            message += "; plugins that failed to load: " + "; ".join(
                f"{p.module}: {p.message}" for p in self.problems
            )
        raise LookupError(message)

    def distribution(self, kind: str, name: str) -> str:
        """The name and version of the distribution that installed a plugin."""
        module = sys.modules.get(self.modules.get((kind, name), ""))
        path = getattr(module, "__file__", None)
        return _distribution_of(path) if path else "unknown"


def discover(package: Any = None) -> Registry:
    """
    Find every component maker in *package* (by default
    :mod:`mailframe.plugins`).
    """
    if package is None:
        import mailframe.plugins as package
    makers: dict[tuple[str, str], Any] = {}
    modules: dict[tuple[str, str], str] = {}
    problems: list[PluginProblem] = []
    for maker in getPlugins(IComponentMaker, package):
        if any(maker is known for known in makers.values()):
            # Another plugin module imported it: the same plugin again.
            continue
        key = (maker.kind, maker.name)
        module = _module_of(maker, package)
        # One name is one [plugins.NAME] table, whatever the kind.
        taken = next((k for k in makers if k[1] == maker.name), None)
        if taken is not None:
            problems.append(PluginProblem(
                module, f"a {taken[0]} plugin named {maker.name!r} is also in {modules[taken]};"
                        " the first is used"))
            continue
        makers[key] = maker
        modules[key] = module
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name in sys.modules:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as error:
            problems.append(PluginProblem(
                info.name, f"{type(error).__name__}: {error}", traceback.format_exc()))
    return Registry(makers, modules, tuple(problems))


def _module_of(maker: Any, package: Any) -> str:
    """The plugin module whose namespace holds *maker*."""
    for name, module in list(sys.modules.items()):
        if name.startswith(package.__name__ + ".") and module is not None:
            if any(value is maker for value in vars(module).values()):
                return name
    return type(maker).__module__


_FILES: dict[str, str] | None = None


def _distribution_of(path: str) -> str:
    global _FILES
    if _FILES is None:
        _FILES = {}
        for dist in importlib.metadata.distributions():
            label = f"{dist.metadata['Name']} {dist.version}"
            for file in dist.files or ():
                if str(file).startswith("mailframe/plugins/"):
                    _FILES[os.path.realpath(str(dist.locate_file(file)))] = label
    return _FILES.get(os.path.realpath(path), "not installed (on sys.path)")


class Components:
    """
    Builds the components that a config selects, each once.

    :param config: the config: which plugins, and their settings.
    :param registry: the makers found.
    :param context: the context to build with; :meth:`build` gives each
        component a copy with ``config`` and ``component`` filled in.
    """

    def __init__(self, config: Config, registry: Registry, context: ComponentContext) -> None:
        self.config = config
        self.registry = registry
        self.context = attrs.evolve(context, config=config, component=self.get)
        self._built: dict[tuple[str, str], Any] = {}
        self._building: list[tuple[str, str]] = []

    def get(self, kind: str, name: str) -> Any:
        """The component of *kind* named *name*, built once."""
        key = (kind, name)
        if key not in self._built:
            if key in self._building:
                cycle = " -> ".join(n for _, n in [*self._building, key])
                raise ConfigError(f"plugins.{name}", f"plugins refer to each other: {cycle}",
                                  self.config.line_of(f"plugins.{name}"))
            self._building.append(key)
            try:
                self._built[key] = self.build(kind, name)
            finally:
                self._building.pop()
        return self._built[key]

    def build(self, kind: str, name: str, **context: Any) -> Any:
        """
        Build a new component of *kind* named *name*, with *context* changed
        (``listener=...`` for a policy, ``store=...``).

        :raises ConfigError: naming the plugin, and the key and line of a
            bad setting.
        """
        try:
            maker = self.registry.maker(kind, name)
        except LookupError as error:
            key = _selector(kind)
            raise ConfigError(key, str(error), self.config.line_of(key)) from None
        section = f"plugins.{name}"
        settings = self.config.plugin_settings(name)
        context.setdefault("log", Logger(namespace=f"mailframe.plugins.{kind}.{name}"))
        try:
            return maker.build(settings, attrs.evolve(self.context, **context))
        except SettingError as error:
            key = f"{section}.{error.key}"
            line = (self.config.line_of(key) or self.config.line_of(section)
                    or self.config.line_of(_selector(kind)))
            raise ConfigError(key, error.message, line) from None
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(
                section, f"the {kind} plugin {name!r} could not be built:"
                         f" {type(error).__name__}: {error}",
                self.config.line_of(section)) from error

    def check(self) -> None:
        """
        Check, without building anything, that every plugin the config
        selects is installed, and that every ``[plugins.NAME]`` table, and
        every selected plugin without one, passes its plugin's schema.

        :raises ConfigError: naming the key and its line.
        """
        config = self.config
        checked: set[str] = set()
        for kind, names in self.selected():
            for name in names:
                try:
                    maker = self.registry.maker(kind, name)
                except LookupError as error:
                    key = _selector(kind)
                    raise ConfigError(key, str(error), config.line_of(key)) from None
                self._check_settings(maker, name, _selector(kind))
                checked.add(name)
        for name, _ in config.plugins:
            if name in checked:
                continue
            makers = [m for (_, n), m in sorted(self.registry.makers.items()) if n == name]
            if not makers:
                key = f"plugins.{name}"
                raise ConfigError(key, f"no plugin named {name!r} is installed",
                                  config.line_of(key))
            self._check_settings(makers[0], name, f"plugins.{name}")

    def _check_settings(self, maker: Any, name: str, selector: str) -> None:
        check = getattr(maker, "check", None)
        if check is None:
            return
        try:
            check(self.config.plugin_settings(name))
        except SettingError as error:
            key = f"plugins.{name}.{error.key}"
            line = (self.config.line_of(key) or self.config.line_of(f"plugins.{name}")
                    or self.config.line_of(selector))
            raise ConfigError(key, error.message, line) from None

    def selected(self) -> list[tuple[str, Iterable[str]]]:
        """The plugin names the config selects, by kind."""
        config = self.config
        return [
            ("store", [config.store]),
            ("router", [config.router]),
            ("policy", ["relay-control", *config.policies]),
            ("transport", config.transports),
        ]


def _selector(kind: str) -> str:
    return {"store": "store", "router": "router", "policy": "policies",
            "transport": "transports"}[kind]

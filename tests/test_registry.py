"""
Tests for finding component plugins, checking a config's plugin settings,
and building the mail service from plugins.
"""

from __future__ import annotations

import importlib
import itertools
import pathlib
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from mailframe import compose
from mailframe.components import ComponentMaker, Setting
from mailframe.config import ComponentContext, Config, parse_config
from mailframe.errors import ConfigError
from mailframe.registry import Components, PluginProblem, Registry, discover
from mailframe.services.mta import MailService
from mailframe.stores.memory import MemoryQueueStore
from mailframe.testing import StaticRouter

BUILT_INS = {
    ("store", "spool"), ("store", "memory"), ("router", "local"),
    ("policy", "relay-control"), ("policy", "local-users"),
    ("transport", "smtp"), ("transport", "maildir"),
}


# -- discovery -------------------------------------------------------------------


def test_discover_finds_the_built_ins() -> None:
    registry = discover()
    assert BUILT_INS <= set(registry.makers)
    assert registry.problems == ()
    for key in BUILT_INS:
        assert (registry.makers[key].kind, registry.makers[key].name) == key
        assert registry.modules[key] == "mailframe.plugins.mailframe_builtins"
    assert registry.names("store") == sorted(registry.names("store"))
    assert {"memory", "spool"} <= set(registry.names("store"))


def test_maker_lookup() -> None:
    registry = discover()
    assert registry.maker("router", "local").name == "local"
    with pytest.raises(LookupError, match=r"no router plugin named 'acme' \(found: .*local"):
        registry.maker("router", "acme")
    with pytest.raises(LookupError):
        # A name is looked up within its kind.
        registry.maker("router", "spool")


_packages = itertools.count()


@pytest.fixture
def plugin_package(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Mapping[str, str]], ModuleType]]:
    """
    Makes a package of plugin modules, from module name to source, to give
    to :func:`discover` in place of :mod:`mailframe.plugins`.
    """
    names: list[str] = []

    def make(modules: Mapping[str, str]) -> ModuleType:
        name = f"fake_mailframe_plugins_{next(_packages)}"
        names.append(name)
        root = tmp_path / name
        root.mkdir()
        (root / "__init__.py").write_text('"""Plugins for a test."""\n')
        for module, source in modules.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        return importlib.import_module(name)

    yield make
    for module in list(sys.modules):
        if module.split(".")[0] in names:
            del sys.modules[module]


GOOD = """
    from mailframe.components import ComponentMaker, Setting

    def build(settings, context):
        return ("acme", settings["directory"])

    acme_maker = ComponentMaker(
        kind="router",
        name="acme",
        description="Routes the ACME way",
        factory=build,
        schema={"directory": Setting("path", None, "Where", required=True)},
    )
"""

SECOND = """
    from mailframe.components import ComponentMaker

    second_acme = ComponentMaker(
        kind="router", name="acme", description="Also ACME", factory=lambda s, c: None)
"""

BROKEN = """
    raise ImportError("acme_sdk is not installed")
"""


def test_plugin_found_in_a_package(plugin_package: Callable[..., ModuleType]) -> None:
    package = plugin_package({"acme": GOOD, "helpers": "VALUE = 1\n"})
    registry = discover(package)
    assert list(registry.makers) == [("router", "acme")]
    maker = registry.maker("router", "acme")
    assert maker.description == "Routes the ACME way"
    assert maker.build({"directory": "/srv"}, None) == ("acme", "/srv")
    assert registry.modules["router", "acme"] == f"{package.__name__}.acme"
    assert registry.problems == ()
    assert registry.distribution("router", "acme") == "not installed (on sys.path)"


def test_module_that_fails_to_import_is_reported(
    plugin_package: Callable[..., ModuleType],
) -> None:
    package = plugin_package({"acme": GOOD, "broken": BROKEN})
    registry = discover(package)
    assert list(registry.makers) == [("router", "acme")]
    [problem] = registry.problems
    assert problem.module == f"{package.__name__}.broken"
    assert problem.message == "ImportError: acme_sdk is not installed"
    assert "Traceback" in problem.detail
    assert "broken.py" in problem.detail


def test_module_with_a_syntax_error_is_reported(
    plugin_package: Callable[..., ModuleType],
) -> None:
    package = plugin_package({"typo": "def build(:\n"})
    [problem] = discover(package).problems
    assert problem.module == f"{package.__name__}.typo"
    assert problem.message.startswith("SyntaxError: ")


def test_failed_modules_are_named_when_a_plugin_is_missing(
    plugin_package: Callable[..., ModuleType],
) -> None:
    package = plugin_package({"broken": BROKEN})
    with pytest.raises(LookupError) as caught:
        discover(package).maker("router", "acme")
    assert str(caught.value) == (
        "no router plugin named 'acme' (found: none); plugins that failed to load:"
        f" {package.__name__}.broken: ImportError: acme_sdk is not installed")


def test_duplicate_name_is_reported_and_the_first_kept(
    plugin_package: Callable[..., ModuleType],
) -> None:
    package = plugin_package({"a_acme": GOOD, "b_acme": SECOND})
    registry = discover(package)
    assert registry.maker("router", "acme").description == "Routes the ACME way"
    [problem] = registry.problems
    assert problem.module == f"{package.__name__}.b_acme"
    assert problem.message == (
        f"a router plugin named 'acme' is also in {package.__name__}.a_acme; the first is used")


def test_discovery_with_a_stale_cache(plugin_package: Callable[..., ModuleType]) -> None:
    package = plugin_package({"a_acme": GOOD})
    assert list(discover(package).makers) == [("router", "acme")]
    root = pathlib.Path(package.__file__ or "").parent
    assert (root / "dropin.cache").exists()
    # A module added after the cache was written is found all the same.
    (root / "b_other.py").write_text(textwrap.dedent(SECOND).replace('"acme"', '"other"'))
    importlib.invalidate_caches()
    assert sorted(discover(package).makers) == [("router", "acme"), ("router", "other")]


def test_maker_imported_by_another_plugin_module_is_not_a_duplicate(
    plugin_package: Callable[..., ModuleType],
) -> None:
    package = plugin_package({"a_acme": GOOD})
    uses = f"from {package.__name__}.a_acme import acme_maker\n\nUSES = acme_maker\n"
    (pathlib.Path(package.__file__ or "").parent / "b_uses.py").write_text(uses)
    registry = discover(package)
    assert list(registry.makers) == [("router", "acme")]
    assert registry.problems == ()


def test_one_name_for_two_kinds_is_reported(
    plugin_package: Callable[..., ModuleType],
) -> None:
    # Both would read the one [plugins.acme] table.
    policy = SECOND.replace('kind="router"', 'kind="policy"')
    package = plugin_package({"a_acme": GOOD, "b_acme": policy})
    registry = discover(package)
    assert list(registry.makers) == [("router", "acme")]
    [problem] = registry.problems
    assert problem.module == f"{package.__name__}.b_acme"


# -- checking a config -------------------------------------------------------------


def _build_directory(settings: Mapping[str, Any], context: Any) -> Any:
    return StaticRouter({}, default=None)


ACME = ComponentMaker(
    kind="router",
    name="acme",
    description="Routes the ACME way",
    factory=_build_directory,
    schema={
        "directory": Setting("path", None, "Where ACME keeps its mail", required=True),
        "depth": Setting("integer", 2, "How deep", minimum=0),
    },
)


def _registry(*makers: Any, problems: tuple[PluginProblem, ...] = ()) -> Registry:
    """The built-ins, with *makers* and *problems* added."""
    found = discover()
    return Registry(
        {**found.makers, **{(m.kind, m.name): m for m in makers}},
        {**found.modules, **{(m.kind, m.name): "tests.test_registry" for m in makers}},
        found.problems + problems,
    )


def _check(text: str, registry: Registry | None = None) -> ConfigError:
    config = parse_config(text)
    components = Components(config, registry or _registry(ACME),
                            ComponentContext(reactor=None, random=None))
    with pytest.raises(ConfigError) as caught:
        components.check()
    return caught.value


def test_check_passes_a_good_config() -> None:
    config = parse_config(
        'router = "acme"\n\n[plugins.acme]\ndirectory = "/srv/acme"\n\n'
        '[plugins.spool]\nmin_free = 0\n')
    Components(config, _registry(ACME), ComponentContext(reactor=None, random=None)).check()


def test_unknown_plugin_names_the_selector_and_its_line() -> None:
    problem = PluginProblem("mailframe.plugins.acme_router", "ImportError: no acme_sdk")
    error = _check('hostname = "mx.example.com"\n\nrouter = "acme"\n',
                   _registry(problems=(problem,)))
    assert (error.key, error.line) == ("router", 3)
    assert "no router plugin named 'acme'" in error.message
    assert "local" in error.message
    assert "mailframe.plugins.acme_router: ImportError: no acme_sdk" in error.message


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('store = "nosuch"\n', "store", 1),
        ('\npolicies = ["local-users", "greylist"]\n', "policies", 2),
        ('\n\ntransports = ["smtp", "uucp"]\n', "transports", 3),
    ],
)
def test_unknown_plugin_of_each_kind(text: str, key: str, line: int) -> None:
    error = _check(text)
    assert (error.key, error.line) == (key, line)


def test_unknown_key_in_a_plugin_section_at_its_line() -> None:
    error = _check(
        'hostname = "mx.example.com"\n'
        'router = "acme"\n'
        '\n'
        '[plugins.acme]\n'
        'directory = "/srv/acme"\n'
        '# the colour of the mail\n'
        'colour = "blue"\n'
    )
    assert (error.key, error.line) == ("plugins.acme.colour", 7)
    assert error.message == "unknown setting (known: depth, directory)"
    assert str(error) == "plugins.acme.colour (line 7): unknown setting (known: depth, directory)"


def test_unknown_key_in_an_inline_plugin_table() -> None:
    error = _check('router = "acme"\n[plugins]\nacme = { directory = "/d", colour = "blue" }\n')
    assert (error.key, error.line) == ("plugins.acme.colour", 3)


def test_unknown_key_in_the_section_of_a_plugin_not_selected() -> None:
    # Checked against its plugin all the same: a typo is found before the
    # day the plugin is selected.
    error = _check('store = "spool"\n\n[plugins.memory]\nsize = 10\n')
    assert (error.key, error.line) == ("plugins.memory.size", 4)


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "must be at least 0"), ('"deep"', "expected a whole number")],
)
def test_bad_value_at_its_line(value: str, message: str) -> None:
    error = _check(f'router = "acme"\n[plugins.acme]\ndirectory = "/d"\ndepth = {value}\n')
    assert (error.key, error.line) == ("plugins.acme.depth", 4)
    assert message in error.message


def test_bad_value_of_a_built_in() -> None:
    error = _check('[plugins.spool]\nmin_free = -5\n')
    assert (error.key, error.line) == ("plugins.spool.min_free", 2)
    assert error.message == "must be at least 0"


def test_missing_required_setting_names_the_section() -> None:
    error = _check('router = "acme"\n\n[plugins.acme]\ndepth = 3\n')
    assert (error.key, error.line) == ("plugins.acme.directory", 3)
    assert error.message == "required: Where ACME keeps its mail"


def test_missing_required_setting_without_a_section() -> None:
    error = _check('hostname = "mx.example.com"\nrouter = "acme"\n')
    assert error.key == "plugins.acme.directory"
    assert "required" in error.message


def test_missing_required_setting_names_the_selector_line() -> None:
    error = _check('hostname = "mx.example.com"\nrouter = "acme"\n')
    assert (error.key, error.line) == ("plugins.acme.directory", 2)


def test_section_for_a_plugin_not_installed() -> None:
    error = _check('hostname = "mx.example.com"\n\n[plugins.greylist]\ndelay = "5m"\n')
    assert (error.key, error.line) == ("plugins.greylist", 3)
    assert error.message == "no plugin named 'greylist' is installed"


# -- building ---------------------------------------------------------------------


class PoolReactor(MemoryReactorClock):
    def getThreadPool(self) -> ThreadPool:
        return ThreadPool()


def _config(tmp_path: pathlib.Path, text: str) -> Config:
    return parse_config(f'queue_dir = "{tmp_path / "queue"}"\n' + text)


def test_components_are_built_once_with_their_settings() -> None:
    built: list[Mapping[str, Any]] = []

    def build(settings: Mapping[str, Any], context: Any) -> object:
        built.append(settings)
        return object()

    maker = ComponentMaker("router", "acme", "ACME", build, ACME.schema)
    config = parse_config('router = "acme"\n[plugins.acme]\ndirectory = "/d"\n')
    components = Components(config, _registry(maker), ComponentContext(reactor=None, random=None))
    first = components.get("router", "acme")
    assert components.get("router", "acme") is first
    assert built == [{"directory": "/d", "depth": 2}]


def test_context_gives_the_config_and_other_components() -> None:
    seen: list[Any] = []

    def build(settings: Mapping[str, Any], context: Any) -> Any:
        seen.append((context.config.hostname, context.component("router", "local")))
        return object()

    maker = ComponentMaker("router", "front", "Front", build)
    config = parse_config('hostname = "mx.example.com"\nrouter = "front"\n')
    components = Components(config, _registry(maker), ComponentContext(reactor=None, random=None))
    components.get("router", "front")
    [(hostname, local)] = seen
    assert hostname == "mx.example.com"
    assert local is components.get("router", "local")


def test_plugins_that_refer_to_each_other() -> None:
    def build(other: str) -> Callable[[Mapping[str, Any], Any], Any]:
        return lambda settings, context: context.component("router", other)

    first = ComponentMaker("router", "first", "First", build("second"))
    second = ComponentMaker("router", "second", "Second", build("first"))
    config = parse_config('router = "first"\n\n[plugins.first]\n')
    components = Components(config, _registry(first, second),
                            ComponentContext(reactor=None, random=None))
    with pytest.raises(ConfigError) as caught:
        components.get("router", "first")
    assert caught.value.key == "plugins.first"
    assert caught.value.message == "plugins refer to each other: first -> second -> first"
    assert caught.value.line == 3


def test_memory_store_refused_without_unsafe_store(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, 'hostname = "mx.example.com"\nstore = "memory"\n')
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(config, PoolReactor(), max_connections=10)
    assert (caught.value.key, caught.value.line) == ("store", 3)
    assert "--unsafe-store" in caught.value.message


def test_memory_store_with_unsafe_store(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Mapping[str, Any]] = []
    monkeypatch.setattr(compose.log, "observer", events.append)
    config = _config(tmp_path, 'store = "memory"\nunsafe_store = true\n')
    service = compose.build_mail_service(config, PoolReactor(), max_connections=10)
    assert isinstance(service, MailService)
    assert isinstance(service.store, MemoryQueueStore)
    assert [e["store"] for e in events if "store" in e] == ["memory"]
    assert not (tmp_path / "queue").exists()


def test_plugin_whose_factory_raises(tmp_path: pathlib.Path) -> None:
    def explode(settings: Mapping[str, Any], context: Any) -> Any:
        raise RuntimeError("no licence key")

    maker = ComponentMaker("router", "exploding", "Explodes", explode)
    config = _config(tmp_path, 'router = "exploding"\n\n[plugins.exploding]\n')
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(config, PoolReactor(), max_connections=10,
                                   registry=_registry(maker))
    assert (caught.value.key, caught.value.line) == ("plugins.exploding", 4)
    assert caught.value.message == (
        "the router plugin 'exploding' could not be built: RuntimeError: no licence key")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_store_is_not_shared_by_workers_unless_it_says_so(tmp_path: pathlib.Path) -> None:
    def build(settings: Mapping[str, Any], context: Any) -> Any:
        raise AssertionError("built although worker processes cannot share it")

    maker = ComponentMaker("store", "vault", "Keeps mail in a vault", build)
    config = _config(tmp_path, 'store = "vault"\nworkers = 2\n')
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(config, PoolReactor(), max_connections=10,
                                   registry=_registry(maker))
    assert (caught.value.key, caught.value.line) == ("workers", 3)
    assert "vault" in caught.value.message and "shared=True" in caught.value.message


def test_bad_setting_found_when_building(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, 'router = "acme"\n[plugins.acme]\ndirectory = 7\n')
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(config, PoolReactor(), max_connections=10,
                                   registry=_registry(ACME))
    assert (caught.value.key, caught.value.line) == ("plugins.acme.directory", 4)


def test_service_refused_while_a_plugin_module_is_broken(tmp_path: pathlib.Path) -> None:
    problem = PluginProblem("mailframe.plugins.acme_router", "ImportError: no acme_sdk")
    with pytest.raises(ConfigError) as caught:
        compose.build_mail_service(_config(tmp_path, ""), PoolReactor(), max_connections=10,
                                   registry=_registry(problems=(problem,)))
    assert caught.value.key == "plugins"
    assert "mailframe.plugins.acme_router" in caught.value.message
    assert "ImportError: no acme_sdk" in caught.value.message


def test_service_built_from_a_plugin_router(tmp_path: pathlib.Path) -> None:
    routers: list[Any] = []

    def build(settings: Mapping[str, Any], context: Any) -> Any:
        routers.append(StaticRouter({}))
        return routers[-1]

    maker = ComponentMaker("router", "static", "Static", build)
    config = _config(tmp_path, 'router = "static"\n')
    service = compose.build_mail_service(config, PoolReactor(), max_connections=10,
                                         registry=_registry(maker))
    assert service.runner.router is routers[0]

"""
Tests for what a component plugin is made of: settings, their types and
checks, and the maker that builds a component from them; and the maker
contract, run for every plugin that discovery finds.
"""

from __future__ import annotations

import ipaddress
import pathlib
import random
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from mailframe.components import (
    KINDS,
    SETTING_TYPES,
    ComponentMaker,
    Setting,
    SettingError,
    check_settings,
    parse_duration,
)
from mailframe.config import ComponentContext, Config
from mailframe.interfaces import (
    IComponentMaker,
    IDeliveryTransport,
    IPolicy,
    IQueueStore,
    IRouter,
)
from mailframe.registry import Components, discover
from mailframe.testing import ComponentMakerContract, MemoryQueueStore, MemoryResolver

# -- durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        (" 5M ", 300.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, False, "soon", "", "m", "5 minutes", "-5m", -1, "nan"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


# -- setting types ---------------------------------------------------------------

GOOD: list[tuple[str, Any, Any]] = [
    ("string", "relay.example.com", "relay.example.com"),
    ("string", "", ""),
    ("integer", 3, 3),
    ("integer", -2, -2),
    ("number", 3, 3.0),
    ("number", 2.5, 2.5),
    ("boolean", True, True),
    ("boolean", False, False),
    ("duration", "5m", 300.0),
    ("duration", 30, 30.0),
    ("strings", ["a", "b"], ("a", "b")),
    ("strings", [], ()),
    ("table", {"example.com": "smtp"}, {"example.com": "smtp"}),
    ("table", {}, {}),
    ("path", "/etc/mailframe/table", "/etc/mailframe/table"),
    ("networks", ["192.0.2.0/24", "2001:db8::/32"],
     (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))),
    ("networks", ["192.0.2.7"], (ipaddress.ip_network("192.0.2.7/32"),)),
    ("networks", ["192.0.2.7/24"], (ipaddress.ip_network("192.0.2.0/24"),)),
    ("host-port", "mx.example.com", "mx.example.com"),
    ("host-port", "mx.example.com:587", "mx.example.com:587"),
    ("host-port", "192.0.2.1:25", "192.0.2.1:25"),
    ("host-port", "[2001:db8::1]:25", "[2001:db8::1]:25"),
    ("host-port", "[2001:db8::1]", "[2001:db8::1]"),
    ("host-port", "mx:65535", "mx:65535"),
]

BAD: list[tuple[str, Any, str]] = [
    ("string", 1, "expected a string"),
    ("string", ["a"], "expected a string"),
    ("integer", True, "expected a whole number"),
    ("integer", 3.0, "expected a whole number"),
    ("integer", "3", "expected a whole number"),
    ("number", False, "expected a number"),
    ("number", "1.5", "expected a number"),
    ("boolean", 1, "expected true or false"),
    ("boolean", "yes", "expected true or false"),
    ("duration", "soon", "not a duration"),
    ("duration", True, "expected a duration"),
    ("strings", "a", "expected a list of strings"),
    ("strings", ["a", 1], "expected a string"),
    ("strings", {"a": "b"}, "expected a list of strings"),
    ("table", ["a"], "expected a table"),
    ("table", "a=b", "expected a table"),
    ("path", 7, "expected a string"),
    ("networks", ["not-a-network"], "'not-a-network' is not a network"),
    ("networks", "192.0.2.0/24", "expected a list of strings"),
    ("host-port", "mx.example.com:0", "is not HOST"),
    ("host-port", "mx.example.com:65536", "is not HOST"),
    ("host-port", "mx.example.com:smtp", "is not HOST"),
    ("host-port", "2001:db8::1", "is not HOST"),
    ("host-port", "[2001:db8::1", "is not HOST"),
    ("host-port", "mx example.com", "is not HOST"),
    ("host-port", "", "is not HOST"),
    ("host-port", 25, "expected a string"),
]


def test_every_type_is_covered() -> None:
    assert {kind for kind, _, _ in GOOD} == set(SETTING_TYPES)
    assert {kind for kind, _, _ in BAD} == set(SETTING_TYPES)


@pytest.mark.parametrize(("kind", "value", "parsed"), GOOD)
def test_setting_parses(kind: str, value: Any, parsed: Any) -> None:
    assert Setting(kind, None, "A setting").parse(value) == parsed


@pytest.mark.parametrize(("kind", "value", "message"), BAD)
def test_setting_refuses(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Setting(kind, None, "A setting").parse(value)


def test_unknown_setting_type_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting type 'colour'"):
        Setting("colour", None, "A colour")


def test_setting_is_frozen() -> None:
    setting = Setting("integer", 1, "A count")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setting.default = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("setting", "value", "parsed"),
    [
        (Setting("integer", 1, "A count", minimum=1), 1, 1),
        (Setting("number", 0.5, "A ratio", minimum=0.5), 0.75, 0.75),
        (Setting("duration", 60, "A delay", minimum=60), "1m", 60.0),
    ],
)
def test_minimum_allows_the_least(setting: Setting, value: Any, parsed: Any) -> None:
    assert setting.parse(value) == parsed


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (Setting("integer", 1, "A count", minimum=1), 0, "must be at least 1"),
        (Setting("number", 0.5, "A ratio", minimum=0.5), 0.25, "must be at least 0.5"),
        (Setting("duration", 60, "A delay", minimum=60), "30s", "must be at least 60"),
    ],
)
def test_minimum_refuses_less(setting: Setting, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setting.parse(value)


def test_choices() -> None:
    setting = Setting("string", "may", "TLS", choices=("none", "may", "verify"))
    assert setting.parse("verify") == "verify"
    with pytest.raises(ValueError, match="expected one of none, may, verify"):
        setting.parse("always")


# -- checking settings against a schema -----------------------------------------

SCHEMA = {
    "directory": Setting("path", None, "Where the mail goes", required=True),
    "depth": Setting("integer", 2, "How deep", minimum=0),
    "mode": Setting("string", "fast", "How", choices=("fast", "safe")),
    "networks": Setting("networks", ("default",), "Who"),
}


def test_defaults_fill_what_is_not_given() -> None:
    checked = check_settings(SCHEMA, {"directory": "/srv/mail"})
    assert checked == {"directory": "/srv/mail", "depth": 2, "mode": "fast",
                       "networks": ("default",)}


def test_defaults_are_used_as_they_are() -> None:
    # Not parsed: a default need not be a TOML value.
    marker = object()
    checked = check_settings({"x": Setting("integer", marker, "X")}, {})
    assert checked["x"] is marker


def test_given_values_are_parsed() -> None:
    checked = check_settings(
        SCHEMA, {"directory": "/d", "depth": 0, "mode": "safe", "networks": ["192.0.2.0/24"]})
    assert checked["depth"] == 0
    assert checked["mode"] == "safe"
    assert checked["networks"] == (ipaddress.ip_network("192.0.2.0/24"),)


def test_unknown_key_refused_naming_the_known_ones() -> None:
    with pytest.raises(SettingError) as caught:
        check_settings(SCHEMA, {"directory": "/d", "colour": "blue"})
    assert caught.value.key == "colour"
    assert caught.value.message == "unknown setting (known: depth, directory, mode, networks)"
    assert str(caught.value) == f"colour: {caught.value.message}"
    assert isinstance(caught.value, ValueError)


def test_unknown_key_with_no_settings_at_all() -> None:
    with pytest.raises(SettingError, match=r"known: none"):
        check_settings({}, {"anything": 1})


def test_unknown_key_comes_before_a_missing_one() -> None:
    with pytest.raises(SettingError) as caught:
        check_settings(SCHEMA, {"colour": "blue"})
    assert caught.value.key == "colour"


def test_missing_required_setting_refused_with_its_description() -> None:
    with pytest.raises(SettingError) as caught:
        check_settings(SCHEMA, {"depth": 1})
    assert caught.value.key == "directory"
    assert caught.value.message == "required: Where the mail goes"


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"depth": "deep"}, "depth", "expected a whole number"),
        ({"depth": -1}, "depth", "must be at least 0"),
        ({"mode": "reckless"}, "mode", "expected one of fast, safe"),
        ({"networks": ["nowhere"]}, "networks", "'nowhere' is not a network"),
    ],
)
def test_bad_value_refused_naming_the_key(
    settings: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(SettingError) as caught:
        check_settings(SCHEMA, {"directory": "/d", **settings})
    assert caught.value.key == key
    assert message in caught.value.message


def test_a_type_error_in_a_check_is_a_setting_error() -> None:
    # A minimum on a string compares text with a number.
    with pytest.raises(SettingError, match=r"^odd: "):
        check_settings({"odd": Setting("string", "", "Odd", minimum=1)}, {"odd": "x"})


# -- the maker -------------------------------------------------------------------


def _factory(settings: Mapping[str, Any], context: Any) -> Any:
    return ("built", dict(settings), context)


@pytest.mark.parametrize("kind", KINDS)
def test_kinds_accepted(kind: str) -> None:
    assert ComponentMaker(kind, "acme", "ACME", _factory).kind == kind


@pytest.mark.parametrize("kind", ["filter", "Router", "routers", ""])
def test_unknown_kind_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind must be one of store, router, policy, transport"):
        ComponentMaker(kind, "acme", "ACME", _factory)


@pytest.mark.parametrize("name", ["acme", "relay-control", "a.b_c", "0day", "x"])
def test_names_accepted(name: str) -> None:
    assert ComponentMaker("router", name, "ACME", _factory).name == name


@pytest.mark.parametrize("name", ["ACME", "Acme", "-acme", "_acme", ".acme", "a b", "a/b",
                                  "", "acme!", "routér"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="a name is lower-case letters"):
        ComponentMaker("router", name, "ACME", _factory)


def test_maker_provides_the_interfaces() -> None:
    maker = ComponentMaker("router", "acme", "ACME", _factory, {"directory": SCHEMA["directory"]})
    assert verifyObject(IComponentMaker, maker)
    assert IPlugin.providedBy(maker)
    assert maker.durable


def test_build_passes_checked_settings_and_the_context() -> None:
    maker = ComponentMaker("router", "acme", "ACME", _factory, SCHEMA)
    context = object()
    built = maker.build({"directory": "/srv/mail", "networks": ["192.0.2.0/24"]}, context)
    assert built == ("built", {"directory": "/srv/mail", "depth": 2, "mode": "fast",
                               "networks": (ipaddress.ip_network("192.0.2.0/24"),)}, context)


def test_build_refuses_bad_settings_before_the_factory_runs() -> None:
    calls: list[object] = []
    maker = ComponentMaker("router", "acme", "ACME",
                           lambda settings, context: calls.append(settings), SCHEMA)
    with pytest.raises(SettingError, match="colour"):
        maker.build({"directory": "/d", "colour": "blue"}, None)
    with pytest.raises(SettingError, match="directory"):
        maker.build({}, None)
    assert calls == []


def test_check_returns_the_checked_settings() -> None:
    maker = ComponentMaker("router", "acme", "ACME", _factory, SCHEMA)
    assert maker.check({"directory": "/d"})["depth"] == 2


def _no_deep_fast(settings: Mapping[str, Any]) -> None:
    if settings["mode"] == "fast" and settings["depth"] > 3:
        raise SettingError("depth", "a fast mode goes at most 3 deep")


def test_validate_sees_the_checked_settings_and_can_refuse() -> None:
    calls: list[object] = []
    maker = ComponentMaker("router", "acme", "ACME",
                           lambda settings, context: calls.append(settings), SCHEMA,
                           validate=_no_deep_fast)
    assert maker.check({"directory": "/d", "depth": 3})["depth"] == 3
    assert maker.check({"directory": "/d", "depth": 9, "mode": "safe"})["depth"] == 9
    with pytest.raises(SettingError, match="at most 3 deep") as raised:
        maker.check({"directory": "/d", "depth": 4})
    assert raised.value.key == "depth"
    with pytest.raises(SettingError, match="at most 3 deep"):
        maker.build({"directory": "/d", "depth": 4}, None)
    assert calls == []


# -- the contract, for every plugin that discovery finds --------------------------

_REGISTRY = discover()

#: The interface that a component of each kind provides.
_PROVIDES: Mapping[str, type[Interface]] = {
    "store": IQueueStore,
    "router": IRouter,
    "policy": IPolicy,
    "transport": IDeliveryTransport,
}


class _PoolReactor(MemoryReactorClock):
    def getThreadPool(self) -> ThreadPool:
        return ThreadPool()


class _DiscoveredMaker:
    """
    The maker contract for one discovered maker, and building it with the
    defaults of its settings.
    """

    key: tuple[str, str]
    assertTrue: Any
    addCleanup: Any

    def make_maker(self) -> Any:
        return _REGISTRY.makers[self.key]

    def make_context(self) -> ComponentContext:
        reactor = _PoolReactor()
        rng = random.Random(0)
        directory = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-maker-"))
        self.addCleanup(shutil.rmtree, directory, True)
        config = Config(
            hostname="mx.example.com",
            queue_dir=str(directory / "queue"),
            local_domains=(("example.com", str(directory / "mail")),),
        )
        context = ComponentContext(
            reactor=reactor, random=rng, resolver=MemoryResolver(),
            store=MemoryQueueStore(reactor, random=rng),
            log=Logger(namespace=f"tests.{self.key[1]}"),
        )
        # Filled in with the config, and a component() that builds others.
        return Components(config, _REGISTRY, context).context

    def test_builds_from_its_defaults(self) -> None:
        """
        Built with no settings, a maker gives a component of its kind, or
        refuses with a :class:`SettingError` that names one of its settings
        (a required one, or one of several that need one given).
        """
        maker = self.make_maker()
        schema = getattr(maker, "schema", {})
        required = sorted(key for key, setting in schema.items() if setting.required)
        try:
            component = maker.build({}, self.make_context())
        except SettingError as error:
            self.assertTrue(error.key in schema, f"{error.key!r} is not a setting")
            return
        self.assertTrue(not required, f"built without its required {required}")
        self.assertTrue(verifyObject(_PROVIDES[maker.kind], component))

for _key in sorted(_REGISTRY.makers):
    _name = "Test" + "".join(part.capitalize() for part in
                             f"{_key[1]} {_key[0]} maker".replace("-", " ").replace(".", " ")
                             .replace("_", " ").split())
    globals()[_name] = type(_name, (_DiscoveredMaker, ComponentMakerContract,
                                    SynchronousTestCase), {"key": _key})


def test_discovery_loaded_every_module() -> None:
    assert _REGISTRY.problems == ()


@pytest.mark.parametrize("value", ["inf", "1e400", float("inf")])
def test_infinite_duration_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


def test_choices_of_a_list_apply_to_each_item() -> None:
    setting = Setting("strings", (), "Checks", choices=("spf", "dkim", "dmarc"))
    assert setting.parse(["spf", "dmarc"]) == ("spf", "dmarc")
    with pytest.raises(ValueError, match="expected one of spf, dkim, dmarc"):
        setting.parse(["spf", "sender-id"])

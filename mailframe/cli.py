"""
The ``mailframe`` command.

``mailframe check-config FILE`` reads a config file the way ``twistd
mailframe --config FILE`` does and reports the first problem, naming the
key and the line.

``mailframe plugins`` lists the component plugins that a config file can
name, with the distribution that installed each, and any plugin module that
failed to import.

``mailframe queue COMMAND`` looks at the queue and changes it, also while
the server runs: ``list``, ``show``, ``flush``, ``delete``, ``hold``,
``release``, ``requeue`` and ``stats``, each given the queue with
``--queue-dir DIR`` or ``--config FILE``.

``mailframe db upgrade --config FILE`` brings the schema of the database
that the config's ``postgres`` store uses up to date; ``mailframe db status
--config FILE`` says whether it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailframe._queuecmd import add_queue_command

if TYPE_CHECKING:
    from mailframe.registry import Registry

__all__ = ["main"]


def _check_config(arguments: argparse.Namespace) -> int:
    from mailframe.config import ComponentContext, load_config
    from mailframe.errors import ConfigError
    from mailframe.registry import Components, discover

    try:
        config = load_config(arguments.file)
        registry = discover()
        Components(config, registry, ComponentContext(reactor=None, random=None)).check()
    except ConfigError as error:
        print(f"{arguments.file}: {error}", file=sys.stderr)
        return 1
    if registry.problems:
        # twistd refuses to start while one is broken (compose.build_mail_service).
        for problem in registry.problems:
            print(f"{arguments.file}: plugins: {problem.module}: {problem.message}",
                  file=sys.stderr)
        return 1
    print(f"{arguments.file}: ok ({len(config.effective_listeners())} listener(s),"
          f" {len(config.local_domains)} local domain(s))")
    return 0


_PLUGINS_HELP = """\
List every component plugin found in the mailframe/plugins/ directories on
the Python path: its kind, the name a config file selects it by, the
distribution that installed it, and what it does. A plugin module that
failed to import, or that gives a name another plugin already has, is
reported too.
"""

_PLUGINS_EPILOG = """\
exit status: 0 when every plugin module loaded, 1 when one failed to import
or repeated another plugin's name.
"""


def _plugin_rows(registry: Registry) -> list[dict[str, str]]:
    """One row per plugin, in the order of the kinds, then by name."""
    from mailframe.components import KINDS

    def order(key: tuple[str, str]) -> tuple[int, str, str]:
        kind, name = key
        return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind, name)

    return [
        {
            "kind": kind,
            "name": name,
            "description": str(registry.makers[kind, name].description),
            "distribution": registry.distribution(kind, name),
            "module": registry.modules.get((kind, name), ""),
        }
        for kind, name in sorted(registry.makers, key=order)
    ]


def _plugins(arguments: argparse.Namespace) -> int:
    from mailframe.registry import discover

    registry = discover()
    rows = _plugin_rows(registry)
    if arguments.json:
        for row in rows:
            print(json.dumps(row))
        for problem in registry.problems:
            print(json.dumps({"module": problem.module, "problem": problem.message,
                              "detail": problem.detail}))
    else:
        columns = ("kind", "name", "distribution", "description")
        table = [{column: column.upper() for column in columns}, *rows]
        widths = {column: max(len(row[column]) for row in table) for column in columns[:-1]}
        for row in table:
            cells = [row[column].ljust(widths[column]) for column in columns[:-1]]
            print("  ".join([*cells, row["description"]]).rstrip())
        for problem in registry.problems:
            print(f"mailframe plugins: {problem.module}: {problem.message}", file=sys.stderr)
    return 1 if registry.problems else 0


def _db(arguments: argparse.Namespace) -> int:
    from mailframe.config import ComponentContext, load_config
    from mailframe.errors import ConfigError
    from mailframe.registry import Components, discover

    name = arguments.config
    try:
        config = load_config(name)
        registry = discover()
        Components(config, registry, ComponentContext(reactor=None, random=None)).check()
    except ConfigError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    if config.store != "postgres":
        print(f"{name}: store: the {config.store} store has no database schema;"
              " mailframe db works on the postgres store", file=sys.stderr)
        return 1
    settings = registry.maker("store", "postgres").check(config.plugin_settings("postgres"))
    from mailframe.stores import StoreUnavailable
    from mailframe.stores._pgschema import SCHEMA_VERSION, mismatch_message
    from mailframe.stores.postgres import MissingDriver, describe_dsn, schema_version, upgrade

    dsn = settings["dsn"]
    where = describe_dsn(dsn)
    try:
        if arguments.action == "upgrade":
            before, after = upgrade(dsn, settings["connect_timeout"])
            if before == after:
                print(f"{where}: schema version {after}, up to date")
            else:
                print(f"{where}: schema upgraded from version {before} to {after}")
            return 0
        version = schema_version(dsn, settings["connect_timeout"])
    except (StoreUnavailable, MissingDriver) as error:
        print(f"mailframe db: {error}", file=sys.stderr)
        return 1
    problem = mismatch_message(version)
    if problem is None:
        print(f"{where}: schema version {version}, up to date")
        return 0
    print(f"{where}: schema version {version}, needs {SCHEMA_VERSION}: {problem}")
    return 2


def _parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = argparse.ArgumentParser(prog="mailframe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="check a config file")
    check.add_argument("file")
    check.set_defaults(run=_check_config)
    plugins = commands.add_parser(
        "plugins", help="list the component plugins", description=_PLUGINS_HELP,
        epilog=_PLUGINS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plugins.add_argument("--json", action="store_true",
                         help="one JSON object per line: each plugin's kind, name,"
                              " description, distribution and module; then each"
                              " problem's module, message (problem) and traceback"
                              " (detail)")
    plugins.set_defaults(run=_plugins)
    add_queue_command(commands)
    db = commands.add_parser(
        "db", help="manage the database of the postgres store",
        description="Manage the schema of the database that the postgres store of a config"
                    " file uses.",
        epilog="exit status: 0 when the schema is up to date (after an upgrade), 1 for an"
               " error, 2 when status finds that it needs an upgrade.",
    )
    db.add_argument("action", choices=["upgrade", "status"],
                    help="upgrade: apply the schema migrations the database lacks (safe to"
                         " repeat); status: show the schema version")
    db.add_argument("--config", metavar="FILE", required=True,
                    help="the config file whose [plugins.postgres] dsn names the database")
    db.set_defaults(run=_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    arguments = _parser().parse_args(argv)
    status: int = arguments.run(arguments)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""
The ``mailframe`` command.

``mailframe check-config FILE`` reads a config file the way ``twistd
mailframe --config FILE`` does and reports the first problem, naming the
key and the line.

``mailframe queue COMMAND`` looks at the queue and changes it, also while
the server runs: ``list``, ``show``, ``flush``, ``delete``, ``hold``,
``release``, ``requeue`` and ``stats``, each given the queue with
``--queue-dir DIR`` or ``--config FILE``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailframe._queuecmd import add_queue_command

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
    for problem in registry.problems:
        print(f"{arguments.file}: warning: plugin module {problem.module} failed to load:"
              f" {problem.message}", file=sys.stderr)
    print(f"{arguments.file}: ok ({len(config.effective_listeners())} listener(s),"
          f" {len(config.local_domains)} local domain(s))")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = argparse.ArgumentParser(prog="mailframe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="check a config file")
    check.add_argument("file")
    check.set_defaults(run=_check_config)
    add_queue_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    arguments = _parser().parse_args(argv)
    status: int = arguments.run(arguments)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""
The postgres store from the command line, without a database: the example
config checks, discovery does without the driver, and ``mailframe db``
refuses what it cannot work on. (With a database: tests/stores/test_postgres.py
and tests/interop/test_postgres_server.py.)
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO))
#: Run first in the child: psycopg and psycopg_pool cannot be imported.
NO_DRIVER = "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None; "


def mailframe(*argv: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = prelude + "from mailframe.cli import main; sys.exit(main(sys.argv[1:]))"
    if "import sys" not in code:
        code = "import sys; " + code
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=ENV)


def test_example_config_checks() -> None:
    result = mailframe("check-config", "examples/postgres.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("examples/postgres.toml: ok")


def test_plugins_lists_the_store_without_the_driver() -> None:
    result = mailframe("plugins", prelude=NO_DRIVER)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["store", "postgres"] for line in result.stdout.splitlines())


def test_building_without_the_driver_names_the_package() -> None:
    code = NO_DRIVER + (
        "from mailframe.config import ComponentContext\n"
        "from mailframe.stores.postgres import postgres_maker\n"
        "try:\n"
        "    postgres_maker.build({'dsn': 'dbname=x'}, ComponentContext(None, None))\n"
        "except ImportError as error:\n"
        "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mailframe[postgres]'" in result.stdout


def test_db_refuses_another_store(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "spool.toml"
    config.write_text('store = "spool"\n')
    result = mailframe("db", "upgrade", "--config", str(config))
    assert result.returncode == 1
    assert "the spool store has no database schema" in result.stderr


def test_db_names_a_missing_dsn(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "postgres.toml"
    config.write_text('store = "postgres"\n\n[plugins.postgres]\npool_size = 3\n')
    result = mailframe("db", "status", "--config", str(config))
    assert result.returncode == 1
    assert "plugins.postgres.dsn" in result.stderr and "line 3" in result.stderr, result.stderr

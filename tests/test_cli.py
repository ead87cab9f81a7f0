"""Tests for the mailframe command."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mailframe import registry
from mailframe.cli import main
from mailframe.components import ComponentMaker
from mailframe.registry import PluginProblem, Registry

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_check_config(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('hostname = "mx.example.com"\n')
    assert main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('hostname = "mx.example.com"\n\nmax_recipients = "many"\n')
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "max_recipients (line 3)" in err


def test_check_config_checks_plugin_settings(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mailframe.toml"
    config.write_text('hostname = "mx.example.com"\nstore = "spool"\n\n'
                      '[plugins.spool]\nmin_free = 0\ncolour = "blue"\n')
    assert main(["check-config", str(config)]) == 1
    assert "plugins.spool.colour (line 6): unknown setting" in capsys.readouterr().err


def test_check_config_names_an_unknown_plugin(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mailframe.toml"
    config.write_text('hostname = "mx.example.com"\nrouter = "acme"\n')
    assert main(["check-config", str(config)]) == 1
    assert "router (line 2): no router plugin named 'acme'" in capsys.readouterr().err


# -- mailframe plugins -------------------------------------------------------------


def test_plugins_lists_the_built_ins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]
    rows = {tuple(line.split()[:2]) for line in lines[1:]}
    assert {("store", "spool"), ("store", "memory"), ("router", "local"),
            ("policy", "relay-control"), ("transport", "maildir")} <= rows
    # Grouped by kind, in the order a config names them.
    kinds = [line.split()[0] for line in lines[1:]]
    assert kinds == sorted(kinds, key=["store", "router", "policy", "transport"].index)
    spool = next(line for line in lines if line.startswith("store ") and " spool " in line)
    assert "Durable queue" in spool
    assert err == ""


def test_plugins_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(row) == {"kind", "name", "description", "distribution", "module"}
               for row in rows)
    [spool] = [row for row in rows if row["name"] == "spool"]
    assert spool["kind"] == "store"
    assert spool["module"] == "mailframe.plugins.mailframe_builtins"
    assert spool["distribution"]


def _broken_registry() -> Registry:
    maker = ComponentMaker("router", "acme", "Routes the ACME way", lambda s, c: None)
    return Registry(
        {("router", "acme"): maker}, {("router", "acme"): "mailframe.plugins.acme"},
        (PluginProblem("mailframe.plugins.broken", "ImportError: no acme_sdk", "Traceback"),),
    )


def test_plugins_reports_modules_that_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry, "discover", _broken_registry)
    assert main(["plugins"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:2] == ["router", "acme"]
    assert err == "mailframe plugins: mailframe.plugins.broken: ImportError: no acme_sdk\n"


def test_plugins_reports_modules_that_failed_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry, "discover", _broken_registry)
    assert main(["plugins", "--json"]) == 1
    acme, problem = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert acme["name"] == "acme"
    assert acme["distribution"] == "unknown"
    assert problem == {"module": "mailframe.plugins.broken", "problem": "ImportError: no acme_sdk",
                       "detail": "Traceback"}


def test_plugins_help_gives_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plugins", "--help"])
    assert "exit status: 0 when every plugin module loaded, 1 when" in capsys.readouterr().out


def test_twistd_help_imports_no_component_plugin(tmp_path: pathlib.Path) -> None:
    # Listing twistd's options must stay cheap: no plugin module, and no
    # discovery, is imported for it.
    script = (
        "import sys\n"
        "from twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd', 'mailframe', '--help']\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in sys.modules if m.startswith(('mailframe.plugins',"
        " 'mailframe.registry', 'mailframe.compose'))]\n"
        "print(sorted(loaded), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "--config" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"

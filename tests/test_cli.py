"""Tests for the mailframe command."""

from __future__ import annotations

import pathlib

import pytest

from mailframe.cli import main


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

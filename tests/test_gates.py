"""
The lint and type gates, run with the tests so that one command runs every
gate. The documentation build is in tests/test_docs.py.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

from tests._missing import unavailable

REPO = pathlib.Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    found = pathlib.Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed: pip install '.[dev]'")
    return path


def run(*argv: str) -> None:
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint() -> None:
    run(tool("ruff"), "check", "mailframe", "tests", "examples", "twisted", "docs", "benchmarks")


def test_mypy_strict() -> None:
    run(tool("mypy"))

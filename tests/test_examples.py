"""
Every program in ``examples/`` runs, and says what it should.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def run(example: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(example)], cwd=REPO, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: pathlib.Path) -> None:
    result = run(example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), result.stderr


def test_custom_policy() -> None:
    result = run(REPO / "examples" / "custom_policy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert re.search(r"^friend@good\.example: accepted$", output, re.M), output
    assert re.search(r"^bulk@spam\.example: refused, 550 \S", output, re.M), output
    delivered = output.split("delivered to alice:\n", 1)
    assert len(delivered) == 2, output
    message = delivered[1]
    headers = message.split("\n\n", 1)[0].splitlines()
    assert "X-Checked-By: NoSpamFromSpamExample" in headers, message
    assert "Return-Path: <friend@good.example>" in headers, message
    assert "Delivered-To: alice@example.com" in headers, message
    assert "spam.example" not in message

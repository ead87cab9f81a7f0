"""
The client benchmark (benchmarks/client_throughput.py) runs: a tiny run
against a real smtp-sink exits 0 and prints a table with both clients. It
says nothing about speed.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests._missing import unavailable

pytestmark = pytest.mark.interop

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "client_throughput.py"
VARIANTS = ("mailframe", "aiosmtplib")


def smtp_sink() -> str:
    found = shutil.which("smtp-sink") or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")
         if (p := pathlib.Path(d) / "smtp-sink").exists()), None)
    if found is None:
        unavailable("smtp-sink is not installed (Debian: apt-get install -y postfix)")
    return found


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by variant: the cells after the variant's name."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in VARIANTS:
            found[cells[0]] = cells[1:]
    return found


def test_tiny_run_prints_both_clients(tmp_path: pathlib.Path) -> None:
    sink = smtp_sink()
    try:
        import aiosmtplib  # noqa: F401
    except ImportError as error:
        unavailable(f"aiosmtplib is not importable ({error}): install mailframe with [test]")
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--messages", "50", "--rounds", "1",
         "--connections", "1", "--smtp-sink", sink, "--timeout", "60", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(result.stdout)
    assert set(found) == set(VARIANTS), result.stdout
    for variant, cells in found.items():
        connections, rate = cells[0], float(cells[1])
        assert connections == "1", result.stdout
        assert rate > 0, (variant, result.stdout)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert {r["variant"] for r in saved["runs"]} == set(VARIANTS)
    for run in saved["runs"]:
        assert run["ok"], run
        assert run["sent"] == 50, run
        assert run["sink_messages"] == 50, run
        assert run["cpu_us_per_msg"] > 0, run

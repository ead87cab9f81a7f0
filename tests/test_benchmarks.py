"""
The benchmarks run: a tiny run of the client benchmark
(benchmarks/client_throughput.py) against a real smtp-sink exits 0 and
prints a table with both clients, and a run of the queue benchmark
(benchmarks/queue_scale.py) on 500 entries exits 0 and prints every row,
and a tiny run of the server benchmark (benchmarks/mta_bench.py) prints a
row of figures for every scenario, and a tiny run of the delivery
benchmark (benchmarks/delivery.py) relays every message of both stores to
a real smtp-sink. They say nothing about speed.
"""

from __future__ import annotations

import json
import pathlib
import runpy
import shutil
import subprocess
import sys

import pytest

from mailframe.stores._syncfs import load_syncfs
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


QUEUE_SCALE = REPO / "benchmarks" / "queue_scale.py"
#: The rows that the queue benchmark's table has, each with a cell per spool.
QUEUE_ROWS = (
    "entries",
    "recover() (s)",
    "recover() peak RSS growth (MiB)",
    "queue stats (s)",
    "queue stats peak RSS (MiB)",
    "queue list --json (s)",
    "queue list --json lines",
    "queue list --json peak RSS (MiB)",
    "due-scan: due entries claimed",
    "due-scan: first claim (ms)",
    "due-scan: all claims (s)",
)


def test_queue_scale_small_run(tmp_path: pathlib.Path) -> None:
    """
    The queue benchmark (benchmarks/queue_scale.py) on 500 entries: it exits 0,
    and its table lists and claims what it generated, on the three spools.
    """
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(QUEUE_SCALE), "--count", "500", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4:
            found[cells[0]] = cells[1:]
    for row in QUEUE_ROWS:
        assert row in found, (row, result.stdout)
    assert found["entries"] == ["0", "50", "500"], result.stdout
    assert found["queue list --json lines"] == ["0", "50", "500"], result.stdout
    # 1% due by default.
    assert found["due-scan: due entries claimed"] == ["0", "0", "5"], result.stdout
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["failure"] is None
    assert [s["recovered"] for s in saved["spools"]] == [0, 50, 500]


def test_large_message_small_run() -> None:
    """
    The large-message benchmark on a 2 MB message: it exits 0 and prints a
    row per round with the size it sent, and the summary line.
    """
    script = REPO / "benchmarks" / "large_message.py"
    result = subprocess.run(
        [sys.executable, str(script), "--size-mb", "2", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 1 and float(rows[0][1]) > 2.0, result.stdout
    assert "median rise of peak RSS for a 2 MB message:" in result.stdout, result.stdout


MTA_BENCH = REPO / "benchmarks" / "mta_bench.py"
#: The scenarios of the server benchmark, each a row of its table.
MTA_SCENARIOS = ("small-hold", "small-discard", "small-maildir", "large-hold",
                 "relay-small", "relay-rcpt10")


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "tuned"])
def test_mta_bench_tiny_run(tmp_path: pathlib.Path, tuned: bool) -> None:
    """
    The server benchmark (benchmarks/mta_bench.py) at a fiftieth of its
    messages, one round, no client comparison, as configured by default and
    with --tuned: it exits 0, and every scenario's row has figures. The
    relay rows show one downstream transaction per message, and the spool
    rows their directory fsyncs.
    """
    smtp_sink()
    if shutil.which("smtp-source") is None and not any(
            (pathlib.Path(d) / "smtp-source").exists()
            for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")):
        unavailable("smtp-source is not installed (Debian: apt-get install -y postfix)")
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(MTA_BENCH), "--scale", "0.02", "--rounds", "1", "--no-client",
         "--run-timeout", "60", "--json", str(out), *(["--tuned"] if tuned else [])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("spool and maildir sync = filesystem" in result.stdout) is tuned, result.stdout
    found = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in MTA_SCENARIOS:
            found[cells[0]] = cells[1:]
    assert set(found) == set(MTA_SCENARIOS), result.stdout
    for scenario, cells in found.items():
        _, _, runs, rate, least, cpu, least_cpu, fsyncs, txn = cells
        assert runs == "1", (scenario, result.stdout)
        assert float(rate) >= float(least) > 0, (scenario, result.stdout)
        assert float(cpu) >= float(least_cpu) > 0, (scenario, result.stdout)
        if scenario == "small-discard":
            assert fsyncs == "", result.stdout
        else:
            assert float(fsyncs) > 0, (scenario, result.stdout)
        if scenario.startswith("relay-"):
            assert float(txn) == 1.0, (scenario, result.stdout)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert {r["scenario"] for r in saved["runs"] if r["ok"]} == set(MTA_SCENARIOS)
    assert {r["scenario"]: r["messages"] for r in saved["runs"]}["large-hold"] == 20


@pytest.mark.parametrize(("server", "log"), [
    ("mailframe", "twisted"), ("mailframe", "mailframe"), ("twisted", "twisted"),
])
def test_session_cpu_tiny_run(server: str, log: str) -> None:
    """
    The in-process session benchmark (benchmarks/session_cpu.py) on 100
    messages: mailframe with either text observer, and twisted.mail's
    server. It exits 0 with a row of figures (it exits non-zero itself
    when the server did not accept every message).
    """
    script = REPO / "benchmarks" / "session_cpu.py"
    result = subprocess.run(
        [sys.executable, str(script), "--messages", "100", "--rounds", "2", "--log", log,
         "--server", server],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = [cell.strip() for cell in result.stdout.splitlines()[-1].strip("|").split("|")]
    named, messages, size, rounds, median, best = cells
    assert (named, messages, size, rounds) == (server, "100", "1024", "2"), result.stdout
    assert float(median) >= float(best) > 0, result.stdout


def test_session_cpu_counts_instructions() -> None:
    """
    ``--instructions --cache`` counts, under valgrind, the instructions of
    one round beyond the warm-up: per message, more than the 20 KB that
    the core scans, and far fewer than the start of the interpreter, which
    the warm-up run takes away. Beside them, the simulated L1 data cache
    misses and mispredicted branches: some, and fewer than instructions.
    """
    if shutil.which("valgrind") is None:
        unavailable("valgrind is not installed")
    script = REPO / "benchmarks" / "session_cpu.py"
    result = subprocess.run(
        [sys.executable, str(script), "--messages", "20", "--size", "20480", "--instructions",
         "--cache"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    heading, _, row = result.stdout.splitlines()[-3:]
    assert "L1d misses/msg" in heading and "mispredicts/msg" in heading, result.stdout
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["mailframe", "20", "20480"], result.stdout
    count, l1d, mispredicts = (int(cell) for cell in cells[3:])
    assert 20_480 < count < 20_000_000, result.stdout
    assert 0 < l1d < count and 0 < mispredicts < count, result.stdout


def test_callgrind_events_reads_the_totals() -> None:
    """
    The benchmark reads each event's total from callgrind's output file by
    the event's name, and refuses a file that has none.
    """
    bench = runpy.run_path(str(REPO / "benchmarks" / "session_cpu.py"), run_name="bench")
    text = "version: 1\nevents: Ir D1mr Bcm\nfn=main\n1 9 2 1\nsummary: 1000 70 30\n"
    assert bench["callgrind_events"](text) == {"Ir": 1000, "D1mr": 70, "Bcm": 30}
    with pytest.raises(ValueError):
        bench["callgrind_events"]("events: Ir\n")


def test_session_cpu_refuses_a_round_without_acceptances(tmp_path: pathlib.Path) -> None:
    """
    The session benchmark checks its rounds: one whose messages the server
    did not accept ends it with an error, not with a figure.
    """
    script = REPO / "benchmarks" / "session_cpu.py"
    code = (
        "import runpy, sys\n"
        f"bench = runpy.run_path({str(script)!r}, run_name='bench')\n"
        "one = bench['session'](sys.argv[1])\n"
        "def silent(number): pass\n"
        "silent.accepted = one.accepted\n"
        "bench['measure'](silent, 3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 of 3 messages were accepted" in result.stderr, result.stderr


SPOOL_COMMIT = REPO / "benchmarks" / "spool_commit.py"


def test_spool_commit_tiny_run(tmp_path: pathlib.Path) -> None:
    """
    The spool benchmark (benchmarks/spool_commit.py) on 60 messages: it exits
    0, prints a row for each variant, and its JSON has a run per round and
    variant, in which the spool made at least one fsync per message and the
    claim round emptied the spool (the script fails otherwise).
    """
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(SPOOL_COMMIT), "--messages", "60", "--writers", "5",
         "--rounds", "2", "--dir", str(tmp_path), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    variants = [line.split("|")[1].strip() for line in result.stdout.splitlines()
                if line.startswith("| ") and not line.startswith("| variant")]
    # syncfs is measured where the spool can use it.
    shared = ["syncfs"] if load_syncfs()[0] is not None else []
    assert variants == ["spool", "raw", *shared, "claim"], result.stdout
    assert "plumbing (spool - raw, user+sys µs/msg): median" in result.stdout, result.stdout
    saved = json.loads(out.read_text(encoding="utf-8"))["runs"]
    assert {variant: len(runs) for variant, runs in saved.items()} == dict.fromkeys(
        ["spool", "raw", *shared, "claim"], 2)
    for run in saved["spool"]:
        assert run["fsyncs"] >= 1 and 0 < run["dir_fsyncs"] <= 1, run
        assert run["syncfs"] == 0, run
        assert run["msgs_s"] > 0, run
    for run in saved.get("syncfs", []):
        # Directories only: the files were made durable by syncfs.
        assert 0 < run["syncfs"] <= 1 and run["fsyncs"] == run["dir_fsyncs"], run
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "temporary spools left"


DELIVERY = REPO / "benchmarks" / "delivery.py"


def test_delivery_tiny_run(tmp_path: pathlib.Path) -> None:
    """
    The delivery benchmark (benchmarks/delivery.py) on 50 messages, one
    round, both stores: it exits 0, every run delivered every message to a
    real smtp-sink, and each store's row has figures.
    """
    sink = smtp_sink()
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(DELIVERY), "--messages", "50", "--rounds", "1",
         "--smtp-sink", sink, "--timeout", "60", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in ("spool", "memory"):
            found[cells[0]] = cells[1:]
    assert set(found) == {"spool", "memory"}, result.stdout
    for store, cells in found.items():
        runs, rate, least, cpu, least_cpu = cells[:5]
        assert runs == "1", (store, result.stdout)
        assert float(rate) >= float(least) > 0, (store, result.stdout)
        assert float(cpu) >= float(least_cpu) > 0, (store, result.stdout)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert {r["store"] for r in saved["runs"]} == {"spool", "memory"}
    for run in saved["runs"]:
        assert run["ok"], run
        assert run["delivered"] == 50 and run["sink_messages"] == 50, run
        assert run["reactor_us_per_msg"] > 0, run

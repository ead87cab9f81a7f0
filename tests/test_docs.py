"""
The documentation gate: the user guide builds with warnings as errors, and
the examples it includes are correct.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tests._missing import unavailable

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLES = DOCS / "_examples"
TIMEOUT = 300


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit status {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _env() -> dict[str, str]:
    """The environment of a child that imports the working tree and the examples."""
    env = dict(os.environ)
    paths = [str(REPO), str(EXAMPLES)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def test_sphinx_build_has_no_warnings(tmp_path: pathlib.Path) -> None:
    try:
        import sphinx  # noqa: F401
    except ImportError as error:
        unavailable(f"sphinx is not importable ({error}): install mailframe with the [dev] extra")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-b", "html", "docs", str(tmp_path / "html")],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        print(_output(result))
    assert result.returncode == 0, _output(result)


def test_example_config_is_valid() -> None:
    from mailframe.config import load_config

    config = load_config(str(EXAMPLES / "mailframe.toml"))
    assert config.hostname == "mx.example.com"
    assert len(config.listen) == 2
    assert [domain for domain, _ in config.local_domains] == ["example.com", "example.net"]


def test_example_components_pass_their_tests(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(EXAMPLES),
            str(EXAMPLES / "test_acme.py"),
        ],
        cwd=str(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, _output(result)


@pytest.mark.parametrize("tac", ["mail.tac", "acme.tac"])
def test_example_applications_load(tac: str, tmp_path: pathlib.Path) -> None:
    # Loading an application builds its services without starting them:
    # nothing listens, and the spool is not touched.
    script = textwrap.dedent(
        """
        import sys
        from twisted.application.service import IServiceCollection, loadApplication
        application = loadApplication(sys.argv[1], "python")
        print(len(list(IServiceCollection(application))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(EXAMPLES / tac)],
        cwd=str(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, _output(result)
    assert int(result.stdout.strip().splitlines()[-1]) >= 1, _output(result)

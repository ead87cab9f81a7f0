"""
A component plugin installed the way its users would install it: a wheel
of a distribution of its own that ships only
``mailframe/plugins/acme_router.py``, pip-installed into a virtual
environment that holds a regular (non-editable) install of mailframe, whose
plugin cache was written before the plugin arrived.

From that environment, ``mailframe plugins`` lists the plugin,
``mailframe check-config`` checks its settings, and ``twistd -n mailframe``
with a config that names it routes mail through it.

The environment is made once for the module. Building it needs the package
index (for mailframe's dependencies and the build backend): without one the
tests are skipped, and under CI they fail.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator, Sequence

import attrs
import pytest

from tests._missing import unavailable

REPO = pathlib.Path(__file__).resolve().parent.parent

#: What the throwaway distribution is called, and its version.
DISTRIBUTION = "acme-mail-router"
VERSION = "1.2.3"

PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{DISTRIBUTION}"
version = "{VERSION}"
description = "Routes every recipient to a Maildir of its own"
requires-python = ">=3.11"
dependencies = ["mailframe"]

[tool.setuptools]
# The plugin module alone: mailframe/__init__.py and
# mailframe/plugins/__init__.py belong to mailframe.
py-modules = ["mailframe.plugins.acme_router"]
"""

PLUGIN = '''\
"""ACME's router: every recipient to the Maildir of its local part."""

from mailframe.components import ComponentMaker, Setting


def _build(settings, context):
    import os

    from twisted.internet.defer import succeed
    from zope.interface import implementer

    from mailframe.envelope import Route
    from mailframe.interfaces import IRouter

    @implementer(IRouter)
    class AcmeRouter:
        def route(self, envelope, recipient):
            name = recipient.local_part.lower()
            if not name or name.startswith(".") or "/" in name:
                raise ValueError(f"no mailbox for {recipient}")
            directory = os.path.join(settings["directory"], name)
            return succeed([(recipient, recipient, Route("maildir", {"directory": directory}))])

    return AcmeRouter()


acme_router = ComponentMaker(
    kind="router",
    name="acme",
    description="Routes every recipient to ACME's Maildir of its local part",
    factory=_build,
    schema={"directory": Setting("path", None, "Where the Maildirs are", required=True)},
)
'''

#: Seconds that one pip command may take.
PIP_TIMEOUT = 300


@attrs.frozen
class Environment:
    """
    The virtual environment, and what was seen before the plugin arrived.

    :ivar root: a directory for the tests' files.
    :ivar venv: the virtual environment.
    :ivar plugins_dir: its ``site-packages/mailframe/plugins``.
    :ivar wheel: the plugin's wheel.
    :ivar before: ``mailframe plugins --json`` before the plugin was installed.
    :ivar cached_before: the modules in the plugin cache then.
    """

    root: pathlib.Path
    venv: pathlib.Path
    plugins_dir: pathlib.Path
    wheel: pathlib.Path
    before: subprocess.CompletedProcess[str]
    cached_before: frozenset[str]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a program of the environment, away from the repository."""
        return subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], capture_output=True,
                              text=True, timeout=timeout, cwd=str(self.root), env=_clean_env())


def _clean_env() -> dict[str, str]:
    """The environment, without anything that would put the repository on the path."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}


def _pip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--timeout", "60", *argv],
        capture_output=True, text=True, timeout=PIP_TIMEOUT, env=_clean_env(),
    )


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"


def _copy_mailframe(destination: pathlib.Path) -> None:
    """What building mailframe needs, copied, so the build writes nothing in the repository."""
    destination.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy2(REPO / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache", "*.egg-info")
    for name in ("mailframe", "twisted"):
        shutil.copytree(REPO / name, destination / name, ignore=ignore)


def _plugin_project(destination: pathlib.Path) -> None:
    (destination / "mailframe" / "plugins").mkdir(parents=True)
    (destination / "pyproject.toml").write_text(PYPROJECT)
    (destination / "mailframe" / "plugins" / "acme_router.py").write_text(PLUGIN)


def _site_packages(venv: pathlib.Path) -> pathlib.Path:
    [site] = (venv / "lib").glob("python3*/site-packages")
    return site


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    root = tmp_path_factory.mktemp("plugin-install")
    wheels = root / "wheels"
    # The build backend, from the package index: the one step that needs it
    # besides mailframe's own dependencies.
    try:
        fetched = _pip("download", "--quiet", "--retries", "2", "--dest", str(wheels),
                       "setuptools>=68", "wheel")
    except subprocess.TimeoutExpired:
        unavailable("pip timed out downloading from the package index")
    if fetched.returncode != 0:
        last = (fetched.stderr.strip().splitlines() or ["no message"])[-1]
        unavailable(f"pip cannot download from the package index here: {last}")
    _copy_mailframe(root / "mailframe-src")
    _plugin_project(root / "acme-src")
    # Both wheels, built with the fetched backend and nothing else.
    _checked(_pip("wheel", "--quiet", "--no-deps", "--no-index", "--find-links", str(wheels),
                  "--wheel-dir", str(wheels), str(root / "mailframe-src"),
                  str(root / "acme-src")), "building the wheels")
    [mailframe_wheel] = wheels.glob("mailframe-*.whl")
    [plugin_wheel] = wheels.glob("acme_mail_router-*.whl")

    venv = root / "venv"
    _checked(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                            capture_output=True, text=True, timeout=120), "making the venv")
    python = str(venv / "bin" / "python")
    _checked(_pip("--python", python, "install", "--quiet", "--find-links", str(wheels),
                  str(mailframe_wheel)), "installing mailframe")
    plugins_dir = _site_packages(venv) / "mailframe" / "plugins"
    assert (plugins_dir / "__init__.py").exists()
    assert not (_site_packages(venv) / "mailframe.egg-link").exists()

    environment = Environment(root, venv, plugins_dir, plugin_wheel,
                              subprocess.CompletedProcess([], 0), frozenset())
    # Listing the plugins writes the plugin cache, which the plugin's
    # install then leaves stale.
    before = environment.run("mailframe", "plugins", "--json")
    cache = plugins_dir / "dropin.cache"
    cached = frozenset(pickle.loads(cache.read_bytes())) if cache.exists() else frozenset()
    _checked(_pip("--python", python, "install", "--quiet", "--no-index", "--no-deps",
                  str(plugin_wheel)), "installing the plugin")
    # And the cache claims to be newer than the plugin module.
    module = plugins_dir / "acme_router.py"
    stamp = cache.stat().st_mtime if cache.exists() else time.time()
    os.utime(module, (stamp - 60, stamp - 60))
    return attrs.evolve(environment, before=before, cached_before=cached)


def test_wheel_ships_the_plugin_module_only(environment: Environment) -> None:
    with zipfile.ZipFile(environment.wheel) as wheel:
        shipped = [name for name in wheel.namelist() if ".dist-info/" not in name]
    assert shipped == ["mailframe/plugins/acme_router.py"]


def test_mailframe_is_not_editable(environment: Environment) -> None:
    result = environment.run("python", "-c", "import mailframe; print(mailframe.__file__)")
    _checked(result, "importing mailframe")
    installed = pathlib.Path(result.stdout.strip())
    assert installed.is_relative_to(environment.venv)
    assert not installed.is_relative_to(REPO)


def test_cache_was_stale(environment: Environment) -> None:
    assert environment.before.returncode == 0, environment.before.stderr
    names = {json.loads(line)["name"] for line in environment.before.stdout.splitlines()}
    assert "local" in names
    assert "acme" not in names
    assert "mailframe_builtins" in environment.cached_before
    assert "acme_router" not in environment.cached_before


def test_plugins_lists_the_installed_plugin(environment: Environment) -> None:
    result = environment.run("mailframe", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    [acme] = [row for row in rows if row["name"] == "acme"]
    assert acme == {
        "kind": "router",
        "name": "acme",
        "description": "Routes every recipient to ACME's Maildir of its local part",
        "distribution": f"{DISTRIBUTION} {VERSION}",
        "module": "mailframe.plugins.acme_router",
    }
    [local] = [row for row in rows if row["name"] == "local"]
    assert local["distribution"].startswith("mailframe ")

    table = environment.run("mailframe", "plugins")
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if line.split()[:2] == ["router", "acme"]]
    assert f"{DISTRIBUTION} {VERSION}" in line
    assert "Routes every recipient to ACME's Maildir" in line


def _config(environment: Environment, name: str, port: int, extra: str = "") -> pathlib.Path:
    path = environment.root / name
    path.write_text(textwrap.dedent(f"""\
        hostname = "mx.example.com"
        listen = ["tcp:{port}:interface=127.0.0.1"]
        queue_dir = "{environment.root / name}.queue"
        router = "acme"

        [plugins.acme]
        directory = "{environment.root / name}.mail"
        {extra}
    """))
    return path


def test_check_config_checks_the_plugin_settings(environment: Environment) -> None:
    good = _config(environment, "check.toml", 2525)
    result = environment.run("mailframe", "check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    bad = _config(environment, "typo.toml", 2525, 'colour = "blue"')
    result = environment.run("mailframe", "check-config", str(bad))
    assert result.returncode == 1
    assert "plugins.acme.colour (line 8): unknown setting (known: directory)" in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_greeting(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no 220 greeting on port {port}")


@pytest.fixture
def server(environment: Environment) -> Iterator[tuple[int, pathlib.Path]]:
    port = _free_port()
    config = _config(environment, "server.toml", port)
    log_path = environment.root / "server.log"
    argv: Sequence[str] = [str(environment.venv / "bin" / "twistd"), "-n", "--pidfile=",
                           "--logfile=-", "mailframe", "--config", str(config)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=environment.root, stdout=log,
                                   stderr=subprocess.STDOUT, env=_clean_env())
    try:
        _wait_for_greeting(port, process, 60)
        yield port, environment.root / "server.toml.mail"
    except TimeoutError:
        raise AssertionError(f"twistd did not start:\n{log_path.read_text()}") from None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_twistd_routes_mail_through_the_plugin(
    environment: Environment, server: tuple[int, pathlib.Path]
) -> None:
    port, mail = server
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("sender@example.org", ["Someone@example.net"],
                        b"Subject: through ACME\r\n\r\nRouted by a plugin.\r\n")
    new = mail / "someone" / "new"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (new.is_dir() and any(new.iterdir())):
        time.sleep(0.05)
    log = (environment.root / "server.log").read_text()
    assert new.is_dir() and any(new.iterdir()), f"nothing delivered; log:\n{log}"
    [message] = list(new.iterdir())
    assert b"Subject: through ACME" in message.read_bytes()

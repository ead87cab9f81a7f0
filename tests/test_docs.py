"""
The documentation gate: the user guide builds with warnings as errors, and
the examples it includes are correct.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests._missing import unavailable

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLES = DOCS / "_examples"
TUTORIAL = EXAMPLES / "tutorial"
TIMEOUT = 300


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit status {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _env(*extra: pathlib.Path) -> dict[str, str]:
    """
    The environment of a child that imports the working tree and the
    examples, or the working tree and the *extra* directories.
    """
    env = dict(os.environ)
    paths = [str(REPO), *(str(path) for path in extra or (EXAMPLES,))]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@pytest.fixture(scope="module")
def built_docs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], pathlib.Path]:
    """The documentation, built once for the tests of this module."""
    try:
        import sphinx  # noqa: F401
    except ImportError as error:
        unavailable(f"sphinx is not importable ({error}): install mailframe with the [dev] extra")
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", str(out)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return result, out


def test_sphinx_build_has_no_warnings(
    built_docs: tuple[subprocess.CompletedProcess[str], pathlib.Path],
) -> None:
    result, _ = built_docs
    if result.returncode != 0:
        print(_output(result))
    assert result.returncode == 0, _output(result)


def _between(page: str, start: str, end: str | None) -> str:
    """The part of *page* from the element of id *start* to that of id *end*."""
    begin = page.index(f'id="{start}"')
    if end is None:
        return page[begin:]
    return page[begin : page.index(f'id="{end}"', begin)]


def _literal(name: str) -> str:
    """How the HTML shows ``name``."""
    return f'<span class="pre">{html.escape(name)}</span>'


def _text(part: str) -> str:
    """The text of a part of a page, its spaces made single."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", part)).split())


def test_config_reference_is_complete(
    built_docs: tuple[subprocess.CompletedProcess[str], pathlib.Path],
) -> None:
    """
    The configuration reference lists every key of the config file and of a
    [[listener]] table, and every plugin found, with each of its settings.
    """
    from mailframe import config
    from mailframe.registry import discover

    result, out = built_docs
    reference = out / "config-reference.html"
    assert reference.exists(), _output(result)
    page = reference.read_text(encoding="utf-8")
    keys = _between(page, "config-keys", "config-listener-keys")
    for key in config._KEYS:
        assert _literal(key) in keys, f"config key {key} is not in the reference"
    listener_keys = _between(page, "config-listener-keys", "config-plugins")
    for key in config._LISTENER_KEYS:
        assert _literal(key) in listener_keys, f"listener key {key} is not in the reference"
    registry = discover()
    assert registry.makers, "no plugin found"
    anchors = re.findall(r'id="(plugin-[^"]+)"', page)
    for (kind, name), maker in sorted(registry.makers.items()):
        anchor = f"plugin-{kind}-{name}"
        assert anchor in anchors, f"the {kind} plugin {name} is not in the reference"
        following = anchors[anchors.index(anchor) + 1 :]
        part = _between(page, anchor, following[0] if following else None)
        assert _literal(name) in part
        assert " ".join(maker.description.split()) in _text(part)
        for key in maker.schema:
            assert _literal(key) in part, f"setting {key} of {name} is not in the reference"


def _example_config_text(directory: pathlib.Path) -> str:
    """
    The example config, with its files under ``/etc/mailframe/`` made in
    *directory*: the certificates (named as certbot names them) and the
    password file.
    """
    from tests.certs import make_certificates

    certs = make_certificates(directory / "made")
    tls = directory / "tls"
    tls.mkdir()
    chain = certs.cert.read_bytes()
    (tls / "fullchain.pem").write_bytes(chain)
    (tls / "cert.pem").write_bytes(chain.split(b"-----END CERTIFICATE-----")[0]
                                   + b"-----END CERTIFICATE-----\n")
    (tls / "chain.pem").write_bytes(certs.ca.read_bytes())
    (tls / "privkey.pem").write_bytes(certs.key.read_bytes())
    (directory / "passwd").write_text("alice:s3cret\n", encoding="utf-8")
    text = (EXAMPLES / "mailframe.toml").read_text(encoding="utf-8")
    assert "/etc/mailframe/" in text
    return text.replace("/etc/mailframe/", f"{directory}/")


def test_example_config_is_valid(tmp_path: pathlib.Path) -> None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    from mailframe.config import ListenerConfig, parse_config
    from mailframe.protocols._tls import ServerTLS

    config = parse_config(_example_config_text(tmp_path))
    assert config.hostname == "mx.example.com"
    assert [domain for domain, _ in config.local_domains] == ["example.com", "example.net"]
    assert config.auth_checker == f"file:{tmp_path}/passwd"
    # The three recipes of the configuration guide: ports 25, 587 and 465.
    mx, submission, submissions = config.effective_listeners()
    assert mx == ListenerConfig("tcp:25")
    assert submission.endpoint == "tcp:587"
    assert (submission.auth, submission.require_tls, submission.relay_networks) == (
        "required", True, ())
    assert submissions.endpoint.startswith("ssl:465:")
    assert (submissions.auth, submissions.relay_networks) == ("offered", ())
    # The certificate loads, and so does every endpoint, the ssl: one with
    # its own certificate.
    assert config.tls_cert is not None and config.tls_key is not None
    ServerTLS(config.tls_cert, config.tls_key)
    for listener in config.effective_listeners():
        serverFromString(MemoryReactor(), listener.endpoint)


def test_submission_example_shows_tls_and_auth() -> None:
    """examples/submission.py, which the configuration guide includes."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "submission.py")],
        cwd=str(REPO),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, _output(result)
    output = result.stdout
    assert "STARTTLS: 220 2.0.0 Ready to start TLS" in output, output
    assert "MAIL before AUTH: 530 5.7.0 Authentication required" in output, output
    assert "AUTH: 235 2.7.0 Authentication successful" in output, output
    assert "Relay access denied" in output, output
    [received] = [line for line in output.splitlines() if "Received:" in line]
    assert "(using TLS" in received, output
    assert "(Authenticated sender: alice)" in received, output
    assert " with ESMTPSA id " in received, output


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
            str(EXAMPLES / "test_helpdesk.py"),
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


def _tutorial_project(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the tutorial's project, as a reader who followed it has it."""
    project = tmp_path / "acme"
    shutil.copytree(
        TUTORIAL, project,
        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache", "*.egg-info", "build"),
    )
    return project


def test_tutorial_plugin_passes_its_tests(tmp_path: pathlib.Path) -> None:
    """The tutorial's tests pass, run from its project directory as it says."""
    project = _tutorial_project(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(project),
            "test_acme_router.py",
        ],
        cwd=str(project),
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, _output(result)
    assert " passed" in result.stdout, _output(result)


_COMPOSE = textwrap.dedent(
    """
    import random

    from twisted.internet.testing import MemoryReactorClock

    from mailframe.address import Mailbox
    from mailframe.compose import build_mail_service
    from mailframe.config import ComponentContext, load_config
    from mailframe.registry import Components, discover
    from mailframe.testing import envelope

    config = load_config("mailframe.toml")
    registry = discover()
    assert not registry.problems, registry.problems
    context = ComponentContext(reactor=MemoryReactorClock(), random=random.Random(0))
    router = Components(config, registry, context).get("router", config.router)
    for address in ["bob@customer.example", "alice@acme.example", "carol@example.org"]:
        recipient = Mailbox.parse(address)
        routes = []
        router.route(envelope("me@example.org", address), recipient).addCallback(routes.extend)
        [(_, _, route)] = routes
        print(address, route.transport, dict(route.args))
    # What twistd mailframe builds, on the reactor that it would run.
    from twisted.internet import reactor

    build_mail_service(config, reactor)
    print("composed")
    """
)


def test_tutorial_plugin_installs_and_runs(tmp_path: pathlib.Path) -> None:
    """
    The tutorial's project installs only its plugin module, which mailframe
    then finds: its config file passes check-config, and the service that
    ``twistd mailframe`` would run is built with its router.
    """
    try:
        import setuptools  # noqa: F401
    except ImportError as error:
        unavailable(f"setuptools is not importable ({error})")
    project = _tutorial_project(tmp_path)
    # build_py makes the tree of pure-Python files that "pip install ." puts
    # into site-packages, without needing a wheel builder or the network.
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
         "build_py", "--build-lib", str(site)],
        cwd=str(project),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert built.returncode == 0, _output(built)
    installed = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert installed == ["mailframe/plugins/acme_router.py"], installed

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(project / "mailframe.toml", run)
    env = _env(site)
    check = subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "check-config", "mailframe.toml"],
        cwd=str(run), env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert check.returncode == 0, _output(check)
    assert check.stdout.startswith("mailframe.toml: ok"), _output(check)
    assert "warning" not in check.stderr, _output(check)

    listed = subprocess.run(
        [sys.executable, "-m", "mailframe.cli", "plugins"],
        cwd=str(run), env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert listed.returncode == 0, _output(listed)
    assert re.search(r"^router +acme +.+ ACME's customer domains", listed.stdout, re.M), (
        _output(listed))

    composed = subprocess.run(
        [sys.executable, "-c", _COMPOSE],
        cwd=str(run), env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert composed.returncode == 0, _output(composed)
    assert composed.stdout.splitlines() == [
        "bob@customer.example smtp {'nexthop': '127.0.0.1:2526'}",
        f"alice@acme.example maildir {{'directory': '{os.path.join('Maildir', 'alice')}'}}",
        "carol@example.org smtp {'domain': 'example.org'}",
        "composed",
    ], _output(composed)

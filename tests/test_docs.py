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

"""
Port 25 as an unprivileged user: twistd binds the listeners while it is
still root, then drops to ``--uid``/``--gid``, and mailframe accepts mail
once its queue has recovered.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile

import pytest

from tests.interop.conftest import REPO, TWISTD, wait_for_greeting, wait_until


def _free_low_port() -> int:
    for port in range(2500 % 1024 + 1, 1024):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024 on 127.0.0.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a port below 1024 needs root")
def test_binds_as_root_and_serves_as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    # Under /tmp, so that nobody can reach it (pytest's own directories are
    # private to root).
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-uid-"))
    root = tmp_path / "run"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    port = _free_low_port()
    argv = [
        str(TWISTD), "-n", "--pidfile=", "--logfile=-",
        f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}",
        "mailframe", "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--hostname", "mx.example.com", "--queue-dir", str(root / "queue"),
        "--local-domain", f"example.com={root / 'mail'}",
    ]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        try:
            wait_for_greeting(port)
        except TimeoutError:
            raise AssertionError(log_path.read_text(errors="replace")) from None
        with open(f"/proc/{process.pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(nobody.pw_uid)}, uids
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("sender@example.org", ["alice@example.com"],
                            b"Subject: low port\r\n\r\nhello\r\n")
        new = root / "mail" / "alice" / "new"
        wait_until(lambda: new.is_dir() and len(os.listdir(new)) == 1, 20,
                   "alice's message was delivered")
        [name] = os.listdir(new)
        assert (new / name).stat().st_uid == nobody.pw_uid
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(tmp_path, ignore_errors=True)

"""
Postfix relays to ``twistd -n mailframe`` over STARTTLS: a private Postfix
instance (its own config directory, queue and log; no chroot; loopback
only) takes a message with smtpd from smtplib and hands it to its smtp(8)
client, whose relayhost is mailframe's port-25-style listener and whose
``smtp_tls_security_level`` is ``encrypt``. mailframe offers STARTTLS
there because ``--tls-cert`` is set, and delivers to the Maildir.

Nothing of the system's Postfix (``/etc/postfix``, its queue) is read or
changed. Postfix's master runs its daemons as the ``postfix`` user, so this
needs root.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator

import attrs
import pytest

from tests._missing import unavailable
from tests.certs import make_certificates
from tests.interop.conftest import Server, free_port, require, start_server, wait_for_greeting
from tests.interop.tls_support import received_field

pytestmark = pytest.mark.interop

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = {command_directory}
daemon_directory = {daemon_directory}
meta_directory = {meta_directory}
shlib_directory = {shlib_directory}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mailframe-test
maillog_file = {maillog}
maillog_file_prefixes = {home}
myhostname = relay.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {cafile}
smtp_tls_loglevel = 1
smtp_connect_timeout = 10s
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
biff = no
notify_classes =
"""

# Column 5 (chroot) is n everywhere: no copies of /etc files are needed.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - 10 smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@attrs.define
class Postfix:
    """A private Postfix instance."""

    postfix: str
    config: pathlib.Path
    port: int
    maillog: pathlib.Path

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else "(no maillog)"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.postfix, "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=60)


def _postconf_default(postconf: str, name: str) -> str:
    return subprocess.run([postconf, "-d", "-h", name], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


def _master_pid(queue: pathlib.Path) -> int | None:
    try:
        return int((queue / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, which nobody may reap here, does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def postfix_relay(tmp_path: pathlib.Path) -> Iterator[tuple[Postfix, Server]]:
    postfix = require("postfix")
    postconf = require("postconf")
    if os.geteuid() != 0:
        unavailable("a private Postfix instance needs root: master runs its daemons as postfix")
    try:
        owner = pwd.getpwnam("postfix")
    except KeyError:
        unavailable("there is no postfix user (Debian: apt-get install -y postfix)")

    certs = make_certificates(tmp_path / "certs")
    mailframe = start_server(tmp_path, ["--tls-cert", str(certs.cert),
                                        "--tls-key", str(certs.key)])
    # Outside the test's 0700 directory: the postfix user must reach it all.
    home = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-postfix-"))
    config, queue, data = home / "etc", home / "queue", home / "data"
    instance = Postfix(postfix, config, free_port(), home / "maillog")
    try:
        home.chmod(0o755)
        for directory in (config, queue, data):
            directory.mkdir()
        os.chown(data, owner.pw_uid, owner.pw_gid)
        cafile = home / "ca.pem"
        shutil.copyfile(certs.ca, cafile)
        cafile.chmod(0o644)
        values = {name: _postconf_default(postconf, name) for name in (
            "command_directory", "daemon_directory", "meta_directory", "shlib_directory")}
        (config / "main.cf").write_text(MAIN_CF.format(
            queue=queue, data=data, maillog=instance.maillog, home=home,
            relay_port=mailframe.port, cafile=cafile, **values))
        (config / "master.cf").write_text(MASTER_CF.format(port=instance.port))
        for step in ("check", "start"):
            result = instance.run(step)
            if result.returncode != 0:
                # Postfix writes its errors to stderr only on a terminal; see
                # the maillog, or run the step under script(1).
                raise AssertionError(f"postfix -c {config} {step} failed ({result.returncode}):"
                                     f"\n{result.stdout}{result.stderr}\n{instance.log()}")
        try:
            wait_for_greeting(instance.port)
        except TimeoutError:
            raise AssertionError(f"Postfix's smtpd did not greet; maillog:\n"
                                 f"{instance.log()}") from None
        yield instance, mailframe
    finally:
        pid = _master_pid(queue)
        stopped = instance.run("stop") if pid is not None else None
        deadline = time.monotonic() + 30
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = pid is not None and _alive(pid)
        if killed:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        mailframe.stop()
        shutil.rmtree(home, ignore_errors=True)
        assert stopped is None or stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not killed, f"postfix -c {config} stop left master {pid} running"


MESSAGE = (b"From: sender@relay.example.test\r\nTo: alice@example.com\r\n"
           b"Subject: through Postfix, over TLS\r\n\r\nrelayed with STARTTLS\r\n")


def test_postfix_relays_over_starttls(postfix_relay: tuple[Postfix, Server]) -> None:
    postfix, mailframe = postfix_relay
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.sendmail("sender@relay.example.test", ["alice@example.com"],
                               MESSAGE) == {}
    try:
        [delivered] = mailframe.wait_delivered("alice", 1, timeout=60)
    except TimeoutError as error:
        raise AssertionError(f"{error}\nPostfix maillog:\n{postfix.log()}") from None
    received = received_field(delivered)
    log = postfix.log()
    assert received.startswith("Received: from relay.example.test (unknown [127.0.0.1])"), \
        (received, log)
    assert "(using TLSv1." in received and " with cipher " in received, (received, log)
    assert " by mx.example.com (mailframe) with ESMTPS id " in received, (received, log)
    assert "Authenticated sender" not in received
    # Postfix's own record: TLS to the relayhost, with a chain that the test
    # CA verifies, and the message sent, with mailframe's queue id.
    assert "Trusted TLS connection established to 127.0.0.1[127.0.0.1]" in log, log
    queue_id = received.split(" with ESMTPS id ")[1].split(";")[0].split()[0]
    sent = [line for line in log.splitlines() if "status=sent" in line]
    assert len(sent) == 1, log
    assert f"relay=127.0.0.1[127.0.0.1]:{mailframe.port}," in sent[0], log
    assert f"(250 2.0.0 Ok: queued as {queue_id})" in sent[0], log
    # Postfix adds Message-ID: and Date:, and changes nothing else.
    assert b"\nSubject: through Postfix, over TLS\n" in delivered
    assert delivered.endswith(b"\n\nrelayed with STARTTLS\n")

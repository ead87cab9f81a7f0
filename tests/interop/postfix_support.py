"""
A private Postfix instance on loopback for the interop tests: its own
config directory, queue, data directory and maillog under a new directory
in the system's temporary directory; no chroot; ``inet_interfaces =
127.0.0.1``.

Nothing of the system's Postfix (``/etc/postfix``, its queue) is read or
changed. Postfix's master runs its daemons as the ``postfix`` user, so this
needs root; without it (or without Postfix) the test is skipped, or fails
under ``CI``.

Usage::

    with private_postfix() as postfix:
        ...  # put files under postfix.home
        postfix.start({"virtual_mailbox_domains": "postfix.test", ...})
        ...

The instance is stopped (within a bounded time) and its directory removed
when the ``with`` block ends.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import attrs

from tests._missing import unavailable
from tests.interop.conftest import free_port, require, wait_for_greeting

#: main.cf settings every instance has; those given to start() go over them.
BASE_SETTINGS: dict[str, str] = {
    "compatibility_level": "3.6",
    "queue_directory": "{queue}",
    "data_directory": "{data}",
    "mail_owner": "postfix",
    "setgid_group": "postdrop",
    "syslog_name": "postfix-mailframe-test",
    "maillog_file": "{maillog}",
    "maillog_file_prefixes": "{home}",
    "myhostname": "postfix.example.test",
    "mydomain": "example.test",
    "myorigin": "$myhostname",
    "mydestination": "",
    "relay_domains": "",
    "local_recipient_maps": "",
    "alias_maps": "",
    "alias_database": "",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "smtpd_peername_lookup": "no",
    "smtpd_banner": "$myhostname ESMTP",
    "smtpd_relay_restrictions": "permit_mynetworks, reject",
    "smtpd_recipient_restrictions": "permit_mynetworks, reject",
    "smtpd_tls_security_level": "none",
    "smtp_tls_security_level": "none",
    "smtp_connect_timeout": "10s",
    "queue_run_delay": "2s",
    "minimal_backoff_time": "2s",
    "maximal_backoff_time": "4s",
    "biff": "no",
    "notify_classes": "",
}

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
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

#: The directories of the Postfix installation, from ``postconf -d``.
_INSTALLATION = ("command_directory", "daemon_directory", "meta_directory", "shlib_directory")


def _postconf_default(postconf: str, name: str) -> str:
    return subprocess.run([postconf, "-d", "-h", name], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, which nobody may reap here, does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@attrs.define
class PrivatePostfix:
    """A private Postfix instance: made by :func:`private_postfix`."""

    postfix: str
    postconf: str
    home: pathlib.Path
    port: int

    @property
    def config(self) -> pathlib.Path:
        return self.home / "etc"

    @property
    def queue(self) -> pathlib.Path:
        return self.home / "queue"

    @property
    def maillog(self) -> pathlib.Path:
        return self.home / "maillog"

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else "(no maillog)"

    def log_lines(self, pattern: str) -> list[str]:
        """The maillog's lines that *pattern* (a regular expression) matches."""
        compiled = re.compile(pattern)
        return [line for line in self.log().splitlines() if compiled.search(line)]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.postfix, "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self, settings: Mapping[str, str] | None = None) -> None:
        """
        Write main.cf (:data:`BASE_SETTINGS`, their ``{queue}``, ``{data}``,
        ``{maillog}`` and ``{home}`` filled in, with *settings* as they are
        over them) and master.cf, start the instance, and wait for smtpd's
        greeting.
        """
        values = {name: _postconf_default(self.postconf, name) for name in _INSTALLATION}
        places = {"queue": self.queue, "data": self.home / "data",
                  "maillog": self.maillog, "home": self.home}
        values |= {name: value.format(**places) for name, value in BASE_SETTINGS.items()}
        values |= settings or {}
        lines = [f"{name} = {value}" for name, value in values.items()]
        (self.config / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port))
        for step in ("check", "start"):
            result = self.run(step)
            if result.returncode != 0:
                # Postfix writes its errors to stderr only on a terminal; the
                # maillog has them.
                raise AssertionError(f"postfix -c {self.config} {step} failed"
                                     f" ({result.returncode}):\n{result.stdout}{result.stderr}"
                                     f"\nmaillog:\n{self.log()}")
        try:
            wait_for_greeting(self.port)
        except TimeoutError:
            raise AssertionError(f"Postfix's smtpd did not greet on port {self.port};"
                                 f" maillog:\n{self.log()}") from None

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 30.0) -> None:
        """``postfix stop``, and wait (at most *timeout* s) for master to go; kill it then."""
        pid = self.master_pid()
        if pid is None or not _alive(pid):
            return
        stopped = self.run("stop")
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"postfix -c {self.config} stop left master {pid} running:"
                                 f" {stopped.stdout}{stopped.stderr}")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@contextmanager
def private_postfix() -> Iterator[PrivatePostfix]:
    """
    A private Postfix instance, not started yet, on a free loopback port;
    stopped and removed at the end.
    """
    postfix = require("postfix")
    postconf = require("postconf")
    if os.geteuid() != 0:
        unavailable("a private Postfix instance needs root: master runs its daemons as postfix")
    try:
        owner = pwd.getpwnam("postfix")
    except KeyError:
        unavailable("there is no postfix user (Debian: apt-get install -y postfix)")
    # Outside pytest's 0700 directories: the postfix user must reach it all.
    home = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-postfix-"))
    instance = PrivatePostfix(postfix, postconf, home, free_port())
    try:
        home.chmod(0o755)
        for directory in (instance.config, instance.queue, home / "data"):
            directory.mkdir()
        os.chown(home / "data", owner.pw_uid, owner.pw_gid)
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)

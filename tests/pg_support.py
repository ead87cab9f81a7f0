"""
A real PostgreSQL server for the tests: one per test process, on a loopback
port, in a temporary directory, run as the ``postgres`` user with Debian's
``postgresql`` package (``initdb`` and ``pg_ctl``). Each test gets a
database of its own, made from a template, so that tests stay independent
and fast.

Missing binaries, or no ``postgres`` user, skip the test with the reason,
unless ``CI`` is set: then they fail it (:func:`tests._missing.unavailable`).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading

import attrs

from tests._missing import unavailable

#: Where Debian's ``postgresql`` package puts the server's programs.
BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The database role the tests connect as (a superuser of the test cluster).
ROLE = "mailframe"
#: The database made once with the schema applied: new ones are copies.
TEMPLATE = "mailframe_template"

_lock = threading.Lock()
_numbers = itertools.count(1)


def _bin_dir() -> pathlib.Path:
    override = os.environ.get("MAILFRAME_PG_BIN")
    candidates = [override] if override else sorted(glob.glob(BIN_GLOB), reverse=True)
    for candidate in candidates:
        if candidate and (pathlib.Path(candidate) / "pg_ctl").exists():
            return pathlib.Path(candidate)
    unavailable("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class PostgresServer:
    """A running test cluster."""

    bin: pathlib.Path
    root: pathlib.Path
    data: pathlib.Path
    port: int

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={database}"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", "postgres", "--", *argv]
        if os.geteuid() != 0:
            command = list(argv)
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
                   " -c max_connections=300")
        done = self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                                 "-l", str(self.root / "server.log"), "-w", "start",
                                 check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}"
                               f"{self.log()[-2000:]}")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "stop", check=False)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, migrated: bool = True) -> str:
        """
        A new, empty database: with mailframe's schema when *migrated*,
        else without any table. Returns its DSN.
        """
        name = f"test_{os.getpid()}_{next(_numbers)}"
        template = TEMPLATE if migrated else "template0"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.dsn(name)


_server: PostgresServer | None = None


def postgres() -> PostgresServer:
    """The test process's PostgreSQL server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            _server = _start()
        return _server


def _start() -> PostgresServer:
    bin_dir = _bin_dir()
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("there is no postgres user to run PostgreSQL as (apt-get install postgresql)")
    if shutil.which("runuser") is None and os.geteuid() == 0:
        unavailable("runuser is missing: cannot run PostgreSQL as the postgres user")
    root = pathlib.Path(tempfile.mkdtemp(prefix="mailframe-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    server = PostgresServer(bin_dir, root, data, _free_port())
    init = server._as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                               "-U", ROLE, "--no-sync", check=False)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
    server.start()
    atexit.register(_stop, server)
    server.execute(f"CREATE DATABASE {TEMPLATE}")
    import psycopg

    from mailframe.stores._pgschema import upgrade_blocking

    with psycopg.connect(server.dsn(TEMPLATE), autocommit=True) as conn:
        upgrade_blocking(conn)
    return server


def _stop(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)

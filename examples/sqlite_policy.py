"""
A policy plugin that looks recipients up in an SQL table.

``sqlite_users_maker`` is a component maker at module level, as a plugin
module in a distribution's ``mailframe/plugins/`` directory would hold it.
Its policy asks a SQLite table of users, through
``twisted.enterprise.adbapi``, which runs each query in a thread of its
own pool so that the reactor never waits on the database. A recipient of a
local domain that is not in the table gets ``550 5.1.1`` at RCPT; the
table is asked at every RCPT, so a user added to it is accepted at once. A
config file selects it in place of ``local-users``::

    policies = ["sqlite-users"]

    [plugins.sqlite-users]
    database = "/var/lib/mailframe/users.sqlite"

The program makes a database with two users, alice and bob, in a
temporary directory, and starts mailframe on a free loopback port with a
temporary queue and Maildir. smtplib then gives RCPT for alice, bob and
carol; the program adds carol to the table and asks again, sends the
message, shows what happened, and stops.

Run it with:  python examples/sqlite_policy.py
"""

from __future__ import annotations

import os
import smtplib
import sqlite3
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import deferLater

from mailframe.components import ComponentMaker, Setting
from mailframe.compose import build_mail_service
from mailframe.config import settings_from
from mailframe.policies._base import PolicyBase
from mailframe.registry import Registry, discover
from mailframe.reply import Reply
from mailframe.verdict import Action, Verdict


class SQLiteUsers(PolicyBase):
    """
    Refuses recipients of *domains* that the ``users`` table of *pool* does
    not list, with ``550 5.1.1``; ``postmaster`` is always accepted
    (RFC 5321 §4.5.1).

    :param pool: an :class:`~twisted.enterprise.adbapi.ConnectionPool`
        with a table ``users (address TEXT PRIMARY KEY)`` of lower-case
        addresses.
    :param domains: the local domains, in lower case.
    """

    def __init__(self, pool: adbapi.ConnectionPool, domains: frozenset[str]) -> None:
        self.pool = pool
        self.domains = domains

    async def _rcpt(self, recipient: Any) -> Verdict:
        address = f"{recipient.local_part}@{recipient.domain}".lower()
        rows = await self.pool.runQuery("SELECT 1 FROM users WHERE address = ?", (address,))
        if rows:
            return Verdict()
        return Verdict(Action.REJECT, Reply(550, "5.1.1", f"<{recipient}>: User unknown"),
                       reason="not in the users table")

    def rcpt(self, client: Any, sender: Any, recipient: Any, parameters: Any) -> Any:
        if recipient.domain.lower() not in self.domains or recipient.is_postmaster:
            return Verdict()
        return Deferred.fromCoroutine(self._rcpt(recipient))

    def stop(self) -> Deferred[None]:
        """Close the pool's connections and stop its threads; the service calls it last."""
        self.pool.close()
        return succeed(None)


def build_sqlite_users(settings: Mapping[str, Any], context: Any) -> SQLiteUsers:
    # check_same_thread: the pool's threads share its connections, one at a time.
    pool = adbapi.ConnectionPool("sqlite3", settings["database"], check_same_thread=False,
                                 cp_reactor=context.reactor)
    domains = frozenset(domain for domain, _ in context.config.local_domains)
    return SQLiteUsers(pool, domains)


#: The ``sqlite-users`` policy plugin.
sqlite_users_maker = ComponentMaker(
    kind="policy",
    name="sqlite-users",
    description="Refuses recipients of the local domains not in a SQLite users table",
    factory=build_sqlite_users,
    schema={"database": Setting("path", None, "The SQLite database file.", required=True)},
)


def with_maker(registry: Registry, maker: ComponentMaker) -> Registry:
    """*registry* with *maker* added, as if a plugin module held it."""
    key = (maker.kind, maker.name)
    return Registry({**registry.makers, key: maker}, {**registry.modules, key: __name__},
                    registry.problems)


def add_users(path: str, *addresses: str) -> None:
    """Add users to the table, as another program would."""
    database = sqlite3.connect(path)
    with database:
        database.execute("CREATE TABLE IF NOT EXISTS users (address TEXT PRIMARY KEY)")
        database.executemany("INSERT INTO users VALUES (?)", [(a,) for a in addresses])
    database.close()


def ask(port: int, database: str) -> list[str]:
    """Give RCPT for three users, add one, and send; runs in a thread, as smtplib blocks."""
    report = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.com")
        client.mail("sender@example.com")
        for user in ("alice", "bob", "carol"):
            code, text = client.rcpt(f"{user}@example.org")
            report.append(f"RCPT TO:<{user}@example.org>: {code} {text.decode()}")
        add_users(database, "carol@example.org")
        report.append("added carol@example.org to the table")
        code, text = client.rcpt("carol@example.org")
        report.append(f"RCPT TO:<carol@example.org>: {code} {text.decode()}")
        code, text = client.data(b"Subject: hello\r\n\r\nHi all!\r\n")
        report.append(f"DATA: {code} {text.decode()}")
    return report


async def main(work: str) -> None:
    database = os.path.join(work, "users.sqlite")
    add_users(database, "alice@example.org", "bob@example.org")
    maildirs = os.path.join(work, "mail")
    config = settings_from({
        "listen": ["tcp:0:interface=127.0.0.1"],
        "hostname": "mx.example.org",
        "queue_dir": os.path.join(work, "queue"),
        "local_domains": {"example.org": maildirs},
        "policies": ["sqlite-users"],
        "plugins": {"sqlite-users": {"database": database}},
    })
    service = build_mail_service(config, reactor,
                                 registry=with_maker(discover(), sqlite_users_maker))
    service.startService()
    try:
        await service.ready
        port = service.addresses()[0].port
        for line in await threads.deferToThread(ask, port, database):
            print(line)
        for user in ("alice", "bob", "carol"):
            new = os.path.join(maildirs, user, "new")
            for _ in range(200):  # the queue runner delivers in the background
                if os.path.isdir(new) and os.listdir(new):
                    break
                await deferLater(reactor, 0.05)
            print(f"delivered to {user}: {len(os.listdir(new))} message(s)")
    finally:
        await service.stopService()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        failures: list[Any] = []
        d = ensureDeferred(main(work))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
        if failures:
            failures[0].printTraceback(file=sys.stderr)
            sys.exit(1)

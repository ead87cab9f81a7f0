"""
The PostgreSQL store against a real PostgreSQL server (tests/pg_support.py):
the contract, and what only this store does: chunks, orphans, leases shared
between nodes, notifications, the schema.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from mailframe.stores.postgres import PostgresQueueStore
from mailframe.testing._store_contract import QueueStoreContract
from tests.pg_support import postgres

_Test = Generator[Deferred[Any], Any, None]


def make_store(testcase: TestCase, dsn: str, **options: Any) -> PostgresQueueStore:
    """A store on *dsn*, stopped when the test ends."""
    store = PostgresQueueStore(dsn, reactor, connect_timeout=3.0, **options)
    testcase.addCleanup(store.stop)
    return store


class PostgresContractTests(QueueStoreContract, TestCase):
    def make_store(self) -> Deferred[PostgresQueueStore]:
        store = make_store(self, postgres().new_database(), pool_size=3)
        return store.recover().addCallback(lambda _: store)

"""
The schema of the PostgreSQL queue store, as versioned migrations.

Each migration is a list of SQL statements; migration *n* (counting from 1)
takes the schema from version *n - 1* to *n*. ``mailframe db upgrade``
applies those that a database lacks, each in its own transaction under an
advisory lock, so that two upgrades started at once apply each migration
once. A store refuses to work on a database whose version is not
:data:`SCHEMA_VERSION`.

Tables:

``mailframe_schema``
    one row: the version of the schema.
``mailframe_entries``
    one row per queue entry, visible once its message is sealed: its state,
    due time and lease as columns, and the entry (envelope and delivery
    state) as the JSON of :func:`~mailframe.stores._serialize.entry_to_json`.
``mailframe_chunks``
    the message of each entry, and of each message being received, in
    numbered chunks.
``mailframe_uploads``
    one row per message being received, touched with each chunk; the
    sealing commit deletes it, and the orphan sweep deletes those left
    untouched for too long, with their chunks.

This module imports no database driver: its functions take a connection
that the caller made.
"""

from __future__ import annotations

from typing import Any

from mailframe.stores._errors import StoreUnavailable

__all__ = [
    "ADVISORY_LOCK",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaMismatch",
    "current_version",
    "mismatch_message",
    "upgrade_blocking",
]

#: The key of the advisory lock that serialises schema upgrades.
ADVISORY_LOCK = 0x6D66_7130  # "mfq0"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the queue.
    (
        "CREATE TABLE mailframe_schema (version integer NOT NULL)",
        "INSERT INTO mailframe_schema (version) VALUES (0)",
        """
        CREATE TABLE mailframe_entries (
            queue_id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            state text NOT NULL CHECK (state IN
                ('incoming', 'active', 'deferred', 'hold', 'corrupt')),
            next_attempt double precision NOT NULL,
            lease_owner text,
            lease_token text,
            lease_until double precision,
            reason text NOT NULL DEFAULT '',
            size bigint NOT NULL,
            received_at double precision NOT NULL,
            chunks integer NOT NULL,
            entry bytea NOT NULL
        )
        """,
        "CREATE INDEX mailframe_entries_incoming ON mailframe_entries (seq)"
        " WHERE state = 'incoming'",
        "CREATE INDEX mailframe_entries_deferred ON mailframe_entries (next_attempt)"
        " WHERE state = 'deferred'",
        "CREATE INDEX mailframe_entries_active ON mailframe_entries (lease_until)"
        " WHERE state = 'active'",
        """
        CREATE TABLE mailframe_chunks (
            queue_id text NOT NULL,
            seq integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (queue_id, seq)
        )
        """,
        """
        CREATE TABLE mailframe_uploads (
            queue_id text PRIMARY KEY,
            node text NOT NULL,
            touched timestamptz NOT NULL DEFAULT now()
        )
        """,
        "CREATE INDEX mailframe_uploads_touched ON mailframe_uploads (touched)",
    ),
)

#: The version of the schema that this mailframe works with.
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaMismatch(StoreUnavailable):
    """The database's schema is not the version this mailframe needs."""


def current_version(conn: Any) -> int:
    """The schema version of the database; 0 when it has no mailframe tables."""
    found = conn.execute("SELECT to_regclass('mailframe_schema') IS NOT NULL").fetchone()
    if not found[0]:
        return 0
    row = conn.execute("SELECT version FROM mailframe_schema").fetchone()
    return 0 if row is None else int(row[0])


def mismatch_message(version: int) -> str | None:
    """Why a database of schema *version* cannot be used, or ``None`` if it can."""
    if version == SCHEMA_VERSION:
        return None
    if version > SCHEMA_VERSION:
        return (f"the database's mailframe schema is version {version}, newer than"
                f" version {SCHEMA_VERSION} that this mailframe knows: upgrade mailframe")
    if version == 0:
        return (f"the database has no mailframe schema (it needs version {SCHEMA_VERSION}):"
                " run 'mailframe db upgrade --config FILE'")
    return (f"the database's mailframe schema is version {version}; this mailframe needs"
            f" version {SCHEMA_VERSION}: run 'mailframe db upgrade --config FILE'")


def upgrade_blocking(conn: Any) -> tuple[int, int]:
    """
    Apply the migrations that the database lacks, on *conn* (a psycopg
    connection in autocommit mode), each in a transaction of its own under
    an advisory lock.

    :return: the versions before and after.
    :raises SchemaMismatch: when the database is newer than this mailframe.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        before = current_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaMismatch(mismatch_message(before))
    version = before
    while version < SCHEMA_VERSION:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            # Another upgrade may have applied it meanwhile.
            version = current_version(conn)
            if version >= SCHEMA_VERSION:
                break
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            conn.execute("UPDATE mailframe_schema SET version = %s", (version,))
    return before, version

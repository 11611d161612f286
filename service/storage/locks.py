"""Database-wide locks that serialise writers across processes."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

# Why a fixed key: every ingest process on a PostgreSQL database agrees on it ("fbingest" in ASCII).
INGEST_LOCK_KEY = int.from_bytes(b"fbingest", "big")


def lock_ingest_writers(session: Session) -> None:
    """Serialise the write transactions of every ingest process on this database until the commit; call it
    first in the transaction.

    Why one lock for all: a photo's check-then-insert (and an identity's find-then-create) must not
    interleave with another process's; the transactions are short (one batch), so serialising them costs
    little, and with a single lock no two processes can deadlock.
    """
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        # Why: pysqlite opens its transaction lazily at the first INSERT, so two processes could both pass
        # the check. BEGIN IMMEDIATE takes SQLite's single write lock first; readers are not blocked (WAL).
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INGEST_LOCK_KEY})

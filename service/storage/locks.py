"""Database-wide locks that serialise writers across processes; the election of a shared store's writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, text
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


# The role of the one process that writes the change log into a shared vector store ("fbvecwrt").
VECTOR_WRITER_LOCK_KEY = int.from_bytes(b"fbvecwrt", "big")


class WriterLock(Protocol):
    """Elects the one writer of a shared vector store among the processes on one database."""

    def try_acquire(self) -> bool:
        """Take the role if free; True when this process holds it (now or already)."""

    def held(self) -> bool:
        """Whether this process still holds it (False once its connection or file is lost)."""

    def release(self) -> None: ...


class PostgresWriterLock:
    """A session-level advisory lock on a connection of its own: held while this process and that
    connection live, released by PostgreSQL when either dies, so a replica takes over."""

    def __init__(self, engine: Engine) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: Any = None

    def try_acquire(self) -> bool:
        import psycopg

        if self.held():
            return True
        try:
            self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(%s)", (VECTOR_WRITER_LOCK_KEY,)
            ).fetchone()
        except psycopg.Error:
            self.release()
            return False
        if not (row and row[0]):
            self.release()
            return False
        return True

    def held(self) -> bool:
        import psycopg

        if self._connection is None:
            return False
        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error:
            self.release()  # the server dropped the session, and with it the lock
            return False
        return True

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()  # ends the session: PostgreSQL releases its advisory locks
            finally:
                self._connection = None


class FileWriterLock:
    """SQLite: an exclusive `flock` on a file beside the database (every process on that file shares one
    host), released by the kernel when the process dies."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: Any = None

    def try_acquire(self) -> bool:
        import fcntl

        if self._file is not None:
            return True
        handle = self._path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the only descriptor drops the flock
            self._file = None


class SoleWriter:
    """An in-memory SQLite database belongs to one process, which is its writer."""

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


def writer_lock(engine: Engine) -> WriterLock:
    """The election that fits the database behind `engine`."""
    if engine.dialect.name == "postgresql":
        return PostgresWriterLock(engine)
    database = engine.url.database
    if not database or database == ":memory:":
        return SoleWriter()
    return FileWriterLock(Path(f"{database}.vector-writer.lock"))

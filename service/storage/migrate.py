"""Run the Alembic migrations from code: at application start and in tests, no alembic.ini needed."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL, make_url

import migrations
from service.storage.engine import is_sqlite_memory, make_engine

# Why: an arbitrary fixed key ("face" "bank" in ASCII) that every replica agrees on for its migration lock.
MIGRATION_LOCK_KEY: Final = 0x66616365_62616E6B


def _script_location() -> str:
    return str(Path(migrations.__file__).resolve().parent)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the installed `migrations` package, optionally bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", _script_location())
    if connection is not None:
        # Read by migrations/env.py, which then migrates over this connection inside its transaction.
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine_or_url: Engine | str | URL) -> None:
    """Bring the database schema to the newest revision; safe to call from replicas starting together."""
    if isinstance(engine_or_url, Engine):
        _upgrade(engine_or_url)
        return
    engine = make_engine(engine_or_url, pool_size=1, max_overflow=0)
    try:
        _upgrade(engine)
    finally:
        engine.dispose()


def _upgrade(engine: Engine) -> None:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Why: two replicas starting at once would both try to create the tables. A transaction-level
            # lock serialises them; the second sees the first's committed alembic_version and does nothing.
            # It is released by the commit or rollback at the end of this block.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        elif connection.dialect.name == "sqlite":
            # Why: Python's sqlite3 runs DDL outside any transaction unless one was begun, so two processes
            # would both create the tables. BEGIN IMMEDIATE takes the write lock now; the other waits for it
            # (the busy timeout) and then sees the committed alembic_version.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        command.upgrade(alembic_config(connection), "head")


def schema_problem(url: str | URL) -> str | None:
    """Why a read-only command cannot read this database as it is (None: at the newest schema). Creates
    nothing: a missing SQLite file stays missing, and nothing is migrated."""
    parsed = make_url(url)
    on_file = parsed.get_backend_name() == "sqlite" and parsed.database and not is_sqlite_memory(parsed)
    if on_file and not Path(str(parsed.database)).expanduser().exists():
        return f"none yet at {parsed.database}"
    engine = make_engine(parsed, pool_size=1, max_overflow=0)
    try:
        if current_revision(engine) != head_revision():
            return "not migrated to the newest schema yet (start the server or run doctor --fix)"
    finally:
        engine.dispose()
    return None


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database that was never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations package has no revisions"
    return head

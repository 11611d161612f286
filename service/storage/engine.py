"""Engine and session factory. Nothing is created at import time; the app makes one engine at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

# Why: writers wait this long for SQLite's single write lock instead of failing at once.
SQLITE_BUSY_TIMEOUT_S = 30.0


def normalise_url(url: str | URL) -> URL:
    """Parse `url`, choosing psycopg 3 for a bare ``postgresql://`` (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def make_engine(url: str | URL, *, pool_size: int = 10, max_overflow: int = 10, echo: bool = False) -> Engine:
    """Build an engine for SQLite (a file, or memory for tests) or PostgreSQL.

    `pool_size` and `max_overflow` apply to server databases only. Every engine hides statement parameters
    from its errors and logs: they hold names, metadata and embedding bytes, which must not reach log files
    beyond the reach of erasure.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(parsed, echo=echo)
    return create_engine(
        parsed,
        echo=echo,
        hide_parameters=True,
        # Why: connections dropped by the server or a proxy are replaced instead of failing a request.
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
    )


def _make_sqlite_engine(url: URL, *, echo: bool) -> Engine:
    memory = is_sqlite_memory(url)
    kwargs: dict[str, Any] = {
        "hide_parameters": True,
        # Why: the API serves requests from a thread pool; a pooled connection serves one thread at a time.
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    }
    if memory:
        # Why: each connection to ":memory:" is a new empty database; share one so every thread sees the same.
        kwargs["poolclass"] = StaticPool
    else:
        assert url.database is not None
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # Why: SQLite ignores foreign keys (and ON DELETE CASCADE) unless asked, per connection.
            cursor.execute("PRAGMA foreign_keys=ON")
            # Why: deleted embeddings are biometric data; overwrite freed pages instead of leaving them.
            cursor.execute("PRAGMA secure_delete=ON")
            if not memory:
                # Why: WAL lets readers run while one writer writes; NORMAL sync is durable enough under WAL.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that write the changes their transaction noted into the change log as they commit."""
    from service.storage import changes

    # Why expire_on_commit=False: routes return ORM objects after committing without reloading them.
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    event.listen(factory, "before_commit", changes.write_noted)
    event.listen(factory, "after_rollback", changes.forget_noted)
    return factory

"""Throwaway PostgreSQL databases for tests.

The server is the local one (127.0.0.1:5432, trust auth) unless FACEBANK_TEST_POSTGRES_URL names another
maintenance database. Usage from any test suite:

    from tests._db import postgres_or_skip

    @pytest.fixture(scope="session")
    def postgres_url() -> Iterator[str]:
        yield from postgres_or_skip()  # a fresh database with a random name, dropped again on exit;
                                       # skips, saying why, when PostgreSQL is not reachable (fails in CI)

`make_postgres_url()` / `drop_postgres_database(url)` are the same thing as two plain calls.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

ADMIN_URL = os.environ.get(
    "FACEBANK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
CONNECT_TIMEOUT_S = 3


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server cannot be reached; the message says why, for pytest.skip."""


def _libpq_conninfo(url: URL) -> str:
    # psycopg takes a plain postgresql:// URI, without SQLAlchemy's "+psycopg" driver suffix.
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_connect(admin_url: str) -> psycopg.Connection:
    url = make_url(admin_url)
    try:
        # Why autocommit: CREATE/DROP DATABASE cannot run inside a transaction.
        return psycopg.connect(_libpq_conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        where = url.render_as_string(hide_password=True)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PostgresUnavailable(f"PostgreSQL not reachable at {where}: {first_line}") from exc


def make_postgres_url(*, admin_url: str = ADMIN_URL, prefix: str = "facebank_test") -> str:
    """Create an empty database with a random name; return its SQLAlchemy URL. Drop it with
    `drop_postgres_database`. Raises `PostgresUnavailable` when the server cannot be reached."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str, *, admin_url: str = ADMIN_URL) -> None:
    """Drop a database made by `make_postgres_url`, disconnecting whoever is still connected."""
    name = make_url(url).database
    assert name, f"no database name in {url!r}"
    with _admin_connect(admin_url) as conn:
        # WITH (FORCE) (PostgreSQL 13+): a leaked pool connection must not keep the database alive.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def postgres_database(*, admin_url: str = ADMIN_URL, prefix: str = "facebank_test") -> Iterator[str]:
    """A fresh, empty database for the duration of the block; yields its SQLAlchemy URL."""
    url = make_postgres_url(admin_url=admin_url, prefix=prefix)
    try:
        yield url
    finally:
        drop_postgres_database(url, admin_url=admin_url)


def lock_waits(engine: Engine) -> list[str]:
    """What the other sessions on `engine`'s database are blocked on right now (pg_stat_activity's
    wait_event for heavyweight locks: 'advisory', 'transactionid', 'tuple', ...): the server's own word that a
    lock holds someone back, instead of guessing from how long they took."""
    query = text(
        "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    # A new transaction each call: the view is snapshotted per transaction.
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


def postgres_or_skip() -> Iterator[str]:
    """For a fixture to `yield from`: a fresh database's URL, dropped afterwards; skips without a server
    (fails in CI, see tests/_ci.py)."""
    from tests._ci import skip_or_fail_in_ci

    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        skip_or_fail_in_ci(f"{exc} (start PostgreSQL or set FACEBANK_TEST_POSTGRES_URL)")

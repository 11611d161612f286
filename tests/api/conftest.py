"""An app per database backend, with models prepared once from ../shared.

The `client` app listens (by its settings) on loopback and holds no API key, so it serves without keys:
these tests are about the v1 contract. tests/security covers keys, scopes and the loopback rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.config import Settings
from tests._client import local_client
from tests._db import postgres_or_skip

# Every table the app writes, children first, to empty a shared PostgreSQL database between modules.
APP_TABLES = ("audit_events", "api_keys", "faces", "identities", "service_settings", "changes")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This suite's PostgreSQL database, shared by its modules (each empties it when done)."""
    yield from postgres_or_skip()


def empty_database(database_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as connection:
        for table in APP_TABLES:
            connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of each backend for one test module: a new SQLite file, or the session's PostgreSQL
    database emptied after the module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('data') / 'facebank.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    yield url
    # One database per session: empty it so the next module starts clean.
    empty_database(url)


@pytest.fixture(scope="module")
def client(
    database_url: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data_dir, model_dir=model_dir, database_url=database_url)
    with local_client(create_app(settings)) as test_client:
        yield test_client

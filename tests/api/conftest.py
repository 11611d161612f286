"""An app per database backend, with models prepared once from ../shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.config import Settings
from tests._db import PostgresUnavailable, postgres_database
from tests.conftest import SHARED_MODELS, require_shared


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_shared()
    pytest.importorskip("torch", reason="preparing models needs the train extra (torch)")
    from models.export.prepare import prepare_models

    directory = tmp_path_factory.mktemp("models")
    prepare_models(model_dir=directory, source_dir=SHARED_MODELS, progress=lambda _: None)
    return directory


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def client(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("data")
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=data_dir, model_dir=model_dir, database_url=database_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    if database_url:
        # One database per session: empty it so the next module starts clean.
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url)
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM faces"))
            connection.execute(text("DELETE FROM identities"))
        engine.dispose()

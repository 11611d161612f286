"""Deployment fixtures: models prepared once from ../shared, fresh PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """An empty, never-migrated PostgreSQL database for one test."""
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"{exc} (start PostgreSQL or set FACEBANK_TEST_POSTGRES_URL)")

"""Real servers over each database backend (keys: tests._live.issue_test_key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import database_url, postgres_url  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")

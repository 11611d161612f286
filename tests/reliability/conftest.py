"""Real servers over each database backend, and keys to call them with."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.security import Scope, cli_principal, issue_key
from service.storage import make_engine, make_session_factory, upgrade_to_head
from tests.api.conftest import database_url, postgres_url  # noqa: F401  (fixtures)


def make_key(database_url: str, *scopes: Scope, name: str) -> str:  # noqa: F811
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            issued = issue_key(session, name=name, scopes=scopes, actor=cli_principal())
            session.commit()
            return issued.token
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")

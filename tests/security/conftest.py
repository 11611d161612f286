"""Apps with API keys, per database backend; the keys are made the way `facebank keys create` makes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api import create_app
from service.config import Settings
from service.security import Scope, cli_principal, issue_key, revoke_key
from service.storage import keys as key_repo
from service.storage import make_engine, make_session_factory, upgrade_to_head
from tests._client import local_client
from tests.api.conftest import database_url, postgres_url  # noqa: F401  (fixtures)


@dataclass
class Keys:
    """Tokens of one key per scope, and a way to make more (or revoke them) straight in the database."""

    database_url: str
    admin: str
    enroll: str
    identify: str

    @contextmanager
    def session(self) -> Iterator[Session]:
        engine = make_engine(self.database_url, pool_size=1, max_overflow=0)
        try:
            with make_session_factory(engine)() as session:
                yield session
        finally:
            engine.dispose()

    def create(self, *scopes: Scope, name: str = "test") -> str:
        with self.session() as session:
            issued = issue_key(session, name=name, scopes=scopes, actor=cli_principal())
            session.commit()
            return issued.token

    def revoke_all(self) -> None:
        with self.session() as session:
            for key in key_repo.list_keys(session):
                revoke_key(session, key_id=key.id, actor=cli_principal())
            session.commit()


def header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def keys(database_url: str) -> Keys:  # noqa: F811
    upgrade_to_head(database_url)
    made = Keys(database_url, admin="", enroll="", identify="")
    made.admin = made.create(Scope.ADMIN, name="admin")
    made.enroll = made.create(Scope.ENROLL, name="enroller")
    made.identify = made.create(Scope.IDENTIFY, name="kiosk")
    return made


@pytest.fixture(scope="module")
def make_client(
    database_url: str,  # noqa: F811
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., TestClient]:
    """Build a (not yet started) TestClient over this module's database with settings overrides."""

    def build(**overrides: object) -> TestClient:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("data"),
            model_dir=model_dir,
            database_url=database_url,
            **overrides,  # type: ignore[arg-type]
        )
        return local_client(create_app(settings))

    return build


@pytest.fixture(scope="module")
def client(keys: Keys, make_client: Callable[..., TestClient]) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client

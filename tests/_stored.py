"""People and faces committed straight to SQL through the repository, as another process would write them,
for the gallery and change-log suites (real SQLite and PostgreSQL, no models)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import repository as repo

DIM = 8
MODEL = "m@1"


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def migrated_sessions(request: pytest.FixtureRequest, sqlite_file: str) -> Iterator[sessionmaker[Session]]:
    """For a fixture parametrised "sqlite"/"postgres" to `yield from`."""
    url = sqlite_file if request.param == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    engine = make_engine(url)
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def store_face(
    sessions: sessionmaker[Session], identity: uuid.UUID, seed: int, model: str = MODEL
) -> tuple[int, uuid.UUID]:
    """Commit one face; returns its key and id."""
    with sessions() as session:
        face = repo.add_face(
            session,
            identity_id=identity,
            embedding=unit(seed),
            model=model,
            bbox=[0, 0, 1, 1],
            det_score=1.0,
            landmarks=None,
            image_sha256=f"{seed:064d}",
        )
        session.commit()
        return face.key, face.id


def new_person(sessions: sessionmaker[Session], name: str = "someone") -> uuid.UUID:
    with sessions() as session:
        identity = repo.create_identity(session, name=name)
        session.commit()
        return identity.id

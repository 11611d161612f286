"""The writer's transactions, without models: batches, duplicates, lost races, concurrent writers."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from service.enrolment import EmbedderSwitched
from service.ingest.embedded import Destination, IdentityDirectory, _Accepted, _store_batch, store_faces
from service.ingest.report import Status
from service.ingest.scan import IngestItem
from service.schemas import DetectedFace
from service.security import cli_principal
from service.storage import repository as repo
from service.storage import service_settings
from service.storage.engine import make_engine, make_session_factory
from service.storage.migrate import upgrade_to_head
from service.storage.tables import AuditEvent, Identity
from tests._db import postgres_or_skip
from tests.ingest._helpers import stored_faces

MODEL = "test@1"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'facebank.db'}"
        return
    yield from postgres_or_skip()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


def _to(sessions: sessionmaker[Session], directory: IdentityDirectory | None = None) -> Destination:
    return Destination(sessions, directory or IdentityDirectory(), MODEL, cli_principal())


def _photo(name: str, n: int, external_id: str | None = None) -> tuple[_Accepted, np.ndarray]:
    face = DetectedFace((10.0, 10.0, 90.0, 90.0), 0.99, np.zeros((5, 2), np.float32))
    sha = hashlib.sha256(f"{name}/{n}".encode()).hexdigest()
    embedding = np.random.default_rng(n).standard_normal(8).astype(np.float32)
    return _Accepted(
        IngestItem(Path(f"/{name}/{n}.jpg"), name, external_id), sha, face, np.zeros(1)
    ), embedding


def test_a_photo_listed_twice_in_one_batch_is_stored_once(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    batch = [_photo("Ada", 1), _photo("Ada", 2), _photo("Ada", 1)]

    outcomes = store_faces(_to(sessions), batch)

    assert [o.status for o in outcomes] == [Status.INGESTED, Status.INGESTED, Status.SKIPPED]
    assert sum(stored_faces(engine.url.render_as_string(hide_password=False)).values()) == 2


def test_a_batch_whose_remembered_identity_was_deleted_falls_back_and_recreates_it(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    directory = IdentityDirectory()
    store_faces(_to(sessions, directory), [_photo("Ada", 1)])
    with sessions() as session:  # someone deletes Ada while the run still remembers her id
        session.execute(delete(Identity))
        session.commit()

    outcomes = _store_batch(_to(sessions, directory), [_photo("Alan", 1), _photo("Ada", 2)])

    assert [o.status for o in outcomes] == [Status.INGESTED, Status.INGESTED]
    with sessions() as session:
        names = sorted(i.name for i in repo.list_identities(session, limit=10)[0])
    assert names == ["Ada", "Alan"]


def _writer(sessions: sessionmaker[Session], batches: list[list[tuple[_Accepted, np.ndarray]]]) -> None:
    directory = IdentityDirectory()
    for batch in batches:
        _store_batch(_to(sessions, directory), batch)


def test_concurrent_writers_with_overlapping_batches_store_each_photo_and_identity_once(
    engine: Engine,
) -> None:
    sessions = make_session_factory(engine)
    photos = [_photo(f"person {n % 6}", n, external_id="emp-0" if n % 6 == 0 else None) for n in range(36)]
    plans = []
    for seed in range(4):  # four writers, each with every photo in its own order and batching
        order = photos[:]
        random.Random(seed).shuffle(order)
        size = 3 + seed * 2
        plans.append([order[i : i + size] for i in range(0, len(order), size)])

    threads = [threading.Thread(target=_writer, args=(sessions, plan)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a writer is stuck (deadlock?)"

    faces = stored_faces(engine.url.render_as_string(hide_password=False))
    assert len(faces) == 36 and set(faces.values()) == {1}
    with sessions() as session:
        identities = repo.list_identities(session, limit=100)[0]
    assert Counter(i.name for i in identities) == {f"person {n}": 1 for n in range(6)}


def test_a_batch_after_models_use_switched_the_embedder_stores_nothing(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    directory = IdentityDirectory()
    (first,) = store_faces(_to(sessions, directory), [_photo("Ada", 1)])
    assert first.status is Status.INGESTED
    with sessions() as session:
        service_settings.set_active_embedder(session, tag="other@2")
        session.commit()
    with pytest.raises(EmbedderSwitched, match="other@2"):
        store_faces(_to(sessions, directory), [_photo("Ada", 2), _photo("Bob", 3)])
    # Neither the second photo nor a new identity for Bob was stored under the model nobody searches now.
    with sessions() as session:
        assert session.scalars(select(Identity.name)).all() == ["Ada"]
        assert repo.count_faces(session) == 1


def test_ingest_audits_each_identity_it_creates_and_each_face_it_stores_as_the_api_does(
    engine: Engine,
) -> None:
    sessions = make_session_factory(engine)
    directory = IdentityDirectory()
    store_faces(_to(sessions, directory), [_photo("Ada", 1), _photo("Ada", 2)])
    store_faces(_to(sessions, directory), [_photo("Ada", 2)])  # already in: skipped, not audited again

    with sessions() as session:
        (ada,) = session.scalars(select(Identity)).all()
        face_ids = {str(face.id) for face in repo.list_faces(session, identity_id=ada.id)}
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.action, e.target_type) for e in events] == [
        ("identity.create", "identity"),
        ("face.enroll", "face"),
        ("face.enroll", "face"),
    ]
    assert events[0].target_id == str(ada.id)
    assert {e.target_id for e in events[1:]} == face_ids
    assert all(e.detail == {"identity_id": str(ada.id), "model": MODEL} for e in events[1:])
    assert all(e.actor == cli_principal().label for e in events)

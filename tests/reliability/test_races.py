"""The interleavings a stress run may or may not hit, forced one at a time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from service.api import create_app
from service.config import Settings
from service.gallery import Gallery
from service.index import make_index
from service.storage import make_engine, make_session_factory, upgrade_to_head
from service.storage import repository as repo
from tests._client import local_client
from tests.conftest import LFW

FACE = LFW / "Tony_Blair" / "Tony_Blair_0001.jpg"


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_deleting_an_identity_removes_index_entries_its_key_list_missed(tmp_path: Path) -> None:
    # On SQLite the deletion lists its face keys before its DELETE; a face committed in between is removed
    # by the database's cascade without being listed. The index must still forget it.
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    upgrade_to_head(engine)
    gallery = Gallery(make_index(8), make_session_factory(engine), "m@1")
    person, other = uuid.uuid4(), uuid.uuid4()
    gallery.added(1, person, _unit(1))
    gallery.added(2, person, _unit(2))  # committed after the deletion listed [1]
    gallery.added(3, other, _unit(3))
    gallery.removed([1], identity_id=person)
    assert gallery.index.ids().tolist() == [3]
    assert [m.identity_id for m in gallery.identify(_unit(2)[None, :], 5)[0]] == []  # `other` has no row
    engine.dispose()


@pytest.fixture
def client(database_url: str, model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, model_dir=model_dir, database_url=database_url)
    with local_client(create_app(settings)) as test_client:
        yield test_client


def test_an_identity_deleted_while_its_photo_is_processed_gets_404_and_no_face(client: TestClient) -> None:
    state: Any = client.app.state.facebank  # type: ignore[attr-defined]
    identity = client.post("/v1/identities", json={"name": "vanishing"}).json()["id"]
    embed = state.serving.pipeline.embed_faces

    def embed_then_lose_the_identity(*args: Any, **kwargs: Any) -> Any:
        # Another process (or replica) deletes the person while the networks run.
        with state.sessions() as session:
            repo.delete_identity(session, identity_id=uuid.UUID(identity))
            session.commit()
        return embed(*args, **kwargs)

    state.serving.pipeline.embed_faces = embed_then_lose_the_identity
    try:
        response = client.post(
            f"/v1/identities/{identity}/faces", files={"image": ("f.jpg", FACE.read_bytes())}
        )
    finally:
        state.serving.pipeline.embed_faces = embed
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    report = client.get("/v1/admin/index").json()
    assert report["in_step"] and report["sql_faces"] == 0
    events = client.get("/v1/audit", params={"target_id": identity}).json()["items"]
    assert [e["action"] for e in events] == ["identity.create"]  # the failed enrollment left no trace


def test_deleting_a_face_already_gone_with_its_identity_is_404(client: TestClient) -> None:
    state: Any = client.app.state.facebank  # type: ignore[attr-defined]
    identity = client.post("/v1/identities", json={"name": "twice"}).json()["id"]
    face = client.post(
        f"/v1/identities/{identity}/faces", files={"image": ("f.jpg", FACE.read_bytes())}
    ).json()
    # Removed behind the server's back, bypassing the change log (a plain session): its index still has it.
    with sessionmaker(bind=state.engine)() as session:
        repo.delete_identity(session, identity_id=uuid.UUID(identity))
        session.commit()
    assert client.delete(f"/v1/identities/{identity}/faces/{face['id']}").status_code == 404
    assert client.delete(f"/v1/identities/{identity}").status_code == 404
    assert client.patch(f"/v1/identities/{identity}", json={"name": "x"}).status_code == 404
    assert not client.get("/v1/admin/index").json()["in_step"]  # found by the check...
    assert client.post("/v1/admin/index/rebuild").json()["in_step"]  # ...and repaired without a restart

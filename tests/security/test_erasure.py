"""Deleting a person erases them: identity, faces and embeddings in one transaction, then the index entries.

No face crops or uploaded images are stored (only a SHA-256 of each enrolled upload, on the face row), so
there is nothing else to erase.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.storage.tables import AuditEvent, Face, Identity
from tests.conftest import LFW
from tests.security.conftest import Keys, header

PERSON = "Gerhard_Schroeder"
OTHER = "Ariel_Sharon"


def _photo(name: str, number: int) -> dict:
    path: Path = LFW / name / f"{name}_{number:04d}.jpg"
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def _matches(client: TestClient, keys: Keys, name: str, number: int) -> set[str]:
    response = client.post(
        "/v1/identify", files=_photo(name, number), params={"k": 10}, headers=header(keys.identify)
    )
    assert response.status_code == 200, response.text
    return {m["identity_id"] for f in response.json()["faces"] for m in f["matches"]}


def test_deleting_an_identity_erases_its_faces_embeddings_and_index_entries(
    client: TestClient, keys: Keys
) -> None:
    enroll = header(keys.enroll)
    person = client.post(
        "/v1/identities", json={"name": PERSON, "external_id": "erase-me"}, headers=enroll
    ).json()
    other = client.post("/v1/identities", json={"name": OTHER}, headers=enroll).json()
    for number in (1, 2, 3):
        url = f"/v1/identities/{person['id']}/faces"
        assert client.post(url, files=_photo(PERSON, number), headers=enroll).status_code == 201
    assert (
        client.post(f"/v1/identities/{other['id']}/faces", files=_photo(OTHER, 1), headers=enroll).status_code
        == 201
    )
    assert person["id"] in _matches(client, keys, PERSON, 4)
    before = client.get("/v1/admin/index", headers=header(keys.admin)).json()

    assert client.delete(f"/v1/identities/{person['id']}", headers=enroll).status_code == 204

    # Searching for the deleted person finds nobody by that id, with any photo of them.
    for number in (1, 4, 5):
        assert person["id"] not in _matches(client, keys, PERSON, number)
    assert other["id"] in _matches(client, keys, OTHER, 2)
    assert client.get(f"/v1/identities/{person['id']}", headers=enroll).status_code == 404
    after = client.get("/v1/admin/index", headers=header(keys.admin)).json()
    assert after["in_step"] and after["index_faces"] == before["index_faces"] - 3

    # Nothing of them is left in SQL: no identity, no face row, no embedding; the audit log keeps ids only.
    with keys.session() as session:
        person_id = uuid.UUID(person["id"])
        assert session.get(Identity, person_id) is None
        left = session.scalar(select(func.count()).select_from(Face).where(Face.identity_id == person_id))
        assert left == 0
        assert (
            session.scalar(
                select(func.count()).select_from(Identity).where(Identity.external_id == "erase-me")
            )
            == 0
        )
        events = session.scalars(select(AuditEvent).where(AuditEvent.target_id == person["id"])).all()
        assert [e.action for e in events] == ["identity.create", "identity.delete"]
        assert events[-1].detail == {"faces": 3}
        text = " ".join(f"{e.actor} {e.detail}" for e in session.scalars(select(AuditEvent)))
        assert PERSON not in text and "erase-me" not in text
    # The external id is free again, as for someone never enrolled.
    again = client.post("/v1/identities", json={"name": "new", "external_id": "erase-me"}, headers=enroll)
    assert again.status_code == 201

"""A person enrolled with several photos is scored by the mean of their faces (service/templates.py), the
same way by /v1/identify and /v1/verify; checked against figures read only through the public API."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LFW

PERSON = "Colin_Powell"
ENROLLED = (1, 2, 3)
PROBE = 4


def _upload(number: int, field: str = "image") -> dict:
    path = LFW / PERSON / f"{PERSON}_{number:04d}.jpg"
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def _cosine(client: TestClient, first: int, second: int) -> float:
    """Photo against photo: the cosine of their largest faces' embeddings."""
    body = client.post("/v1/verify", files=_upload(first) | _upload(second, "image2")).json()
    return float(body["score"])


def test_identify_and_verify_score_a_person_by_the_mean_of_their_faces(client: TestClient) -> None:
    identity = client.post("/v1/identities", json={"name": PERSON}).json()
    for number in ENROLLED:
        response = client.post(f"/v1/identities/{identity['id']}/faces", files=_upload(number))
        assert response.status_code == 201, response.text
    # With unit faces v_i and probe q: q·mean/|mean| = Σ q·v_i / sqrt(Σ_i Σ_j v_i·v_j).
    to_probe = [_cosine(client, PROBE, number) for number in ENROLLED]
    between = [_cosine(client, a, b) for a in ENROLLED for b in ENROLLED if a < b]
    expected = sum(to_probe) / math.sqrt(len(ENROLLED) + 2 * sum(between))

    verified = client.post("/v1/verify", files=_upload(PROBE), data={"identity_id": identity["id"]}).json()
    identified = client.post("/v1/identify", files=_upload(PROBE), params={"k": 1}).json()
    top = max(identified["faces"], key=lambda f: f["matches"][0]["score"] if f["matches"] else -1)

    assert verified["score"] == pytest.approx(expected, abs=5e-4)
    assert top["matches"][0]["name"] == PERSON
    assert top["matches"][0]["score"] == pytest.approx(expected, abs=5e-4)
    # Not the best face's score: the rule made a difference here.
    assert abs(expected - max(to_probe)) > 0.01

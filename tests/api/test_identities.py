"""CRUD on identities: the v1 contract's shapes and errors."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient


def _create(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/identities", json={"name": "Ada", **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_the_identity_with_no_faces(client: TestClient) -> None:
    identity = _create(client, external_id=f"ext-{uuid.uuid4()}", metadata={"team": "blue"})
    assert set(identity) == {"id", "name", "external_id", "metadata", "face_count", "created_at"}
    assert identity["face_count"] == 0 and identity["metadata"] == {"team": "blue"}
    fetched = client.get(f"/v1/identities/{identity['id']}").json()
    assert fetched["faces"] == [] and fetched["name"] == "Ada"


def test_duplicate_external_id_is_a_conflict(client: TestClient) -> None:
    external_id = f"dup-{uuid.uuid4()}"
    _create(client, external_id=external_id)
    response = client.post("/v1/identities", json={"name": "Bob", "external_id": external_id})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_listing_pages_through_every_identity_once(client: TestClient) -> None:
    created = {_create(client, name=f"person {i}")["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/identities", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert created <= set(seen)
    assert len(seen) == len(set(seen))


def test_patch_changes_only_the_given_fields(client: TestClient) -> None:
    identity = _create(client, metadata={"a": 1})
    response = client.patch(f"/v1/identities/{identity['id']}", json={"name": "Ada L."})
    assert response.status_code == 200
    assert response.json()["name"] == "Ada L." and response.json()["metadata"] == {"a": 1}
    cleared = client.patch(f"/v1/identities/{identity['id']}", json={"metadata": None}).json()
    assert cleared["metadata"] is None and cleared["name"] == "Ada L."


def test_delete_then_get_is_not_found(client: TestClient) -> None:
    identity = _create(client)
    assert client.delete(f"/v1/identities/{identity['id']}").status_code == 204
    response = client.get(f"/v1/identities/{identity['id']}")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "identity not found"}}
    assert client.delete(f"/v1/identities/{identity['id']}").status_code == 404


def test_bad_input_gets_a_4xx_with_a_machine_readable_code(client: TestClient) -> None:
    cases = [
        (client.get("/v1/identities/not-a-uuid"), 422, "validation_error"),
        (client.post("/v1/identities", json={}), 422, "validation_error"),
        (client.post("/v1/identities", json={"name": ""}), 422, "validation_error"),
        (client.post("/v1/identities", json={"name": "x" * 300}), 422, "validation_error"),
        (client.post("/v1/identities", json={"name": "x", "surprise": 1}), 422, "validation_error"),
        (
            client.post("/v1/identities", content=b"{not json", headers={"content-type": "application/json"}),
            422,
            "validation_error",
        ),
        (client.get("/v1/identities", params={"limit": 0}), 422, "validation_error"),
        (client.get("/v1/identities", params={"cursor": "garbage!!"}), 422, "invalid_cursor"),
        (client.patch(f"/v1/identities/{uuid.uuid4()}", json={"name": "x"}), 404, "not_found"),
        (client.patch(f"/v1/identities/{uuid.uuid4()}", json={"name": None}), 422, "validation_error"),
        (client.get("/v1/nothing-here"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["error"]["code"] == code, response.text


def test_listing_by_name_finds_substrings_in_any_case_and_pages(client: TestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    wanted = [_create(client, name=f"Grace {tag} Hopper {i}")["id"] for i in range(5)]
    _create(client, name=f"Alan {tag} Turing")
    _create(client, name=f"100% {tag}_x")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "name": f"{tag} hopper"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/identities", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        if not (cursor := page["next_cursor"]):
            break
    assert seen == wanted
    # LIKE's wildcards are plain characters in a search.
    assert [
        i["name"] for i in client.get("/v1/identities", params={"name": f"% {tag}_"}).json()["items"]
    ] == [f"100% {tag}_x"]
    assert client.get("/v1/identities", params={"name": f"{tag}%Turing"}).json()["items"] == []
    refused = client.get("/v1/identities", params={"name": "a\x00b"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "validation_error"

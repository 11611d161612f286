"""Keys, scopes and the errors around them, through the HTTP API of an app that holds keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from service.security import Scope
from tests.conftest import LFW
from tests.security.conftest import Keys, header

FACE = LFW / "Tony_Blair" / "Tony_Blair_0001.jpg"


def _upload() -> dict:
    return {"image": ("face.jpg", FACE.read_bytes(), "image/jpeg")}


def _code(response: object) -> str:
    return response.json()["error"]["code"]  # type: ignore[attr-defined]


def test_without_a_key_every_v1_endpoint_is_401_with_a_json_error(client: TestClient) -> None:
    calls = [
        client.get("/v1/identities"),
        client.post("/v1/identities", json={"name": "x"}),
        client.post("/v1/identify", files=_upload()),
        client.post("/v1/detect", files=_upload()),
        client.get("/v1/keys"),
        client.get("/v1/audit"),
        client.get("/v1/admin/index"),
    ]
    for response in calls:
        assert response.status_code == 401, response.text
        assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"code", "message"}
        assert _code(response) == "missing_api_key"
        assert response.headers["www-authenticate"] == "Bearer"


def test_health_and_the_openapi_document_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer" and schemes["APIKeyHeader"]["name"] == "X-API-Key"


def test_a_key_works_as_bearer_token_and_as_x_api_key(client: TestClient, keys: Keys) -> None:
    assert client.get("/v1/identities", headers=header(keys.admin)).status_code == 200
    assert client.get("/v1/identities", headers={"X-API-Key": keys.admin}).status_code == 200
    assert client.get("/v1/identities", headers={"authorization": f"bearer {keys.admin}"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer fbk_" + "A" * 43},  # well-formed, unknown
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"X-API-Key": "fbk_short"},
        {"X-API-Key": "' OR 1=1 --"},
    ],
    ids=["unknown", "malformed", "empty-bearer", "basic-auth", "short", "injection"],
)
def test_a_wrong_key_is_401_invalid_api_key(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/identities", headers=headers)
    assert response.status_code == 401 and _code(response) == "invalid_api_key"


def test_two_different_keys_in_one_request_are_refused(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/identities", headers=header(keys.admin) | {"X-API-Key": keys.enroll})
    assert response.status_code == 401 and _code(response) == "invalid_api_key"


def test_each_scope_opens_its_own_endpoints_and_no_others(client: TestClient, keys: Keys) -> None:
    enroll, identify, admin = header(keys.enroll), header(keys.identify), header(keys.admin)
    identity = client.post("/v1/identities", json={"name": "scoped"}, headers=enroll)
    assert identity.status_code == 201
    url = f"/v1/identities/{identity.json()['id']}"
    expectations = [
        # (method, path, kwargs, key, status)
        ("post", f"{url}/faces", {"files": _upload()}, enroll, 201),
        ("get", url, {}, enroll, 200),
        ("post", "/v1/identify", {"files": _upload()}, identify, 200),
        ("post", "/v1/detect", {"files": _upload()}, identify, 200),
        ("post", "/v1/identify", {"files": _upload()}, enroll, 403),
        ("post", f"{url}/faces", {"files": _upload()}, identify, 403),
        ("get", url, {}, identify, 403),
        ("get", "/v1/identities", {}, identify, 403),
        ("delete", url, {}, identify, 403),
        ("get", "/v1/keys", {}, enroll, 403),
        ("get", "/v1/audit", {}, identify, 403),
        ("post", "/v1/admin/index/rebuild", {}, enroll, 403),
        # admin may do everything
        ("post", "/v1/identify", {"files": _upload()}, admin, 200),
        ("get", "/v1/keys", {}, admin, 200),
        ("get", "/v1/admin/index", {}, admin, 200),
        ("delete", url, {}, admin, 204),
    ]
    for method, path, kwargs, key, status in expectations:
        response = getattr(client, method)(path, headers=key, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        if status == 403:
            assert _code(response) == "insufficient_scope"


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(client: TestClient) -> None:
    pulled = 0

    def body() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(64):
            pulled += 1
            yield b"x" * 65536

    response = client.post(
        "/v1/identify", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 401 and _code(response) == "missing_api_key"
    assert pulled <= 1, f"{pulled} chunks of the body were read before refusing"


def test_a_revoked_key_stops_working_at_once(client: TestClient, keys: Keys) -> None:
    token = keys.create(Scope.IDENTIFY, name="short-lived")
    assert client.get("/v1/keys", headers=header(token)).status_code == 403  # known, lacks admin
    listed = client.get("/v1/keys", headers=header(keys.admin)).json()["items"]
    (row,) = [k for k in listed if k["name"] == "short-lived"]
    assert "key" not in row and token not in str(listed)  # listings never show secrets
    assert client.delete(f"/v1/keys/{row['id']}", headers=header(keys.admin)).status_code == 204
    response = client.get("/v1/keys", headers=header(token))
    assert response.status_code == 401 and _code(response) == "invalid_api_key"
    assert client.delete(f"/v1/keys/{row['id']}", headers=header(keys.admin)).status_code == 204  # idempotent
    unknown = client.delete("/v1/keys/00000000-0000-0000-0000-000000000000", headers=header(keys.admin))
    assert unknown.status_code == 404


def test_an_admin_creates_a_key_whose_secret_is_shown_once(client: TestClient, keys: Keys) -> None:
    created = client.post(
        "/v1/keys", json={"name": "ci", "scopes": ["enroll", "identify"]}, headers=header(keys.admin)
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(body["prefix"]) and body["scopes"] == ["enroll", "identify"]
    assert client.post("/v1/identify", files=_upload(), headers=header(body["key"])).status_code == 200
    again = client.get("/v1/keys", headers=header(keys.admin)).json()["items"]
    assert body["key"] not in str(again)
    bad = client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=header(keys.admin))
    assert bad.status_code == 422 and _code(bad) == "validation_error"


def test_changes_are_audited_with_who_what_and_when_but_no_names(client: TestClient, keys: Keys) -> None:
    enroll = header(keys.enroll)
    identity = client.post(
        "/v1/identities", json={"name": "Secret Name", "metadata": {"x": "private"}}, headers=enroll
    )
    identity_id = identity.json()["id"]
    face = client.post(f"/v1/identities/{identity_id}/faces", files=_upload(), headers=enroll).json()
    assert (
        client.delete(f"/v1/identities/{identity_id}/faces/{face['id']}", headers=enroll).status_code == 204
    )
    assert client.delete(f"/v1/identities/{identity_id}", headers=enroll).status_code == 204

    events = client.get("/v1/audit", params={"limit": 50}, headers=header(keys.admin)).json()["items"]
    mine = [e for e in events if e["target_id"] in (identity_id, face["id"])]
    assert [e["action"] for e in reversed(mine)] == [
        "identity.create",
        "face.enroll",
        "face.delete",
        "identity.delete",
    ]
    for event in mine:
        assert event["actor"].startswith("key fbk_") and "(enroller)" in event["actor"]
        assert event["actor_key_id"] is not None and event["at"]
    assert "Secret Name" not in str(events) and "private" not in str(events)
    key_events = client.get("/v1/audit", params={"action": "key.create"}, headers=header(keys.admin)).json()
    assert key_events["items"] and all(e["target_type"] == "api_key" for e in key_events["items"])
    page = client.get("/v1/audit", params={"limit": 2}, headers=header(keys.admin)).json()
    older = client.get(
        "/v1/audit", params={"limit": 2, "before": page["next_before"]}, headers=header(keys.admin)
    ).json()
    assert max(e["id"] for e in older["items"]) < min(e["id"] for e in page["items"])


def test_without_keys_a_loopback_server_serves_anyone_local_until_a_key_exists(
    make_client: Callable[..., TestClient], keys: Keys
) -> None:
    keys.revoke_all()
    try:
        with make_client(host="127.0.0.1") as local:
            assert local.get("/v1/identities").status_code == 200
            token = keys.create(Scope.ADMIN, name="first")
            # The next request already needs the key: keys are looked up per request.
            assert local.get("/v1/identities").status_code == 401
            assert local.get("/v1/identities", headers=header(token)).status_code == 200
    finally:
        keys.admin = keys.create(Scope.ADMIN, name="admin")
        keys.enroll = keys.create(Scope.ENROLL, name="enroller")
        keys.identify = keys.create(Scope.IDENTIFY, name="kiosk")


def test_a_server_beyond_loopback_refuses_to_start_without_keys_and_never_serves_anonymously(
    make_client: Callable[..., TestClient], keys: Keys
) -> None:
    from service.api.app import NoKeysOnPublicAddress

    with make_client(host="0.0.0.0") as public:
        assert public.get("/v1/identities").status_code == 401  # keys exist: starts, but wants one
        assert public.get("/v1/identities", headers=header(keys.admin)).status_code == 200
    keys.revoke_all()
    try:
        with pytest.raises(NoKeysOnPublicAddress, match="facebank keys create"), make_client(host="0.0.0.0"):
            pass
    finally:
        keys.admin = keys.create(Scope.ADMIN, name="admin")
        keys.enroll = keys.create(Scope.ENROLL, name="enroller")
        keys.identify = keys.create(Scope.IDENTIFY, name="kiosk")

"""/v1/detect and /v1/identify take the smallest face size per request (min_face_size), validated."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.group_photos import compose, face_crops
from service.config import Settings
from service.pipeline.factory import build_pipeline
from tests._client import local_client
from tests.conftest import LFW


@pytest.fixture(scope="module")
def group_photo_png(client: TestClient) -> bytes:
    """24 LFW faces 40 px wide on a 2400x1600 canvas: too small for the photo shrunk to 640 px alone."""
    settings: Settings = client.app.state.facebank.settings  # type: ignore[attr-defined]
    detector = build_pipeline(settings)[0].detector
    photo = compose(face_crops(LFW, detector, 24), (2400, 1600), 40, np.random.default_rng(2))
    buffer = io.BytesIO()
    photo.image.save(buffer, format="PNG")
    return buffer.getvalue()


def _detect(client: TestClient, png: bytes, query: str = "") -> list[dict]:
    response = client.post(f"/v1/detect{query}", files={"image": ("group.png", png, "image/png")})
    assert response.status_code == 200, response.text
    faces: list[dict] = response.json()["faces"]
    return faces


def test_small_faces_are_found_by_default_and_a_request_can_skip_them(
    client: TestClient, group_photo_png: bytes
) -> None:
    assert len(_detect(client, group_photo_png)) >= 22
    assert _detect(client, group_photo_png, "?min_face_size=80") == []
    files = {"image": ("group.png", group_photo_png, "image/png")}
    response = client.post("/v1/identify?min_face_size=80", files=files)
    assert response.status_code == 200 and response.json()["faces"] == [], response.text


@pytest.mark.parametrize("value", ["0", "-3", "4097", "abc", "1.5"])
@pytest.mark.parametrize("route", ["/v1/detect", "/v1/identify"])
def test_bad_min_face_size_is_a_422_naming_the_parameter(
    client: TestClient, group_photo_png: bytes, route: str, value: str
) -> None:
    response = client.post(
        f"{route}?min_face_size={value}", files={"image": ("group.png", group_photo_png, "image/png")}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and "min_face_size" in error["message"]


def test_batched_requests_each_get_their_own_smallest_face(
    client: TestClient, group_photo_png: bytes
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.api import create_app

    settings: Settings = client.app.state.facebank.settings  # type: ignore[attr-defined]
    queries = ["", "?min_face_size=80", "?min_face_size=24"]
    alone = [len(_detect(client, group_photo_png, query)) for query in queries]
    batched_settings = settings.model_copy(update={"batch_max_wait_ms": 50.0, "batch_max_size": 4})
    with local_client(create_app(batched_settings)) as batched:
        assert batched.app.state.facebank.serving.batcher is not None  # type: ignore[attr-defined]
        with ThreadPoolExecutor(len(queries)) as pool:
            together = list(pool.map(lambda query: len(_detect(batched, group_photo_png, query)), queries))
    assert together == alone and alone[0] >= 22 and alone[1] == 0

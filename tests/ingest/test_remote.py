"""--url mode: through a real uvicorn server, and through a fake API that fails on purpose."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.ingest.gates import Gates
from service.ingest.progress import StopFlag
from service.ingest.remote import RemoteError, RemoteOptions, run_remote
from service.ingest.report import Status, Tally
from service.ingest.scan import IngestItem
from tests._ports import free_port
from tests.ingest._helpers import run_ingest, stored_faces
from tests.reliability._server import start_server

# --- a real server ------------------------------------------------------------------------------------


@pytest.fixture
def server(model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """`facebank serve` on a free port of 127.0.0.1, with its own SQLite database."""
    settings = Settings(data_dir=tmp_path / "server", model_dir=model_dir)
    # The shared start-up: it starts again on another port when this one was taken meanwhile.
    running = start_server(
        data_dir=settings.data_dir,
        model_dir=model_dir,
        database_url=settings.resolved_database_url,
        log=tmp_path / "server.log",
    )
    try:
        yield running.url, settings
    finally:
        running.stop()


@pytest.mark.shared
@pytest.mark.slow
def test_url_mode_ingests_through_a_running_server_which_sees_the_faces_at_once(
    server: tuple[str, Settings], small_gallery: Path, tmp_path: Path
) -> None:
    url, server_settings = server
    local = Settings(data_dir=tmp_path / "client", model_dir=server_settings.model_dir)
    report = tmp_path / "report.json"

    assert run_ingest([str(small_gallery), "--url", url, "--report", str(report)], local) == 0

    # The gates run on the server's detections exactly as in embedded mode: the same LFW photo is too blurred.
    blurred = small_gallery / "Abdoulaye_Wade" / "Abdoulaye_Wade_0003.jpg"
    photos = [p for p in sorted(small_gallery.glob("*/*.jpg")) if p != blurred]
    document = json.loads(report.read_text())
    assert document["meta"]["mode"] == "url"
    assert document["totals"] == {"ingested": len(photos), "skipped": 0, "rejected": 1, "error": 0}
    assert [(Path(r["path"]), r["reason"]) for r in document["rows"]] == [(blurred, "blurry")]
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["checks"]["faces"] == len(photos) and ready["checks"]["index_in_step"]
    expected = {(p.parent.name, None, hashlib.sha256(p.read_bytes()).hexdigest()) for p in photos}
    faces = stored_faces(server_settings.resolved_database_url)
    assert set(faces) == expected and set(faces.values()) == {1}

    # The server knows them now: a gallery photo is identified as its person.
    probe = photos[0]
    answer = httpx.post(f"{url}/v1/identify", files={"image": probe.read_bytes()}).json()
    assert answer["faces"][0]["identity"]["name"] == probe.parent.name

    # Run again: the server has no image hash in its Face bodies; the detection fingerprint finds them.
    again = tmp_path / "again.json"
    assert run_ingest([str(small_gallery), "--url", url, "--report", str(again)], local) == 0
    assert json.loads(again.read_text())["reasons"]["skipped"] == {"already_ingested": len(photos)}
    assert json.loads(again.read_text())["totals"]["ingested"] == 0
    assert stored_faces(server_settings.resolved_database_url) == faces


def test_url_mode_exits_1_when_the_server_cannot_be_reached(tmp_path: Path, small_gallery: Path) -> None:
    settings = Settings(data_dir=tmp_path, model_dir=tmp_path / "none")
    argv = [str(small_gallery), "--url", f"http://127.0.0.1:{free_port()}"]

    assert run_ingest(argv, settings) == 1


# --- a fake API that fails on purpose -------------------------------------------------------------


class FakeFacebank:
    """Just enough of the v1 API, in memory, with a detector that boxes a face from the image's size."""

    model = "fake@1"

    def __init__(self) -> None:
        self.identities: dict[str, dict[str, Any]] = {}
        self.faces: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[str] = []
        # route -> outcomes for its next calls: "503", "drop" (no answer), "commit-drop" (do it, lose answer)
        self.script: dict[str, list[str]] = {}
        self.api_key: str | None = None  # when set, /v1 wants `Authorization: Bearer <it>`

    def _detect(self, image: bytes) -> dict[str, Any]:
        width, height = Image.open(io.BytesIO(image)).size
        side = min(width, height) * 0.6
        x, y = (width - side) / 2, (height - side) / 2
        points = [
            [x + side * fx, y + side * fy]
            for fx, fy in [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]
        ]
        score = 0.99 + (sum(image[-64:]) % 97) / 1e4  # deterministic, differs between photos
        return {"bbox": [x, y, x + side, y + side], "det_score": score, "landmarks": points}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        route = f"{method} {'/v1/identities/{id}/faces' if path.endswith('/faces') else path}"
        self.calls.append(route)
        script = self.script.get(route, [])
        action = script.pop(0) if script else "ok"
        if action == "503":
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
        if action == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        if (
            self.api_key
            and path.startswith("/v1")
            and request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "send an API key"}})
        response = self._handle(request, method, path)
        if action == "commit-drop":
            raise httpx.ReadError("connection reset after the server committed", request=request)
        return response

    def _image(self, request: httpx.Request) -> bytes:
        boundary = request.headers["content-type"].split("boundary=")[1].encode()
        for part in request.content.split(b"--" + boundary):
            head, _, body = part.partition(b"\r\n\r\n")
            if b'name="image"' in head:
                return body[: -len(b"\r\n")]
        raise AssertionError("no image part")

    def _handle(self, request: httpx.Request, method: str, path: str) -> httpx.Response:
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/v1/identities" and method == "GET":
            items = [{**i, "face_count": len(self.faces[i["id"]])} for i in self.identities.values()]
            return httpx.Response(200, json={"items": items, "next_cursor": None})
        if path == "/v1/identities" and method == "POST":
            body = json.loads(request.content)
            if body.get("external_id") and any(
                i["external_id"] == body["external_id"] for i in self.identities.values()
            ):
                return httpx.Response(409, json={"error": {"code": "conflict", "message": "taken"}})
            identity = {
                "id": str(uuid.uuid4()),
                "name": body["name"],
                "external_id": body.get("external_id"),
                "metadata": None,
                "created_at": datetime.now(UTC).isoformat(),
            }
            self.identities[identity["id"]] = identity
            self.faces[identity["id"]] = []
            return httpx.Response(201, json={**identity, "face_count": 0})
        if path == "/v1/detect":
            return httpx.Response(200, json={"faces": [self._detect(self._image(request))]})
        if path == "/v1/identify":
            return httpx.Response(200, json={"model": self.model, "faces": []})
        identity_id = path.split("/")[3]
        if path.endswith("/faces"):
            detected = self._detect(self._image(request))
            face = {
                "id": str(uuid.uuid4()),
                "identity_id": identity_id,
                "bbox": detected["bbox"],
                "det_score": detected["det_score"],
                "model": self.model,
                "created_at": datetime.now(UTC).isoformat(),
            }
            self.faces[identity_id].append(face)
            return httpx.Response(201, json=face)
        identity = self.identities[identity_id]
        faces = self.faces[identity_id]
        return httpx.Response(200, json={**identity, "face_count": len(faces), "faces": faces})


def _photos(tmp_path: Path, names: list[str]) -> list[IngestItem]:
    items = []
    for index, name in enumerate(names):
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 256, size=(120 + index, 100 + index, 3), dtype=np.uint8)
        path = tmp_path / f"{index}.png"
        Image.fromarray(pixels).save(path)
        items.append(IngestItem(path, name))
    return items


def _run(fake: FakeFacebank, items: list[IngestItem], tmp_path: Path, **options: Any) -> Tally:
    options.setdefault("backoff_s", 0.001)
    tally = Tally()
    run_remote(
        items,
        base_url="http://facebank.test",
        settings=Settings(data_dir=tmp_path, model_dir=tmp_path / "none"),
        options=RemoteOptions(gates=Gates(), **options),
        tally=tally,
        stop=StopFlag(),
        transport=httpx.MockTransport(fake),
    )
    return tally


def test_5xx_and_connection_errors_are_retried_with_back_off(tmp_path: Path) -> None:
    fake = FakeFacebank()
    fake.script = {
        "GET /v1/identities": ["503"],
        "POST /v1/detect": ["drop", "503", "503"],
        "POST /v1/identities": ["503"],
    }
    items = _photos(tmp_path, ["Ada", "Ada", "Alan"])

    tally = _run(fake, items, tmp_path, concurrency=1)

    assert tally.totals() == {"ingested": 3, "skipped": 0, "rejected": 0, "error": 0}
    assert sorted(i["name"] for i in fake.identities.values()) == ["Ada", "Alan"]
    assert sum(len(f) for f in fake.faces.values()) == 3


def test_an_enroll_whose_answer_is_lost_is_not_repeated(tmp_path: Path) -> None:
    fake = FakeFacebank()
    fake.script = {"POST /v1/identities/{id}/faces": ["commit-drop", "ok", "commit-drop"]}
    items = _photos(tmp_path, ["Ada", "Ada", "Grace"])

    tally = _run(fake, items, tmp_path, concurrency=1)

    assert tally.totals()["ingested"] == 3
    assert sum(len(f) for f in fake.faces.values()) == 3, "each photo enrolled once"
    assert fake.calls.count("POST /v1/identities/{id}/faces") == 3, "lost answers were found, not resent"


def test_a_second_run_finds_every_photo_by_its_detection_fingerprint(tmp_path: Path) -> None:
    fake = FakeFacebank()
    items = _photos(tmp_path, ["Ada", "Ada", "Alan", "Alan", "Grace"])
    assert _run(fake, items, tmp_path).totals()["ingested"] == 5

    again = _run(fake, items + items[:1], tmp_path)

    assert again.totals() == {"ingested": 0, "skipped": 6, "rejected": 0, "error": 0}
    assert sum(len(f) for f in fake.faces.values()) == 5


def test_an_external_id_made_by_someone_else_meanwhile_is_used_not_duplicated(tmp_path: Path) -> None:
    fake = FakeFacebank()
    items = [IngestItem(i.path, "Ada", "emp-1") for i in _photos(tmp_path, ["x"])]
    original = fake._handle

    def someone_else_first(request: httpx.Request, method: str, path: str) -> httpx.Response:
        if method == "POST" and path == "/v1/identities" and not fake.identities:
            original(request, method, path)  # another client wins the race
        return original(request, method, path)

    fake._handle = someone_else_first  # type: ignore[method-assign]

    assert _run(fake, items, tmp_path).totals()["ingested"] == 1
    assert len(fake.identities) == 1


def test_the_run_stops_with_an_error_when_the_server_stays_down(tmp_path: Path) -> None:
    fake = FakeFacebank()
    fake.script = {"POST /v1/detect": ["503"] * 100}
    tally = Tally()

    with pytest.raises(RemoteError, match="server unavailable"):
        run_remote(
            _photos(tmp_path, ["Ada"] * 8),
            base_url="http://facebank.test",
            settings=Settings(data_dir=tmp_path, model_dir=tmp_path / "none"),
            options=RemoteOptions(gates=Gates(), backoff_s=0.001, attempts=3, concurrency=2),
            tally=tally,
            stop=StopFlag(),
            transport=httpx.MockTransport(fake),
        )
    assert tally.by_status[Status.ERROR] >= 1 and tally.processed < 8, "it stopped instead of trying all"


def test_the_api_key_is_sent_and_a_refusal_stops_the_run_with_a_hint(tmp_path: Path) -> None:
    fake = FakeFacebank()
    fake.api_key = "fbk_secret"
    items = _photos(tmp_path, ["Ada", "Alan"])

    with pytest.raises(RemoteError, match=r"refused.*401.*FACEBANK_API_KEY"):
        _run(fake, items, tmp_path)
    assert _run(fake, items, tmp_path, api_key="fbk_secret").totals()["ingested"] == 2

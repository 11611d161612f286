"""Micro-batched /v1/identify and /v1/detect against the direct path, with real models and LFW photos.

The gallery is enrolled once through an app without batching, which also answers every probe one request at a
time; an app over the same database with batching on then gets the probes all at once and must answer the
same. Batches of one request would prove nothing, so the batcher's own statistics are checked too.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.api.app import build_state
from service.api.batching import RecognitionBatcher, RecognitionRequest, RecognitionResult
from service.api.errors import APIError
from service.api.state import AppState
from service.config import Settings
from service.pipeline import FacePipeline, StageTimes
from service.pipeline.batching import ItemFailed
from service.pipeline.face_policy import FaceRefused
from service.schemas import DetectedFace
from tests._client import local_client
from tests.conftest import LFW

ENROLLED = ["Colin_Powell", "Tony_Blair", "Serena_Williams", "Junichiro_Koizumi", "Hugo_Chavez"]
MAX_FACES = 3
# Long enough that a batch starts only once it is full, so which requests share it is known.
FOREVER_S = 60.0


def _lfw(name: str, number: int) -> Image.Image:
    return Image.open(LFW / name / f"{name}_{number:04d}.jpg").convert("RGB")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _collage(count: int) -> Image.Image:
    """`count` central LFW crops side by side: `count` faces in one photo."""
    canvas = Image.new("RGB", (150 * count, 170), (255, 255, 255))
    for i, name in enumerate(ENROLLED[:count]):
        canvas.paste(_lfw(name, 1).crop((50, 40, 200, 210)), (150 * i, 0))
    return canvas


def _probes() -> dict[str, bytes]:
    """Other photos of the enrolled people, strangers, and photos of other sizes (other detector shapes)."""
    probes = {f"{name}_{n}": _png(_lfw(name, n)) for name in ENROLLED for n in (2, 3)}
    probes["stranger"] = _png(_lfw("Arnold_Schwarzenegger", 1))
    probes["bush"] = _png(_lfw("George_W_Bush", 1))
    probes["blair_wide"] = _png(_lfw("Tony_Blair", 4).resize((400, 300)))
    probes["powell_cropped"] = _png(_lfw("Colin_Powell", 4).crop((20, 0, 250, 220)))
    probes["two_faces"] = _png(_collage(2))
    return probes


@dataclass
class Gallery:
    settings: Settings
    probes: dict[str, bytes]
    direct: dict[str, dict[str, Any]]  # answers with batching off, one request at a time
    direct_detect: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def gallery(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Gallery:
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data_dir, model_dir=model_dir, max_faces=MAX_FACES, batch_max_wait_ms=0.0)
    probes = _probes()
    with local_client(create_app(settings)) as client:
        assert client.app.state.facebank.serving.batcher is None, "0 ms keeps the direct path"  # type: ignore[attr-defined]
        for name in ENROLLED:
            identity = client.post("/v1/identities", json={"name": name}).json()
            enrolled = client.post(
                f"/v1/identities/{identity['id']}/faces", files={"image": ("a.png", _png(_lfw(name, 1)))}
            )
            assert enrolled.status_code == 201, enrolled.text
        direct = {key: _ok(client.post("/v1/identify", files=_file(data))) for key, data in probes.items()}
        direct_detect = {
            key: _ok(client.post("/v1/detect", files=_file(data))) for key, data in probes.items()
        }
    for name in ENROLLED:  # answers that recognise nobody would make the comparison weak
        main = max(direct[f"{name}_2"]["faces"], key=_area)
        assert main["identity"]["name"] == name
    return Gallery(settings, probes, direct, direct_detect)


def _area(face: dict[str, Any]) -> float:
    x1, y1, x2, y2 = face["bbox"]
    return float((x2 - x1) * (y2 - y1))


def _file(data: bytes) -> dict[str, tuple[str, bytes]]:
    return {"image": ("probe.png", data)}


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _batching(gallery: Gallery, **overrides: Any) -> Settings:
    values = {"batch_max_wait_ms": 50.0, "batch_max_size": 8} | overrides
    return gallery.settings.model_copy(update=values)


@pytest.fixture(scope="module")
def batched(gallery: Gallery) -> Iterator[TestClient]:
    with local_client(create_app(_batching(gallery))) as client:
        yield client


def _all_at_once(send: Callable[[str], httpx.Response], keys: list[str]) -> dict[str, httpx.Response]:
    """`send(key)` for every key, released together from one thread each."""
    start = threading.Barrier(len(keys))

    def one(key: str) -> httpx.Response:
        start.wait()
        return send(key)

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))


def _assert_same_faces(direct: dict[str, Any], batched: dict[str, Any]) -> None:
    assert len(direct["faces"]) == len(batched["faces"])
    for one, many in zip(direct["faces"], batched["faces"], strict=True):
        np.testing.assert_allclose(one["bbox"], many["bbox"], atol=1e-3)
        np.testing.assert_allclose(one["landmarks"], many["landmarks"], atol=1e-3)
        # Embeddings of a batch differ from single ones by float32 rounding (~1e-6); scores are rounded
        # to 5 decimals, so one last-digit step either way is the most that may show.
        assert abs(one["det_score"] - many["det_score"]) <= 2e-5
        if "matches" not in one:
            continue
        assert [m["identity_id"] for m in one["matches"]] == [m["identity_id"] for m in many["matches"]]
        np.testing.assert_allclose(
            [m["score"] for m in one["matches"]], [m["score"] for m in many["matches"]], atol=2e-5
        )
        assert (one["identity"] or {}).get("id") == (many["identity"] or {}).get("id")


def test_concurrent_identify_requests_are_batched_and_answer_as_one_at_a_time(
    gallery: Gallery, batched: TestClient
) -> None:
    keys = list(gallery.probes)
    before = batched.app.state.facebank.serving.batcher.stats()  # type: ignore[attr-defined]
    responses = _all_at_once(lambda key: batched.post("/v1/identify", files=_file(gallery.probes[key])), keys)
    for key, response in responses.items():
        _assert_same_faces(gallery.direct[key], _ok(response))
        timing = response.headers["Server-Timing"]
        assert all(f"{stage};dur=" in timing for stage in ("decode", "queue", "detect", "embed", "search"))
    after = batched.app.state.facebank.serving.batcher.stats()  # type: ignore[attr-defined]
    assert after.items - before.items == len(keys)
    assert after.largest > 1, f"no batch of more than one request formed: {dict(after.sizes)}"


def test_concurrent_detect_requests_are_batched_and_answer_as_one_at_a_time(
    gallery: Gallery, batched: TestClient
) -> None:
    keys = list(gallery.probes)
    responses = _all_at_once(lambda key: batched.post("/v1/detect", files=_file(gallery.probes[key])), keys)
    for key, response in responses.items():
        _assert_same_faces(gallery.direct_detect[key], _ok(response))


def test_batch_size_and_queue_wait_are_exported_as_metrics(batched: TestClient) -> None:
    families = {f.name: f for f in text_string_to_metric_families(batched.get("/metrics").text)}
    sizes = {s.name: s for s in families["facebank_batch_size"].samples if "le" not in s.labels}
    assert sizes["facebank_batch_size_count"].value >= 1
    assert sizes["facebank_batch_size_sum"].value > sizes["facebank_batch_size_count"].value
    assert families["facebank_batch_queued"].samples[0].value == 0
    queue_waits = [s for s in families["facebank_stage_seconds"].samples if s.labels.get("stage") == "queue"]
    assert queue_waits, "the queue wait is a stage of facebank_stage_seconds"


def test_a_bad_photo_among_concurrent_requests_gets_its_4xx_and_the_others_their_answers(
    gallery: Gallery, batched: TestClient
) -> None:
    uploads = {
        "Tony_Blair_2": gallery.probes["Tony_Blair_2"],
        "garbage": b"\x89PNG\r\n\x1a\nnot really a picture",
        "four_faces": _png(_collage(4)),
        "blank": _png(Image.new("RGB", (250, 250), (90, 120, 160))),
        "Hugo_Chavez_3": gallery.probes["Hugo_Chavez_3"],
    }
    answers = _all_at_once(lambda key: batched.post("/v1/identify", files=_file(uploads[key])), list(uploads))
    assert answers["garbage"].status_code == 422
    assert answers["four_faces"].status_code == 422
    assert answers["four_faces"].json()["error"]["code"] == "too_many_faces"
    assert _ok(answers["blank"])["faces"] == []
    for key in ("Tony_Blair_2", "Hugo_Chavez_3"):
        _assert_same_faces(gallery.direct[key], _ok(answers[key]))


# --- the batcher itself, on the real pipeline and gallery, with batches whose members are known ----------


@pytest.fixture
def recognition(gallery: Gallery) -> Iterator[Callable[..., RecognitionBatcher]]:
    state = build_state(gallery.settings)
    made: list[RecognitionBatcher] = []

    def make(max_size: int = 3, max_wait_s: float = FOREVER_S) -> RecognitionBatcher:
        made.append(
            RecognitionBatcher(
                state.serving.pipeline,
                state.serving.gallery,
                max_faces=MAX_FACES,
                max_size=max_size,
                max_wait_s=max_wait_s,
            )
        )
        return made[-1]

    yield make
    for batcher in made:
        assert batcher.close(10.0)
    state.close()


def _submit_together(
    batcher: RecognitionBatcher, pictures: list[Image.Image], top_k: int | None = 3
) -> list[RecognitionResult | APIError | FaceRefused]:
    def one(picture: Image.Image) -> RecognitionResult | APIError | FaceRefused:
        try:
            return batcher.submit(RecognitionRequest(picture, top_k), StageTimes())
        except (APIError, FaceRefused) as error:
            return error

    with ThreadPoolExecutor(max_workers=len(pictures)) as pool:
        return list(pool.map(one, pictures))


def _best_name(result: RecognitionResult | APIError | FaceRefused) -> str:
    assert isinstance(result, RecognitionResult), result
    main = max(range(len(result.embedded)), key=lambda i: result.embedded[i].face.area)
    return result.matches[main][0].name


def test_too_many_faces_fails_only_that_request_of_its_batch(
    recognition: Callable[..., RecognitionBatcher],
) -> None:
    batcher = recognition(max_size=3)
    results = _submit_together(batcher, [_lfw("Tony_Blair", 5), _collage(4), _lfw("Serena_Williams", 4)])
    assert dict(batcher.stats().sizes) == {3: 1}
    assert _best_name(results[0]) == "Tony_Blair" and _best_name(results[2]) == "Serena_Williams"
    # The face policy's refusal; the error handler answers it with 422 (tests/api/test_hostile_input.py).
    assert isinstance(results[1], FaceRefused) and results[1].code == "too_many_faces"


def test_a_picture_that_crashes_the_detector_fails_alone_and_its_batch_mates_get_their_answers(
    recognition: Callable[..., RecognitionBatcher],
) -> None:
    batcher = recognition(max_size=3)
    # A grayscale picture never comes from the API (uploads are decoded to RGB): the detector chokes on it.
    crashing = [_lfw("Tony_Blair", 5), _lfw("Hugo_Chavez", 4).convert("L"), _lfw("Colin_Powell", 5)]
    results = _submit_together(batcher, crashing)
    assert isinstance(results[1], APIError)
    assert (results[1].status, results[1].code) == (500, "batch_failed")
    assert [_best_name(results[0]), _best_name(results[2])] == ["Tony_Blair", "Colin_Powell"]
    fine = _submit_together(batcher, [_lfw("Tony_Blair", 5), _lfw("Hugo_Chavez", 4), _lfw("Colin_Powell", 5)])
    assert [_best_name(r) for r in fine] == ["Tony_Blair", "Hugo_Chavez", "Colin_Powell"]
    stats = batcher.stats()
    assert (stats.batches, stats.failed_batches, stats.failed_alone) == (2, 1, 1)


class ChokesOnMarkedPictures(FacePipeline):
    """The real pipeline, except that aligning a marked picture's faces raises as degenerate landmarks do."""

    def align(
        self, image: Image.Image, faces: list[DetectedFace], times: StageTimes | None = None
    ) -> np.ndarray:
        if image.info.get("degenerate"):
            raise np.linalg.LinAlgError("Singular matrix")
        return super().align(image, faces, times)


def _direct(state: AppState, picture: Image.Image, k: int) -> RecognitionResult:
    """What the unbatched /v1/identify computes for one picture (service/api/routes/recognition.py)."""
    faces = state.serving.pipeline.embed_faces(picture, state.serving.pipeline.detect(picture))
    matches = state.serving.gallery.identify(np.stack([f.embedding for f in faces]), k) if faces else []
    return RecognitionResult(faces=[f.face for f in faces], embedded=faces, matches=matches)


def test_a_picture_the_aligner_chokes_on_fails_alone_and_the_rest_of_its_batch_answers_as_directly(
    gallery: Gallery,
) -> None:
    state = build_state(gallery.settings)
    real = state.serving.pipeline
    choking = ChokesOnMarkedPictures(real.detector, real.embedder, real.limits)
    batcher = RecognitionBatcher(
        choking, state.serving.gallery, max_faces=MAX_FACES, max_size=4, max_wait_s=FOREVER_S
    )
    marked = _lfw("Serena_Williams", 4)
    marked.info["degenerate"] = True
    pictures = [_lfw("Tony_Blair", 5), marked, _collage(2), _lfw("Arnold_Schwarzenegger", 1)]
    try:
        results = _submit_together(batcher, pictures, top_k=3)
        assert isinstance(results[1], APIError)
        assert (results[1].status, results[1].code) == (500, "batch_failed")
        assert isinstance(results[1].__cause__, ItemFailed)
        assert isinstance(results[1].__cause__.__cause__, np.linalg.LinAlgError)
        for row in (0, 2, 3):
            got, want = results[row], _direct(state, pictures[row], 3)
            assert isinstance(got, RecognitionResult), got
            assert len(got.embedded) == len(want.embedded) > 0
            for one, many in zip(want.embedded, got.embedded, strict=True):
                np.testing.assert_allclose(one.face.bbox, many.face.bbox, atol=1e-3)
                np.testing.assert_allclose(one.embedding, many.embedding, atol=1e-5)
            for one_row, many_row in zip(want.matches, got.matches, strict=True):
                assert [m.identity_id for m in one_row] == [m.identity_id for m in many_row]
                np.testing.assert_allclose([m.score for m in one_row], [m.score for m in many_row], atol=1e-5)
        assert _best_name(results[0]) == "Tony_Blair"
        stats = batcher.stats()
        assert (dict(stats.sizes), stats.failed_batches, stats.failed_alone) == ({4: 1}, 1, 1)
    finally:
        assert batcher.close(10.0)
        state.close()


def test_closing_runs_the_queued_requests_at_once_and_refuses_new_ones(
    recognition: Callable[..., RecognitionBatcher],
) -> None:
    batcher = recognition(max_size=3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = [
            pool.submit(batcher.submit, RecognitionRequest(_lfw(name, 6), 1), StageTimes())
            for name in ("Tony_Blair", "Colin_Powell")
        ]
        deadline = time.monotonic() + 10
        while batcher.queued() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        started = time.perf_counter()
        assert batcher.close(10.0) is True
        # Without the close these two would have waited FOREVER_S for a third request.
        assert time.perf_counter() - started < 10
        assert [_best_name(f.result(timeout=10)) for f in pending] == ["Tony_Blair", "Colin_Powell"]
    with pytest.raises(APIError) as refused:
        batcher.submit(RecognitionRequest(_lfw("Tony_Blair", 6), 1), StageTimes())
    assert (refused.value.status, refused.value.code) == (503, "shutting_down")


def test_app_state_close_closes_the_batcher_and_the_app_lifespan_leaves_no_thread_behind(
    gallery: Gallery,
) -> None:
    threads_before = set(threading.enumerate())
    settings = _batching(gallery)
    with local_client(create_app(settings)) as client:
        probe = gallery.probes["Serena_Williams_2"]
        answers = _all_at_once(lambda _: client.post("/v1/identify", files=_file(probe)), list("abcd"))
        for response in answers.values():
            _assert_same_faces(gallery.direct["Serena_Williams_2"], _ok(response))
    deadline = time.monotonic() + 15
    while set(threading.enumerate()) - threads_before:
        assert time.monotonic() < deadline, f"threads left: {set(threading.enumerate()) - threads_before}"
        time.sleep(0.05)
    state = build_state(settings)
    assert state.serving.batcher is not None
    state.close()
    with pytest.raises(APIError) as refused:
        state.serving.batcher.submit(RecognitionRequest(_lfw("Tony_Blair", 6), 1), StageTimes())
    assert refused.value.code == "shutting_down"

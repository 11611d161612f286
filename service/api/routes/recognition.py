"""/v1/identify, /v1/verify, /v1/detect: the `identify` scope."""

from __future__ import annotations

import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from PIL import Image

from service.api import schemas
from service.api.auth import Identify
from service.api.batching import RecognitionRequest, RecognitionResult
from service.api.convert import detection_out
from service.api.deps import DB, MinFaceSize, Served, State, Times, detect_faces, image_slot, read_image
from service.api.disclosure import identify_limits, reads_gallery
from service.api.errors import APIError, not_found
from service.api.state import AppState, Serving
from service.pipeline import StageTimes
from service.pipeline.face_policy import choose_face
from service.storage import repository as repo
from service.templates import identity_score

router = APIRouter(prefix="/v1", tags=["recognition"])

ERRORS = schemas.error_responses(*schemas.AUTH_ERRORS, *schemas.BODY_ERRORS, 404)


@router.post("/identify", response_model=schemas.IdentifyResponse, responses=ERRORS)
def identify(
    state: State,
    serving: Served,
    times: Times,
    caller: Identify,
    image: Annotated[UploadFile | None, File()] = None,
    k: int = Query(default=5, ge=1, le=100),
    threshold: float | None = Query(default=None, ge=-1.0, le=1.0),
    min_face_size: MinFaceSize = None,
) -> schemas.IdentifyResponse:
    """Faces in the photo and who they may be. A caller with only the `identify` scope gets matches at or
    above the server's threshold only, at most 5 per face (service/api/disclosure.py)."""
    k, floor = identify_limits(caller, k, threshold, serving.threshold)
    if serving.batcher is not None:
        found = _batched(state, serving, times, image, k, min_face_size)
        faces, ranked = found.embedded, found.matches
    else:
        with image_slot(state):
            picture, _data = read_image(image, state, times)
            detected = detect_faces(state, serving, picture, times, min_face_size=min_face_size)
            faces = serving.pipeline.embed_faces(picture, detected, times)
        with times.stage("search"):
            ranked = serving.gallery.identify(np.stack([f.embedding for f in faces]), k) if faces else []
    cutoff = serving.threshold if threshold is None else threshold
    if floor is not None:
        cutoff = floor
        ranked = [[m for m in matches if m.score >= floor] for matches in ranked]
    results = []
    for face, matches in zip(faces, ranked, strict=True):
        best = matches[0] if matches and matches[0].score >= cutoff else None
        results.append(
            schemas.IdentifiedFace(
                **detection_out(face.face).model_dump(),
                matches=[
                    schemas.MatchOut(identity_id=m.identity_id, name=m.name, score=round(m.score, 5))
                    for m in matches
                ],
                identity=schemas.IdentityGuess(
                    id=best.identity_id, name=best.name, score=round(best.score, 5)
                )
                if best
                else None,
            )
        )
    return schemas.IdentifyResponse(model=serving.embedder_tag, threshold=cutoff, faces=results)


def _batched(
    state: AppState,
    serving: Serving,
    times: StageTimes,
    image: UploadFile | None,
    top_k: int | None,
    min_face_size: float | None = None,
) -> RecognitionResult:
    """Decode the upload here, then wait for its turn in a micro-batch (identify when top_k is given)."""
    assert serving.batcher is not None
    with serving.batcher.admitted():
        with image_slot(state):
            picture, _data = read_image(image, state, times)
        return serving.batcher.submit(RecognitionRequest(picture, top_k, min_face_size), times)


def _largest_face_embedding(
    state: AppState, serving: Serving, picture: Image.Image, field: str, times: StageTimes
) -> np.ndarray:
    faces = serving.pipeline.detect(picture, times)
    chosen = choose_face(faces, "largest", limit=state.settings.max_faces, where=field)
    (embedded,) = serving.pipeline.embed_faces(picture, [chosen], times)
    return embedded.embedding


@router.post("/verify", response_model=schemas.VerifyResponse, responses=ERRORS)
def verify(
    state: State,
    serving: Served,
    times: Times,
    db: DB,
    caller: Identify,
    image: Annotated[UploadFile | None, File()] = None,
    image2: Annotated[UploadFile | None, File()] = None,
    identity_id: Annotated[uuid.UUID | None, Form()] = None,
) -> schemas.VerifyResponse:
    """Is it the same person? Against an enrolled identity, a caller with only the `identify` scope gets the
    score only when it is a match (service/api/disclosure.py)."""
    if (identity_id is None) == (image2 is None):
        raise APIError(422, "bad_request", "send either identity_id or image2 beside image")
    with image_slot(state):
        probe = _largest_face_embedding(state, serving, read_image(image, state, times)[0], "image", times)
        if image2 is not None:
            second = read_image(image2, state, times, "image2")[0]
            other = _largest_face_embedding(state, serving, second, "image2", times)
    if image2 is not None:
        score = float(probe @ other)
    else:
        assert identity_id is not None
        if repo.get_identity(db, identity_id=identity_id) is None:
            raise not_found("identity")
        enrolled = repo.embeddings_of_identities(
            db, identity_ids=[identity_id], model=serving.embedder_tag
        ).get(identity_id)
        if enrolled is None:
            raise APIError(
                422, "no_enrolled_faces", "the identity has no faces enrolled with the active model"
            )
        score = identity_score(probe, enrolled, state.settings.identity_score)
    match = score >= serving.threshold
    shown = match or image2 is not None or reads_gallery(caller)
    return schemas.VerifyResponse(
        score=round(score, 5) if shown else None, match=match, threshold=serving.threshold
    )


@router.post("/detect", response_model=schemas.DetectResponse, responses=ERRORS)
def detect(
    state: State,
    serving: Served,
    times: Times,
    _: Identify,
    image: Annotated[UploadFile | None, File()] = None,
    min_face_size: MinFaceSize = None,
) -> schemas.DetectResponse:
    if serving.batcher is not None:
        faces = _batched(state, serving, times, image, None, min_face_size).faces
    else:
        with image_slot(state):
            picture, _data = read_image(image, state, times)
            faces = detect_faces(state, serving, picture, times, min_face_size=min_face_size)
    return schemas.DetectResponse(faces=[detection_out(f) for f in faces])

"""Dependencies as Annotated aliases: app state, DB session, decoded upload."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Query, Request, UploadFile
from PIL import Image
from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.api.state import AppState, Serving
from service.pipeline import ImageDecodeError, StageTimes, decode_image
from service.pipeline.face_policy import check_face_limit
from service.schemas import DetectedFace


async def get_state(request: Request) -> AppState:
    # async: a sync dependency would take a worker thread, and /readyz must not wait for one.
    return request.app.state.facebank


State = Annotated[AppState, Depends(get_state)]


def get_session(state: State) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(get_session)]


def get_times(request: Request) -> StageTimes:
    """Per-request stage timings; the middleware turns them into Server-Timing and metrics."""
    times = StageTimes()
    request.state.times = times
    return times


Times = Annotated[StageTimes, Depends(get_times)]

# Per request: look for faces down to this size even in a large photo (a finer detection pass), drop smaller.
MinFaceSize = Annotated[
    int | None,
    Query(
        ge=1,
        le=4096,
        description="Smallest face side in photo pixels: faces this small are looked for (large photos get "
        "a finer detection pass, which costs time) and smaller ones are dropped. Default: the server's "
        "detect_find_down_to, without dropping.",
    ),
]


@contextmanager
def image_slot(state: AppState) -> Iterator[None]:
    """Hold one of the slots that bound concurrent decoding and inference (503 busy when none is near)."""
    with state.image_slots.held():
        yield


def read_image(
    upload: UploadFile | None, state: AppState, times: StageTimes, field: str = "image"
) -> tuple[Image.Image, bytes]:
    """Read an uploaded file within the size limit and decode it; returns the image and its bytes."""
    if upload is None:
        raise APIError(422, "missing_image", f"multipart field {field!r} is required")
    limit = state.settings.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, "payload_too_large", f"{field} is larger than {limit} bytes")
    try:
        with times.stage("decode"):
            return decode_image(data, max_pixels=state.settings.max_image_pixels), data
    except ImageDecodeError as exc:
        status = 413 if exc.code == "image_too_large" else 422
        raise APIError(status, exc.code, f"{field}: {exc.message}") from exc


def get_serving(state: State) -> Serving:
    """The embedder, index and threshold this request is served with, taken once."""
    return state.serving


Served = Annotated[Serving, Depends(get_serving)]


def detect_faces(
    state: AppState,
    serving: Serving,
    picture: Image.Image,
    times: StageTimes,
    field: str = "image",
    min_face_size: float | None = None,
) -> list[DetectedFace]:
    """Faces in the picture, refusing a photo with more than the configured maximum (422 too_many_faces)."""
    faces = serving.pipeline.detect(picture, times, min_face_size)
    check_face_limit(faces, state.settings.max_faces, field)
    return faces

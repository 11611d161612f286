"""/v1/identities and their faces."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile

from service.api import schemas
from service.api.convert import face_out, identity_out
from service.api.deps import DB, State, Times, read_image
from service.api.errors import APIError, not_found
from service.storage import repository as repo

router = APIRouter(prefix="/v1/identities", tags=["identities"])

ERRORS = {
    404: {"model": schemas.ErrorResponse},
    409: {"model": schemas.ErrorResponse},
    422: {"model": schemas.ErrorResponse},
}


def _conflict(exc: repo.Conflict) -> APIError:
    return APIError(409, "conflict", f"an identity with this {exc} already exists")


@router.post("", status_code=201, response_model=schemas.Identity, responses=ERRORS)
def create_identity(body: schemas.IdentityCreate, db: DB) -> schemas.Identity:
    try:
        identity = repo.create_identity(
            db, name=body.name, external_id=body.external_id, metadata=body.metadata
        )
        db.commit()
    except repo.Conflict as exc:
        db.rollback()
        raise _conflict(exc) from exc
    return identity_out(identity, 0)


@router.get("", response_model=schemas.IdentityPage, responses=ERRORS)
def list_identities(
    db: DB,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=512),
) -> schemas.IdentityPage:
    try:
        items, next_cursor = repo.list_identities(db, limit=limit, cursor=cursor)
    except repo.InvalidCursor as exc:
        raise APIError(422, "invalid_cursor", "cursor is not one this server issued") from exc
    counts = repo.face_counts(db, identity_ids=[i.id for i in items])
    return schemas.IdentityPage(
        items=[identity_out(i, counts.get(i.id, 0)) for i in items], next_cursor=next_cursor
    )


@router.get("/{identity_id}", response_model=schemas.IdentityDetail, responses=ERRORS)
def get_identity(identity_id: uuid.UUID, db: DB) -> schemas.IdentityDetail:
    identity = repo.get_identity(db, identity_id=identity_id)
    if identity is None:
        raise not_found("identity")
    faces = repo.list_faces(db, identity_id=identity_id)
    return schemas.IdentityDetail(
        **identity_out(identity, len(faces)).model_dump(), faces=[face_out(f) for f in faces]
    )


@router.patch("/{identity_id}", response_model=schemas.Identity, responses=ERRORS)
def update_identity(identity_id: uuid.UUID, body: schemas.IdentityUpdate, db: DB) -> schemas.Identity:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise APIError(422, "validation_error", "name cannot be null")
    try:
        identity = repo.update_identity(db, identity_id=identity_id, **changes)
        if identity is None:
            raise not_found("identity")
        db.commit()
    except repo.Conflict as exc:
        db.rollback()
        raise _conflict(exc) from exc
    counts = repo.face_counts(db, identity_ids=[identity_id])
    return identity_out(identity, counts.get(identity_id, 0))


@router.delete("/{identity_id}", status_code=204, responses=ERRORS)
def delete_identity(identity_id: uuid.UUID, db: DB, state: State) -> Response:
    keys = repo.delete_identity(db, identity_id=identity_id)
    if keys is None:
        raise not_found("identity")
    db.commit()
    state.gallery.removed(keys)
    return Response(status_code=204)


@router.post("/{identity_id}/faces", status_code=201, response_model=schemas.Face, responses=ERRORS)
def enroll_face(
    identity_id: uuid.UUID,
    db: DB,
    state: State,
    times: Times,
    image: Annotated[UploadFile | None, File()] = None,
    face_policy: Literal["largest", "single"] = Query(default="largest"),
) -> schemas.Face:
    if repo.get_identity(db, identity_id=identity_id) is None:
        raise not_found("identity")
    picture, data = read_image(image, state, times)
    faces = state.pipeline.detect(picture, times)
    if not faces:
        raise APIError(422, "no_face", "no face was found in the image")
    if face_policy == "single" and len(faces) > 1:
        raise APIError(
            422, "multiple_faces", f"{len(faces)} faces found; face_policy=single needs exactly one"
        )
    largest = max(faces, key=lambda f: f.area)
    (embedded,) = state.pipeline.embed_faces(picture, [largest], times)
    with times.stage("store"):
        face = repo.add_face(
            db,
            identity_id=identity_id,
            embedding=embedded.embedding,
            model=state.embedder_tag,
            bbox=[float(v) for v in largest.bbox],
            det_score=largest.score,
            landmarks=largest.landmarks.tolist(),
            image_sha256=hashlib.sha256(data).hexdigest(),
        )
    db.commit()
    state.gallery.added(face.key, identity_id, embedded.embedding)
    return face_out(face)


@router.delete("/{identity_id}/faces/{face_id}", status_code=204, responses=ERRORS)
def delete_face(identity_id: uuid.UUID, face_id: uuid.UUID, db: DB, state: State) -> Response:
    key = repo.delete_face(db, identity_id=identity_id, face_id=face_id)
    if key is None:
        raise not_found("face")
    db.commit()
    state.gallery.removed([key])
    return Response(status_code=204)

"""/v1/identities and their faces: the `enroll` scope, to read as to change; every change is audited."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from service import enrolment
from service.api import schemas
from service.api.auth import Enroll
from service.api.convert import face_out, identity_out
from service.api.deps import DB, Served, State, Times, image_slot, read_image
from service.api.errors import APIError, not_found
from service.pipeline.face_policy import FacePolicy, choose_face, parse_box
from service.security import Actions, record
from service.storage import repository as repo

router = APIRouter(prefix="/v1/identities", tags=["identities"])

READ_ERRORS = schemas.error_responses(*schemas.AUTH_ERRORS, 404, 422)
WRITE_ERRORS = schemas.error_responses(*schemas.AUTH_ERRORS, *schemas.BODY_ERRORS, 404, 409)


def _conflict(exc: repo.Conflict) -> APIError:
    return APIError(409, "conflict", f"an identity with this {exc} already exists")


@router.post("", status_code=201, response_model=schemas.Identity, responses=WRITE_ERRORS)
def create_identity(body: schemas.IdentityCreate, db: DB, caller: Enroll) -> schemas.Identity:
    try:
        identity = enrolment.create_identity(
            db, caller, name=body.name, external_id=body.external_id, metadata=body.metadata
        )
        db.commit()
    except repo.Conflict as exc:
        db.rollback()
        raise _conflict(exc) from exc
    return identity_out(identity, 0)


@router.get("", response_model=schemas.IdentityPage, responses=READ_ERRORS)
def list_identities(
    db: DB,
    _: Enroll,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=512),
    name: str | None = Query(
        default=None, max_length=256, pattern=r"^[^\x00]*$", description="only names containing this"
    ),
) -> schemas.IdentityPage:
    try:
        items, next_cursor = repo.list_identities(db, limit=limit, cursor=cursor, name_contains=name)
    except repo.InvalidCursor as exc:
        raise APIError(422, "invalid_cursor", "cursor is not one this server issued") from exc
    counts = repo.face_counts(db, identity_ids=[i.id for i in items])
    return schemas.IdentityPage(
        items=[identity_out(i, counts.get(i.id, 0)) for i in items], next_cursor=next_cursor
    )


@router.get("/{identity_id}", response_model=schemas.IdentityDetail, responses=READ_ERRORS)
def get_identity(identity_id: uuid.UUID, db: DB, _: Enroll) -> schemas.IdentityDetail:
    identity = repo.get_identity(db, identity_id=identity_id)
    if identity is None:
        raise not_found("identity")
    faces = repo.list_faces(db, identity_id=identity_id)
    return schemas.IdentityDetail(
        **identity_out(identity, len(faces)).model_dump(), faces=[face_out(f) for f in faces]
    )


@router.patch("/{identity_id}", response_model=schemas.Identity, responses=WRITE_ERRORS)
def update_identity(
    identity_id: uuid.UUID, body: schemas.IdentityUpdate, db: DB, caller: Enroll
) -> schemas.Identity:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise APIError(422, "validation_error", "name cannot be null")
    try:
        identity = repo.update_identity(db, identity_id=identity_id, **changes)
        if identity is None:
            raise not_found("identity")
        record(db, caller, Actions.IDENTITY_UPDATE, "identity", identity_id, {"fields": sorted(changes)})
        db.commit()
    except repo.Conflict as exc:
        db.rollback()
        raise _conflict(exc) from exc
    except StaleDataError as exc:  # deleted by another request between our read and our write
        db.rollback()
        raise not_found("identity") from exc
    counts = repo.face_counts(db, identity_ids=[identity_id])
    return identity_out(identity, counts.get(identity_id, 0))


@router.delete("/{identity_id}", status_code=204, responses=READ_ERRORS)
def delete_identity(identity_id: uuid.UUID, db: DB, state: State, caller: Enroll) -> Response:
    """Erase a person: their row, faces and embeddings in one transaction, then their index entries."""
    try:
        keys = repo.delete_identity(db, identity_id=identity_id)
        if keys is None:
            raise not_found("identity")
        record(db, caller, Actions.IDENTITY_DELETE, "identity", identity_id, {"faces": len(keys)})
        db.commit()
        # Read-your-writes: this process's index drops the person before the answer; others follow the log.
        state.follower.after_write()
    except StaleDataError as exc:  # another request deleted it first
        db.rollback()
        raise not_found("identity") from exc
    return Response(status_code=204)


@router.post("/{identity_id}/faces", status_code=201, response_model=schemas.Face, responses=WRITE_ERRORS)
def enroll_face(
    identity_id: uuid.UUID,
    db: DB,
    state: State,
    serving: Served,
    times: Times,
    caller: Enroll,
    image: Annotated[UploadFile | None, File()] = None,
    face_policy: Annotated[FacePolicy, Query()] = "largest",
    box: str | None = Query(default=None, max_length=200, description="face_policy=box: x1,y1,x2,y2"),
) -> schemas.Face:
    if box is not None and face_policy != "box":  # a box ignored would enrol some other face
        raise APIError(422, "bad_request", "box is used only with face_policy=box")
    wanted = parse_box(box) if face_policy == "box" else None  # refused before any work on the photo
    if repo.get_identity(db, identity_id=identity_id) is None:
        raise not_found("identity")
    # The read transaction must not stay open while the networks run (SQLite readers block checkpoints).
    db.rollback()
    with image_slot(state):
        picture, data = read_image(image, state, times)
        chosen = choose_face(
            serving.pipeline.detect(picture, times),
            face_policy,
            limit=state.settings.max_faces,
            box=wanted,
        )
        (embedded,) = serving.pipeline.embed_faces(picture, [chosen], times)
    try:
        with (
            times.stage("store"),
            enrolment.begin(db, model=serving.embedder_tag, actor=caller, follower=state.follower) as unit,
        ):
            face = unit.add_face(
                identity_id, chosen, embedded.embedding, image_sha256=hashlib.sha256(data).hexdigest()
            )
    except enrolment.EmbedderSwitched as exc:
        # After `facebank models use`, a server not yet restarted would store faces nobody searches.
        raise APIError(
            503,
            "embedder_switched",
            f"the active embedder is now {exc.active} but this server runs {exc.model}; restart it to enroll",
        ) from exc
    except IntegrityError as exc:  # the identity was deleted while its photo was being processed
        db.rollback()
        raise not_found("identity") from exc
    return face_out(face)


@router.delete("/{identity_id}/faces/{face_id}", status_code=204, responses=READ_ERRORS)
def delete_face(identity_id: uuid.UUID, face_id: uuid.UUID, db: DB, state: State, caller: Enroll) -> Response:
    try:
        key = repo.delete_face(db, identity_id=identity_id, face_id=face_id)
        if key is None:
            raise not_found("face")
        record(db, caller, Actions.FACE_DELETE, "face", face_id, {"identity_id": str(identity_id)})
        db.commit()
        state.follower.after_write()
    except StaleDataError as exc:  # deleted by another request (or with its identity) meanwhile
        db.rollback()
        raise not_found("face") from exc
    return Response(status_code=204)

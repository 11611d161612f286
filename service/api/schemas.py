"""Request and response bodies of the v1 REST API."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

# Identity metadata is a small JSON object: its compact encoding is capped, and so is its nesting.
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8


def _storable_text(value: str) -> str:
    """Refuse what a database cannot store faithfully: NUL (PostgreSQL text), lone surrogates (not UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _storable_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object of at most MAX_METADATA_BYTES and MAX_METADATA_DEPTH levels, finite numbers only."""
    if value is None:
        return None
    # Walked without recursion, so no input can exhaust the stack.
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"nests deeper than {MAX_METADATA_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    _storable_text(key)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _storable_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
    return value


Text = Annotated[str, AfterValidator(_storable_text)]
Metadata = Annotated[dict[str, Any] | None, AfterValidator(_storable_metadata)]
Name = Field(min_length=1, max_length=256)
ExternalId = Field(default=None, min_length=1, max_length=256)


class IdentityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Name
    external_id: Text | None = ExternalId
    metadata: Metadata = None


class IdentityUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Optional but never null: the document says so, and the route answers 422 to an explicit null.
    name: Annotated[Text, Field(min_length=1, max_length=256)] | SkipJsonSchema[None] = None
    external_id: Text | None = ExternalId
    metadata: Metadata = None


class Face(BaseModel):
    id: uuid.UUID
    identity_id: uuid.UUID
    bbox: list[float]
    det_score: float
    model: str
    # sha256 of the uploaded photo: lets a client (ingest --url) tell a photo it already enrolled.
    image_sha256: str
    created_at: datetime


class Identity(BaseModel):
    id: uuid.UUID
    name: str
    external_id: str | None
    metadata: dict[str, Any] | None
    face_count: int
    created_at: datetime


class IdentityDetail(Identity):
    faces: list[Face]


class IdentityPage(BaseModel):
    items: list[Identity]
    next_cursor: str | None


class DetectedFaceOut(BaseModel):
    bbox: list[float]
    det_score: float
    landmarks: list[list[float]]


class DetectResponse(BaseModel):
    faces: list[DetectedFaceOut]


class MatchOut(BaseModel):
    identity_id: uuid.UUID
    name: str
    score: float = Field(
        description="Cosine similarity of the face to the person: to the normalised mean of their enrolled "
        "faces (FACEBANK_IDENTITY_SCORE=mean, the default) or to their closest face (best)."
    )


class IdentityGuess(BaseModel):
    id: uuid.UUID
    name: str
    score: float


class IdentifiedFace(DetectedFaceOut):
    matches: list[MatchOut]
    identity: IdentityGuess | None


class IdentifyResponse(BaseModel):
    model: str
    # The score a face's best match needed to be named (the request's `threshold`, else the server's).
    threshold: float
    faces: list[IdentifiedFace]


class VerifyResponse(BaseModel):
    # None when the caller may not read identities and the photo is not a match (service/api/disclosure.py).
    score: float | None
    match: bool
    threshold: float


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status answers with an ErrorResponse body."""
    return {status: {"model": ErrorResponse} for status in sorted(statuses)}


# Every /v1 route may answer these: a Host the server does not answer (400), no or a bad key, a missing
# scope, too many wrong keys from the caller's address or a key over its rate (429), the database
# unreachable for the key.
AUTH_ERRORS = (400, 401, 403, 429, 503)
# Routes that read a body add: malformed body (400), too large (413), invalid (422).
BODY_ERRORS = (400, 413, 422)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=128)
    scopes: list[Literal["admin", "enroll", "identify"]] = Field(min_length=1, max_length=3)


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    # The secret itself: returned by the creating call only, never stored and never shown again.
    key: str


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_key_id: uuid.UUID | None
    action: str
    target_type: str
    target_id: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    # Pass as `before` for the next (older) page; null on the last page.
    next_before: int | None


class IndexReport(BaseModel):
    model: str
    sql_faces: int
    index_faces: int
    missing_from_index: int
    stale_in_index: int
    in_step: bool
    # Faces stored under other embedding models (invisible to search), per model.
    other_models: dict[str, int]
    # The change log position this index is at, and seconds since it was last in step with the log.
    log_position: int
    lag_s: float

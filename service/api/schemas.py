"""Request and response bodies of the v1 REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Name = Field(min_length=1, max_length=256)
ExternalId = Field(default=None, min_length=1, max_length=256)


class IdentityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Name
    external_id: str | None = ExternalId
    metadata: dict[str, Any] | None = None


class IdentityUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=256)
    external_id: str | None = ExternalId
    metadata: dict[str, Any] | None = None


class Face(BaseModel):
    id: uuid.UUID
    identity_id: uuid.UUID
    bbox: list[float]
    det_score: float
    model: str
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
    score: float


class IdentityGuess(BaseModel):
    id: uuid.UUID
    name: str
    score: float


class IdentifiedFace(DetectedFaceOut):
    matches: list[MatchOut]
    identity: IdentityGuess | None


class IdentifyResponse(BaseModel):
    model: str
    faces: list[IdentifiedFace]


class VerifyResponse(BaseModel):
    score: float
    match: bool
    threshold: float


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail

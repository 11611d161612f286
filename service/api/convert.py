"""Storage rows and pipeline values → API bodies."""

from __future__ import annotations

from service.api import schemas
from service.schemas import DetectedFace
from service.storage.tables import Face, Identity


def face_out(face: Face) -> schemas.Face:
    return schemas.Face(
        id=face.id,
        identity_id=face.identity_id,
        bbox=[float(v) for v in face.bbox],
        det_score=face.det_score,
        model=face.model,
        image_sha256=face.image_sha256,
        created_at=face.created_at,
    )


def identity_out(identity: Identity, face_count: int) -> schemas.Identity:
    return schemas.Identity(
        id=identity.id,
        name=identity.name,
        external_id=identity.external_id,
        metadata=identity.metadata_,
        face_count=face_count,
        created_at=identity.created_at,
    )


def detection_out(face: DetectedFace) -> schemas.DetectedFaceOut:
    return schemas.DetectedFaceOut(
        bbox=[round(float(v), 2) for v in face.bbox],
        det_score=round(face.score, 5),
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
    )

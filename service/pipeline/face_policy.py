"""Which face of a photo is used, and how many faces a photo may have: the one rule behind enrolment,
identify, verify, detect, ingest and the evaluation code.

A refusal is a :class:`FaceRefused`: its `code` is the API's error code (422) and ingest's reject reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from service.schemas import DetectedFace

# largest: the largest face of the photo; single: refuse a photo with more than one face.
FacePolicy = Literal["largest", "single"]

NO_FACE: Final = "no_face"
MULTIPLE_FACES: Final = "multiple_faces"
TOO_MANY_FACES: Final = "too_many_faces"


class FaceRefused(ValueError):
    """The photo cannot be used under the face policy; `code` says why, machine-readably."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_face_limit(faces: Sequence[DetectedFace], limit: int, where: str = "the image") -> None:
    """Refuse a photo with more than `limit` faces (FACEBANK_MAX_FACES): nothing of it is embedded."""
    if len(faces) > limit:
        raise FaceRefused(
            TOO_MANY_FACES, f"{where} has {len(faces)} faces, more than the limit of {limit} per photo"
        )


def largest_face(faces: Sequence[DetectedFace]) -> DetectedFace:
    """The face with the largest box; of equal areas, the higher detector score."""
    return max(faces, key=lambda face: (face.area, face.score))


def choose_face(
    faces: Sequence[DetectedFace], policy: FacePolicy, *, limit: int, where: str = "the image"
) -> DetectedFace:
    """The face to enrol or compare from a photo's detected faces, or :class:`FaceRefused`."""
    if not faces:
        raise FaceRefused(NO_FACE, f"no face was found in {where}")
    check_face_limit(faces, limit, where)
    if policy == "single" and len(faces) > 1:
        raise FaceRefused(
            MULTIPLE_FACES, f"{len(faces)} faces found in {where}; face_policy=single needs exactly one"
        )
    return largest_face(faces)

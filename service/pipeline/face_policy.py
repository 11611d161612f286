"""Which face of a photo is used, and how many faces a photo may have: the one rule behind enrolment,
identify, verify, detect, ingest and the evaluation code.

A refusal is a :class:`FaceRefused`: its `code` is the API's error code (422) and ingest's reject reason.

Boxes (face_policy=box) are x1, y1, x2, y2 in the pixel coordinates of the upright image (EXIF orientation
applied), as /v1/detect and /v1/identify return them, so a box from either answer selects that face again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

from service.schemas import DetectedFace

# largest: the largest face of the photo; single: refuse a photo with more than one face; box: the face a
# given box overlaps most.
FacePolicy = Literal["largest", "single", "box"]
Box = tuple[float, float, float, float]

NO_FACE: Final = "no_face"
MULTIPLE_FACES: Final = "multiple_faces"
TOO_MANY_FACES: Final = "too_many_faces"

# Below this intersection-over-union a box is not "on" a face: a detector's own box scores about 1, a
# hand-drawn box around a face well above 0.5; 0.3 still accepts a loose box without picking a neighbour.
MIN_IOU = 0.3
# A box is a tie when its second-best overlap is this close to its best: it does not say which face it
# means (e.g. a box drawn around two faces), and guessing would enrol the wrong person.
TIE_RATIO = 0.9


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
    faces: Sequence[DetectedFace],
    policy: FacePolicy,
    *,
    limit: int,
    where: str = "the image",
    box: Box | None = None,
) -> DetectedFace:
    """The face to enrol or compare from a photo's detected faces, or :class:`FaceRefused`."""
    if not faces:
        raise FaceRefused(NO_FACE, f"no face was found in {where}")
    check_face_limit(faces, limit, where)
    if policy == "single" and len(faces) > 1:
        raise FaceRefused(
            MULTIPLE_FACES, f"{len(faces)} faces found in {where}; face_policy=single needs exactly one"
        )
    if policy == "box":
        if box is None:
            raise FaceRefused("missing_box", "face_policy=box needs box=x1,y1,x2,y2")
        return face_for_box(faces, box)
    return largest_face(faces)


def parse_box(text: str | None) -> Box:
    """'x1,y1,x2,y2' → a box with x1 < x2 and y1 < y2, all finite."""
    if text is None or not text.strip():
        raise FaceRefused("missing_box", "face_policy=box needs box=x1,y1,x2,y2")
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise FaceRefused("invalid_box", f"box must be four numbers x1,y1,x2,y2, not {text[:100]!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise FaceRefused("invalid_box", "box must have x1 < x2 and y1 < y2")
    return x1, y1, x2, y2


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when they do not touch)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def face_for_box(faces: Sequence[DetectedFace], box: Box) -> DetectedFace:
    """The face `box` overlaps most; FaceRefused when it overlaps none enough, or two about equally."""
    if not faces:
        raise FaceRefused(NO_FACE, "no face was found in the image")
    ranked = sorted(((iou(face.bbox, box), i) for i, face in enumerate(faces)), reverse=True)
    best, index = ranked[0]
    if best < MIN_IOU:
        raise FaceRefused(
            "no_face_in_box",
            f"no detected face overlaps the box enough (best intersection-over-union {best:.2f}, "
            f"needs {MIN_IOU}); use a box from /v1/detect or /v1/identify",
        )
    if len(ranked) > 1 and ranked[1][0] >= TIE_RATIO * best:
        raise FaceRefused("ambiguous_box", "the box overlaps two faces about equally; draw it around one")
    return faces[index]

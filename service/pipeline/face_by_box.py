"""Which detected face a caller means by a box: the one it overlaps most (enrolment with face_policy=box).

Boxes are x1, y1, x2, y2 in the pixel coordinates of the upright image (EXIF orientation applied), as
/v1/detect and /v1/identify return them, so a box from either answer selects that face again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.schemas import DetectedFace

# Below this intersection-over-union a box is not "on" a face: a detector's own box scores about 1, a
# hand-drawn box around a face well above 0.5; 0.3 still accepts a loose box without picking a neighbour.
MIN_IOU = 0.3
# A box is a tie when its second-best overlap is this close to its best: it does not say which face it
# means (e.g. a box drawn around two faces), and guessing would enrol the wrong person.
TIE_RATIO = 0.9

Box = tuple[float, float, float, float]


class FaceChoiceError(ValueError):
    """The box cannot select a face; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_box(text: str | None) -> Box:
    """'x1,y1,x2,y2' → a box with x1 < x2 and y1 < y2, all finite."""
    if text is None or not text.strip():
        raise FaceChoiceError("missing_box", "face_policy=box needs box=x1,y1,x2,y2")
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise FaceChoiceError("invalid_box", f"box must be four numbers x1,y1,x2,y2, not {text[:100]!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise FaceChoiceError("invalid_box", "box must have x1 < x2 and y1 < y2")
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
    """The face `box` overlaps most; FaceChoiceError when it overlaps none enough, or two about equally."""
    if not faces:
        raise FaceChoiceError("no_face", "no face was found in the image")
    ranked = sorted(((iou(face.bbox, box), i) for i, face in enumerate(faces)), reverse=True)
    best, index = ranked[0]
    if best < MIN_IOU:
        raise FaceChoiceError(
            "no_face_in_box",
            f"no detected face overlaps the box enough (best intersection-over-union {best:.2f}, "
            f"needs {MIN_IOU}); use a box from /v1/detect or /v1/identify",
        )
    if len(ranked) > 1 and ranked[1][0] >= TIE_RATIO * best:
        raise FaceChoiceError("ambiguous_box", "the box overlaps two faces about equally; draw it around one")
    return faces[index]

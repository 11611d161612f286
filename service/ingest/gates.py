"""Quality gates: which detected face of a photo to enroll, or why none.

The same rules run in embedded and --url mode. The face is chosen by the service's face policy
(`service.pipeline.face_policy`, as the API's enroll endpoint chooses it); the gates then judge that face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:  # Why: `facebank --help` imports this module for the defaults; numpy loads on first use.
    import numpy as np

    from service.schemas import DetectedFace

MultiFacePolicy = Literal["largest", "skip"]

# Reject reasons, as they appear in the report (besides the face policy's codes).
FACE_TOO_SMALL: Final = "face_too_small"
LOW_SCORE: Final = "low_score"
BLURRY: Final = "blurry"

# ITU-R BT.601 luma, the usual grey for a Laplacian focus measure.
_LUMA: Final = (0.299, 0.587, 0.114)


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds; 0 turns a gate off.

    Defaults: faces under 32 px across align into mush; RetinaFace scores below 0.9 are mostly profiles,
    occlusions or false positives; a Laplacian variance under 20 on the 112×112 aligned crop is visibly
    blurred (on LFW the 1st percentile is about 30, the median about 135).
    """

    min_face_size: float = 32.0
    min_score: float = 0.9
    min_blur: float = 20.0
    multi_face: MultiFacePolicy = "largest"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a photo is rejected."""

    reason: str
    detail: str = ""


def pick_face(faces: list[DetectedFace], gates: Gates, *, max_faces: int) -> DetectedFace | Verdict:
    """The face to enroll, or the reason the photo is rejected (before alignment)."""
    from service.pipeline.face_policy import FaceRefused, choose_face

    try:
        face = choose_face(faces, "single" if gates.multi_face == "skip" else "largest", limit=max_faces)
    except FaceRefused as refused:
        return Verdict(refused.code, refused.message)
    side = min(face.width, face.height)
    if side < gates.min_face_size:
        return Verdict(FACE_TOO_SMALL, f"{side:.0f} px < {gates.min_face_size:g} px")
    if face.score < gates.min_score:
        return Verdict(LOW_SCORE, f"{face.score:.3f} < {gates.min_score:g}")
    return face


def laplacian_variance(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an (H, W, 3) uint8 RGB crop's grey levels; low is blurred."""
    import numpy as np

    grey = crop.astype(np.float32) @ np.asarray(_LUMA, dtype=np.float32)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(laplacian.var())


def check_blur(crop: np.ndarray, gates: Gates) -> Verdict | None:
    """A rejection when the aligned crop is too blurred, else None."""
    if gates.min_blur <= 0:
        return None
    sharpness = laplacian_variance(crop)
    if sharpness < gates.min_blur:
        return Verdict(BLURRY, f"Laplacian variance {sharpness:.1f} < {gates.min_blur:g}")
    return None

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from service.ingest.gates import (
    BLURRY,
    FACE_TOO_SMALL,
    LOW_SCORE,
    Gates,
    Verdict,
    check_blur,
    laplacian_variance,
    pick_face,
)
from service.pipeline.face_policy import MULTIPLE_FACES, NO_FACE, TOO_MANY_FACES
from service.schemas import DetectedFace

LIMIT = 64


def _face(x: float, y: float, side: float, score: float = 0.99) -> DetectedFace:
    return DetectedFace(bbox=(x, y, x + side, y + side), score=score, landmarks=np.zeros((5, 2), np.float32))


def _texture(seed: int = 0) -> np.ndarray:
    """A 112×112 crop with detail at every scale, like skin, hair and eyes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)


def _blurred(crop: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(radius)))


def test_the_largest_face_is_picked_and_passes_the_default_gates() -> None:
    small, large = _face(0, 0, 40), _face(100, 0, 90)

    assert pick_face([small, large], Gates(), max_faces=LIMIT) is large


@pytest.mark.parametrize(
    ("faces", "gates", "reason"),
    [
        ([], Gates(), NO_FACE),
        ([_face(0, 0, 90), _face(100, 0, 80)], Gates(multi_face="skip"), MULTIPLE_FACES),
        ([_face(0, 0, 31)], Gates(min_face_size=32), FACE_TOO_SMALL),
        ([_face(0, 0, 90, score=0.7)], Gates(min_score=0.9), LOW_SCORE),
        ([_face(100 * i, 0, 90) for i in range(LIMIT + 1)], Gates(), TOO_MANY_FACES),
    ],
)
def test_each_gate_rejects_with_its_reason(faces: list[DetectedFace], gates: Gates, reason: str) -> None:
    verdict = pick_face(faces, gates, max_faces=LIMIT)

    assert isinstance(verdict, Verdict) and verdict.reason == reason and verdict.detail


def test_gates_judge_the_largest_face_only_as_the_enroll_endpoint_picks_it() -> None:
    # The largest face is low-scored; a smaller confident one does not rescue the photo.
    verdict = pick_face(
        [_face(0, 0, 100, score=0.6), _face(200, 0, 50)], Gates(min_score=0.9), max_faces=LIMIT
    )

    assert isinstance(verdict, Verdict) and verdict.reason == LOW_SCORE


def test_zero_thresholds_turn_the_gates_off() -> None:
    off = Gates(min_face_size=0, min_score=0, min_blur=0)
    face = _face(0, 0, 5, score=0.51)

    assert pick_face([face], off, max_faces=LIMIT) is face
    assert check_blur(np.full((112, 112, 3), 128, np.uint8), off) is None


def test_laplacian_variance_falls_as_a_crop_is_blurred() -> None:
    crop = _texture()
    values = [laplacian_variance(crop)] + [
        laplacian_variance(_blurred(crop, r)) for r in (0.5, 1.0, 2.0, 4.0)
    ]

    assert values == sorted(values, reverse=True)
    assert laplacian_variance(np.full((112, 112, 3), 77, np.uint8)) == 0.0


def test_the_blur_gate_rejects_a_blurred_crop_and_keeps_the_sharp_one() -> None:
    crop = _texture()

    assert check_blur(crop, Gates(min_blur=20)) is None
    verdict = check_blur(_blurred(crop, 3.0), Gates(min_blur=20))
    assert verdict is not None and verdict.reason == BLURRY and "<" in verdict.detail

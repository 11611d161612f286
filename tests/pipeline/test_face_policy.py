"""The face policy: which face of a photo is used, and how many faces a photo may have."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.face_policy import (
    MULTIPLE_FACES,
    NO_FACE,
    TOO_MANY_FACES,
    FaceRefused,
    check_face_limit,
    choose_face,
    largest_face,
)
from service.schemas import DetectedFace


def _face(x: float, side: float, score: float = 0.99) -> DetectedFace:
    return DetectedFace(bbox=(x, 0.0, x + side, side), score=score, landmarks=np.zeros((5, 2), np.float32))


def test_the_largest_box_wins_whatever_the_order_or_scores() -> None:
    small, large = _face(0, 40, score=0.999), _face(100, 90, score=0.91)
    assert largest_face([small, large]) is large
    assert largest_face([large, small]) is large


def test_of_equal_boxes_the_higher_detector_score_wins_whatever_the_order() -> None:
    weaker, stronger = _face(0, 80, score=0.92), _face(100, 80, score=0.98)
    assert largest_face([weaker, stronger]) is stronger
    assert largest_face([stronger, weaker]) is stronger


@pytest.mark.parametrize("policy", ["largest", "single"])
def test_a_photo_without_faces_is_refused_with_no_face(policy: str) -> None:
    with pytest.raises(FaceRefused) as refused:
        choose_face([], policy, limit=4)  # type: ignore[arg-type]
    assert refused.value.code == NO_FACE


def test_single_refuses_two_faces_and_largest_takes_the_larger() -> None:
    faces = [_face(0, 50), _face(100, 70)]
    with pytest.raises(FaceRefused) as refused:
        choose_face(faces, "single", limit=4)
    assert refused.value.code == MULTIPLE_FACES
    assert choose_face(faces, "largest", limit=4) is faces[1]
    assert choose_face(faces[:1], "single", limit=4) is faces[0]


def test_the_limit_allows_exactly_limit_faces_and_refuses_one_more() -> None:
    faces = [_face(100 * i, 50) for i in range(4)]
    check_face_limit(faces, 4)
    assert choose_face(faces, "largest", limit=4) in faces
    with pytest.raises(FaceRefused) as refused:
        choose_face([*faces, _face(900, 50)], "largest", limit=4)
    assert refused.value.code == TOO_MANY_FACES and "5 faces" in refused.value.message

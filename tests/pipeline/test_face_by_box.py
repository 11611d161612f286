"""Choosing the face a box means: the highest overlap, refusals for no overlap, ties and malformed boxes."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.face_policy import MIN_IOU, FaceRefused, face_for_box, iou, parse_box
from service.schemas import DetectedFace


def _face(x1: float, y1: float, x2: float, y2: float) -> DetectedFace:
    return DetectedFace(bbox=(x1, y1, x2, y2), score=0.99, landmarks=np.zeros((5, 2), np.float32))


def test_the_face_overlapping_most_is_chosen_even_when_smaller() -> None:
    big, small = _face(0, 0, 200, 200), _face(250, 50, 330, 130)
    assert face_for_box([big, small], (245, 45, 335, 135)) is small
    assert face_for_box([big, small], (-20, -20, 190, 190)) is big, (
        "a box reaching off the image still counts"
    )


def test_a_box_on_no_face_is_refused() -> None:
    faces = [_face(0, 0, 100, 100)]
    with pytest.raises(FaceRefused) as nothing:
        face_for_box(faces, (500, 500, 600, 600))
    assert nothing.value.code == "no_face_in_box"
    with pytest.raises(FaceRefused) as off_image:
        face_for_box(faces, (-300, -300, -200, -200))
    assert off_image.value.code == "no_face_in_box"
    barely = (90, 90, 190, 190)  # touches the face, but nowhere near MIN_IOU
    assert iou(faces[0].bbox, barely) < MIN_IOU
    with pytest.raises(FaceRefused):
        face_for_box(faces, barely)


def test_a_box_overlapping_two_faces_about_equally_is_a_tie_not_a_guess() -> None:
    left, right = _face(0, 0, 100, 100), _face(60, 0, 160, 100)
    for box in [(30, 0, 130, 100), (29, 0, 129, 100), (0, 0, 161, 100)]:  # equal, nearly equal, around both
        with pytest.raises(FaceRefused) as tie:
            face_for_box([left, right], box)
        assert tie.value.code == "ambiguous_box"
    assert face_for_box([left, right], (25, 0, 125, 100)) is left  # overlaps 0.6 and 0.48
    assert face_for_box([right, left], (25, 0, 125, 100)) is left, "not the first listed"


def test_no_faces_at_all() -> None:
    with pytest.raises(FaceRefused) as none:
        face_for_box([], (0, 0, 10, 10))
    assert none.value.code == "no_face"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (None, "missing_box"),
        ("", "missing_box"),
        ("1,2,3", "invalid_box"),
        ("1,2,3,4,5", "invalid_box"),
        ("a,b,c,d", "invalid_box"),
        ("0,0,nan,10", "invalid_box"),
        ("0,0,inf,10", "invalid_box"),
        ("10,0,5,10", "invalid_box"),
        ("0,10,10,10", "invalid_box"),
    ],
)
def test_malformed_boxes(text: str | None, code: str) -> None:
    with pytest.raises(FaceRefused) as bad:
        parse_box(text)
    assert bad.value.code == code


def test_a_box_as_the_api_returns_it_parses() -> None:
    assert parse_box("12.5, 30,140.25 ,200") == (12.5, 30.0, 140.25, 200.0)

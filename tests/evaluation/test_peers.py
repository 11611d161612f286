"""The face_recognition peer: importable despite recent setuptools, same face choice as our pipeline."""

from __future__ import annotations

from models.evaluation.peers import _central, import_face_recognition
from tests._ci import skip_or_fail_in_ci


def test_the_most_central_box_wins_whatever_its_size() -> None:
    # (top, right, bottom, left), face_recognition's order
    big_corner, small_centre = (0, 120, 120, 0), (110, 140, 140, 110)
    assert _central([big_corner, small_centre], 250, 250) == small_centre


def test_face_recognition_imports_without_pkg_resources() -> None:
    try:
        module = import_face_recognition()
    except ModuleNotFoundError as exc:
        # CI installs it first (bench/install-peers.sh), so there its absence is a failure.
        skip_or_fail_in_ci(f"face_recognition is optional and not installed here ({exc})")
    assert hasattr(module, "face_encodings")

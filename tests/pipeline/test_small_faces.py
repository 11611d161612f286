"""Small faces in large group photos: the default looks for faces down to 32 px without a full-size pass.

The group photos are composed as in bench/group_photos.py: LFW face crops, each scaled so that the detector's
box on its source photo is N px wide, pasted on a grey canvas. The old default (the photo shrunk to 640 px)
finds few of them; docs/accuracy.md has the measured figures and costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.group_photos import FaceCrop, GroupPhoto, compose, face_crops, score
from service.config import Settings
from service.pipeline import FacePipeline
from service.pipeline.detect import FINE_PASS_MAX_SIDE, fine_pass_scale
from service.pipeline.factory import build_pipeline
from tests.conftest import LFW
from tests.pipeline._sessions import CountingSession


def test_the_fine_pass_runs_only_where_the_shrunk_photo_loses_the_wanted_faces() -> None:
    # 3200 px shrunk to 640 makes 32 px faces 6.4 px; at 20/32 they are 20 px, the network's smallest.
    assert fine_pass_scale((3200, 2000), 640, 32, 20) == pytest.approx(0.625)
    # Small enough photos never need it: 1024 * 0.625 = 640.
    assert fine_pass_scale((1024, 768), 640, 32, 20) == 0.0
    assert fine_pass_scale((640, 480), 640, 32, 20) == 0.0
    # Off, or faces big enough for the shrunk photo.
    assert fine_pass_scale((3200, 2000), 640, 0, 20) == 0.0
    assert fine_pass_scale((3200, 2000), 640, 200, 20) == 0.0
    # Never enlarges: faces below the network's smallest are searched at the photo's own size.
    assert fine_pass_scale((3200, 2000), 640, 8, 20) == 1.0
    # Never beyond FINE_PASS_MAX_SIDE, however small the faces asked for: a 40 MP photo stays bounded.
    assert fine_pass_scale((8000, 5000), 640, 1, 20) == pytest.approx(FINE_PASS_MAX_SIDE / 8000)


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> FacePipeline:
    return build_pipeline(Settings(model_dir=model_dir))[0]


@pytest.fixture(scope="module")
def crops(pipeline: FacePipeline) -> list[FaceCrop]:
    return face_crops(LFW, pipeline.detector, 48)


@pytest.fixture(scope="module")
def group_photo(crops: list[FaceCrop]) -> GroupPhoto:
    """48 faces 40 px wide on 3200x2000: 8 px once shrunk to 640, below anything the network finds."""
    return compose(crops, (3200, 2000), 40, np.random.default_rng(1))


def _boxes(faces: list) -> np.ndarray:
    return np.asarray([f.bbox for f in faces], np.float32).reshape(-1, 4)


def test_default_finds_the_small_faces_of_a_group_photo(
    pipeline: FacePipeline, group_photo: GroupPhoto
) -> None:
    assert pipeline.limits.find_down_to == 32
    found, false = score(group_photo.faces, _boxes(pipeline.detect(group_photo.image)))
    assert found >= 46, f"default found {found} of 48"
    # The photo shrunk to 640 px alone (the old default) is what misses them.
    shrunk, _ = score(group_photo.faces, _boxes(pipeline.detector.detect(group_photo.image, max_side=640)))
    assert shrunk <= 24, f"the shrunk photo alone found {shrunk} of 48: the test photo is not hard enough"
    assert false <= 5


def test_a_request_can_ask_for_larger_faces_only(pipeline: FacePipeline, group_photo: GroupPhoto) -> None:
    # 100 px: no finer pass (the shrunk photo shows such faces at 20 px) and no face under 100 px kept.
    assert pipeline.detect(group_photo.image, min_face_size=100) == []
    small = pipeline.detect(group_photo.image, min_face_size=24)
    assert len(small) >= 46 and min(min(f.width, f.height) for f in small) >= 24


def test_batched_requests_each_get_their_own_smallest_face(
    pipeline: FacePipeline, group_photo: GroupPhoto
) -> None:
    photo = group_photo.image
    batched = pipeline.detect_many([photo, photo, photo], min_face_sizes=[None, 100, 24])
    alone = [
        pipeline.detect(photo),
        pipeline.detect(photo, min_face_size=100),
        pipeline.detect(photo, min_face_size=24),
    ]
    for got, expected in zip(batched, alone, strict=True):
        assert len(got) == len(expected)
        np.testing.assert_allclose(_boxes(got), _boxes(expected), atol=1e-3)


def test_large_second_passes_are_split_across_calls(
    model_dir: Path, pipeline: FacePipeline, group_photo: GroupPhoto
) -> None:
    from service.pipeline import Detector

    models = build_pipeline(Settings(model_dir=model_dir))[1]
    recorder = CountingSession(models.detector_session)
    detector = Detector(recorder, models.detector_config)
    found = detector.detect_many([group_photo.image] * 3, find_down_to=32)
    # The three shrunk photos share one call; each 2000 x 1250 second pass (the pixels of ~6 inputs of
    # 640 x 640) gets its own.
    assert recorder.shapes == [(3, 3, 400, 640), (1, 3, 1250, 2000), (1, 3, 1250, 2000), (1, 3, 1250, 2000)]
    assert [len(faces) for faces in found] == [len(pipeline.detect(group_photo.image))] * 3

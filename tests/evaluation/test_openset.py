"""Open-set maths on hand-made embeddings: DIR, FPIR, the threshold at an FPIR, the splits and folds.

The gallery is the unit basis of R^3 (identities A, B, C), so each probe's scores are its own coordinates
and every expected figure below can be read off the rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.lfw import LfwImage
from models.evaluation.openset import (
    OpenSetScores,
    dir_at_fpir,
    open_set_point,
    open_set_scores,
    open_set_split,
    threshold_at_fpir,
)
from models.evaluation.run_openset import identity_folds, lfw_open_set_split, subsample_gallery

GALLERY = np.eye(3, dtype=np.float32)
GALLERY_IDS = ["A", "B", "C"]
NAN = [np.nan] * 3
PROBES = np.array(
    [
        [0.9, 0.1, 0.0],  # A, identified, top 0.9
        [0.7, 0.6, 0.0],  # B, but A scores best (0.7): above most thresholds, still not a hit
        [0.0, 0.2, 0.5],  # C, identified, top exactly 0.5
        NAN,  # A, no face: a miss at every threshold
        [0.0, 0.4, 0.4],  # C, tied with B for first place: counts for the probe
        [0.3, 0.2, 0.1],  # X, non-mated, top 0.3
        [0.1, 0.8, 0.0],  # Y, non-mated, top 0.8
        [0.55, 0.0, 0.0],  # Z, non-mated, top 0.55
        NAN,  # V, non-mated, no face: left out of FPIR
        [0.0, 0.0, 0.45],  # W, non-mated, top 0.45
    ],
    np.float32,
)
PROBE_IDS = ["A", "B", "C", "A", "C", "X", "Y", "Z", "V", "W"]


def _above(value: float) -> float:
    """The next float64 above ``value`` as the float32 embeddings hold it."""
    return float(np.nextafter(float(np.float32(value)), np.inf))


def _scores() -> OpenSetScores:
    return open_set_scores(PROBES, PROBE_IDS, GALLERY, GALLERY_IDS)


def test_scores_separate_mated_from_non_mated_and_mark_rank_one_hits() -> None:
    scores = _scores()
    np.testing.assert_allclose(scores.mated_top, [0.9, 0.7, 0.5, np.nan, 0.4], rtol=1e-6)
    assert scores.mated_hit.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(scores.non_mated_top, [0.3, 0.8, 0.55, np.nan, 0.45], rtol=1e-6)
    assert scores.non_mated_failed == 1


def test_dir_needs_rank_one_and_score_at_threshold_and_fpir_leaves_failures_out() -> None:
    point = open_set_point(_scores(), 0.5)
    # Hits: A (0.9) and C (exactly 0.5: >= counts). B is above 0.5 but ranked second; the tie scores 0.4.
    assert (point.hits, point.mated) == (2, 5)
    assert point.dir == pytest.approx(0.4)
    # Non-mated passing 0.5: Y (0.8) and Z (0.55), out of the four with a face.
    assert (point.false_alarms, point.non_mated) == (2, 4)
    assert point.fpir == pytest.approx(0.5)
    assert point.dir_standard_error == pytest.approx(np.sqrt(0.4 * 0.6 / 5))


def test_a_threshold_below_every_score_gives_rank_one_rate_and_full_fpir() -> None:
    point = open_set_point(_scores(), -1.0)
    assert point.dir == pytest.approx(3 / 5)  # the tie counts, the wrong first place and the failure don't
    assert point.fpir == 1.0


def test_threshold_at_fpir_lets_through_at_most_floor_fpir_n() -> None:
    top = _scores().non_mated_top  # scored: 0.8, 0.55, 0.45, 0.3 (n = 4)
    assert threshold_at_fpir(top, 0.25) == _above(0.55)  # 1 may pass: 0.8
    assert threshold_at_fpir(top, 0.24) == _above(0.8)  # none may pass
    assert threshold_at_fpir(top, 0.5) == _above(0.45)
    assert threshold_at_fpir(top, 0.99) == pytest.approx(0.3)  # 3 may pass: the lowest lets all 4 pass


def test_dir_at_fpir_on_the_scores_own_curve() -> None:
    point = dir_at_fpir(_scores(), 0.25)
    assert (point.false_alarms, point.non_mated, point.fpir) == (1, 4, 0.25)
    assert (point.hits, point.dir) == (1, 0.2)  # only A's 0.9 clears the threshold above 0.55
    point = dir_at_fpir(_scores(), 0.5)
    assert (point.hits, point.false_alarms) == (2, 2)  # A 0.9 and C 0.5 clear 0.45+; Y and Z pass


def test_a_gallery_photo_without_a_face_makes_its_people_unfindable_but_still_mated() -> None:
    gallery = GALLERY.copy()
    gallery[0] = np.nan
    scores = open_set_scores(PROBES, PROBE_IDS, gallery, GALLERY_IDS)
    # A's probes stay mated (A was enrolled) and miss; B's probe now ranks first with 0.6.
    assert scores.mated_hit.tolist() == [False, True, True, False, True]
    np.testing.assert_allclose(scores.mated_top, [0.1, 0.6, 0.5, np.nan, 0.4], rtol=1e-6)
    np.testing.assert_allclose(scores.non_mated_top, [0.2, 0.8, 0.0, np.nan, 0.45], rtol=1e-6)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="one gallery row per identity"):
        open_set_scores(PROBES, PROBE_IDS, GALLERY, ["A", "A", "C"])
    only_mated = open_set_scores(PROBES[:5], PROBE_IDS[:5], GALLERY, GALLERY_IDS)
    with pytest.raises(ValueError, match="no scored non-mated"):
        open_set_point(only_mated, 0.5)
    with pytest.raises(ValueError, match="rate must be in"):
        threshold_at_fpir(np.array([0.1]), 1.0)


def test_lfw_split_enrols_people_with_two_photos_and_uses_singletons_as_strangers() -> None:
    images = [LfwImage("Ann", 2), LfwImage("Ann", 1), LfwImage("Bob", 1), LfwImage("Cy", 3)]
    images += [LfwImage("Cy", 1), LfwImage("Cy", 2), LfwImage("Dee", 4)]
    split = lfw_open_set_split(images)
    assert split.gallery == (LfwImage("Ann", 1), LfwImage("Cy", 1))
    assert split.mated == (LfwImage("Ann", 2), LfwImage("Cy", 2), LfwImage("Cy", 3))
    assert split.non_mated == (LfwImage("Bob", 1), LfwImage("Dee", 4))
    small = lfw_open_set_split(images, limit=2)  # Ann's 2 photos; Bob's 1 then Dee's 1
    assert {i.name for i in small.gallery + small.mated} == {"Ann"}
    assert {i.name for i in small.non_mated} == {"Bob", "Dee"}


def test_generic_split_takes_the_first_item_of_each_enrolled_identity() -> None:
    split = open_set_split(["b1", "a1", "b2", "c1", "a2"], lambda s: s[0], lambda who: who != "c")
    assert (split.gallery, split.mated, split.non_mated) == (("b1", "a1"), ("b2", "a2"), ("c1",))


def test_identity_folds_are_disjoint_cover_everyone_and_follow_the_seed() -> None:
    identities = [f"id{i:03d}" for i in range(23)] * 2
    folds = identity_folds(identities, 5, seed=0)
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert set().union(*folds) == set(identities)
    assert sum(len(f) for f in folds) == 23
    assert folds == identity_folds(identities, 5, seed=0)
    assert folds != identity_folds(identities, 5, seed=1)
    with pytest.raises(ValueError, match="one identity per fold"):
        identity_folds(["a", "b"], 3, seed=0)


def test_subsampled_gallery_keeps_its_people_mated_probes_and_every_stranger() -> None:
    people = [f"P{i}" for i in range(10)]
    images = [LfwImage(name, n) for name in people for n in (1, 2, 3)] + [LfwImage("Solo", 1)]
    split = lfw_open_set_split(images)
    small = subsample_gallery(split, 4, seed=0)
    names = {image.name for image in small.gallery}
    assert len(names) == 4 and len(small.mated) == 8
    assert {image.name for image in small.mated} == names
    assert small.non_mated == split.non_mated
    assert small == subsample_gallery(split, 4, seed=0)

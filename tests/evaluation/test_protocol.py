"""Protocol maths on hand-made scores: 10-fold accuracy, TAR@FAR, top-k identification, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.protocol import (
    accuracy_at,
    best_threshold,
    calibrate_threshold,
    identification_ranks,
    identification_top_k,
    pair_scores,
    tar_at_far,
    ten_fold_accuracy,
    top_k_rates,
)


def _unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_best_threshold_separates_separable_scores_halfway() -> None:
    threshold, accuracy = best_threshold(np.array([0.1, 0.3, 0.7, 0.9]), np.array([0, 0, 1, 1], bool))
    assert threshold == pytest.approx(0.5)
    assert accuracy == 1.0


def test_best_threshold_counts_a_nan_score_as_wrong_without_moving_the_cut() -> None:
    scores = np.array([0.1, 0.3, np.nan, 0.7, 0.9])
    same = np.array([0, 0, 1, 1, 1], bool)
    threshold, accuracy = best_threshold(scores, same)
    assert threshold == pytest.approx(0.5)
    assert accuracy == pytest.approx(4 / 5)


def test_best_threshold_never_cuts_between_tied_scores() -> None:
    threshold, accuracy = best_threshold(np.array([0.5, 0.5, 0.5, 0.9]), np.array([1, 0, 0, 1], bool))
    assert not 0.5 - 1e-9 < threshold <= 0.5  # either below all 0.5s or above them
    assert accuracy == pytest.approx(3 / 4)


def test_accuracy_at_accepts_scores_at_the_threshold_and_rejects_nan() -> None:
    scores = np.array([0.5, 0.49, np.nan, np.nan])
    same = np.array([1, 0, 1, 0], bool)
    assert accuracy_at(scores, same, 0.5) == pytest.approx(0.5)


def test_ten_fold_accuracy_is_the_mean_of_per_fold_accuracies() -> None:
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(10), 100)
    same = np.tile(np.r_[np.ones(50, bool), np.zeros(50, bool)], 10)
    scores = np.where(same, rng.normal(0.6, 0.1, 1000), rng.normal(0.1, 0.1, 1000))
    result = ten_fold_accuracy(scores, same, folds)
    assert len(result.accuracies) == 10 and len(result.thresholds) == 10
    assert result.mean == pytest.approx(np.mean(result.accuracies))
    assert result.std == pytest.approx(np.std(result.accuracies))
    assert 0.95 < result.mean <= 1.0
    assert all(0.2 < t < 0.5 for t in result.thresholds)


def test_ten_fold_accuracy_picks_each_threshold_on_the_other_folds_only() -> None:
    # Fold 0 on its own would cut at 0.85 and score 100 %; folds 1 and 2 cut at 0.3, which fold 0 must use.
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.2, 0.5, 0.1])
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    folds = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    assert best_threshold(scores[:2], same[:2])[0] == pytest.approx(0.85)
    result = ten_fold_accuracy(scores, same, folds)
    assert result.thresholds[0] == pytest.approx(0.3)
    assert result.accuracies[0] == 0.5


def test_ten_fold_accuracy_counts_pairs_with_a_missing_face_as_wrong() -> None:
    scores = np.tile([0.9, 0.1], 10).astype(float)
    same = np.tile([True, False], 10)
    folds = np.repeat(np.arange(10), 2)
    scores[0] = np.nan
    result = ten_fold_accuracy(scores, same, folds)
    assert result.accuracies[0] == 0.5
    assert result.mean == pytest.approx(0.95)


def test_tar_at_far_lets_at_most_far_times_n_impostors_through() -> None:
    rng = np.random.default_rng(1)
    impostor = rng.uniform(-0.2, 0.5, 3000)
    genuine = rng.uniform(0.3, 1.0, 3000)
    scores = np.r_[genuine, impostor]
    same = np.r_[np.ones(3000, bool), np.zeros(3000, bool)]
    point = tar_at_far(scores, same, 1e-3)
    assert np.sum(impostor >= point.threshold) == 3
    assert point.far == pytest.approx(1e-3)
    assert point.tar == pytest.approx(np.mean(genuine >= point.threshold))
    assert sorted(impostor)[-4] < point.threshold <= sorted(impostor)[-3]


def test_tar_at_far_counts_a_genuine_pair_without_a_face_as_rejected() -> None:
    scores = np.array([0.9, np.nan, 0.2, 0.1, np.nan])
    same = np.array([1, 1, 0, 0, 0], bool)
    point = tar_at_far(scores, same, 0.0)
    assert point.tar == 0.5
    assert point.genuine == 2 and point.impostor == 2  # the impostor pair without a face says nothing


def test_identification_ranks_on_hand_made_embeddings() -> None:
    gallery = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    probes = _unit([[0.9, 0.1, 0], [0.6, 0.5, 0], [0.1, 0.1, 1]])
    ranks = identification_ranks(probes, ["a", "b", "c"], gallery, ["a", "b", "c"])
    assert ranks.tolist() == [0, 1, 0]
    assert identification_top_k(probes, ["a", "b", "c"], gallery, ["a", "b", "c"], ks=(1, 2)) == {
        1: pytest.approx(2 / 3),
        2: 1.0,
    }


def test_a_probe_or_gallery_image_without_a_face_is_a_miss_at_every_k() -> None:
    gallery = _unit([[1, 0], [0, 1]])
    gallery[1] = np.nan  # b's gallery photo had no face
    probes = _unit([[1, 0.1], [0, 1], [1, 0]])
    probes[2] = np.nan  # this probe had no face
    ranks = identification_ranks(probes, ["a", "b", "a"], gallery, ["a", "b"])
    assert ranks.tolist() == [0, 2, 2]
    assert top_k_rates(ranks, (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)}


def test_a_failed_gallery_row_never_outranks_the_true_identity() -> None:
    gallery = _unit([[1, 0], [0, 1]])
    gallery[0] = np.nan
    ranks = identification_ranks(_unit([[0.1, 1]]), ["b"], gallery, ["a", "b"])
    assert ranks.tolist() == [0]


def test_top_k_rates_on_given_ranks() -> None:
    assert top_k_rates(np.array([0, 4, 5, 9, 10]), (1, 5, 10)) == {1: 0.2, 5: 0.4, 10: 0.8}


def test_pair_scores_are_cosines_and_nan_for_failures() -> None:
    left = _unit([[1, 0], [1, 1]])
    right = _unit([[0, 1], [1, 1]])
    right[0] = np.nan
    scores = pair_scores(left, right)
    assert np.isnan(scores[0]) and scores[1] == pytest.approx(1.0)


def test_calibrate_threshold_uses_every_pair_and_meets_the_far() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 16))
    ids = np.repeat(np.arange(20), 10)
    vectors = centres[ids] + 0.3 * rng.normal(size=(200, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    point = calibrate_threshold(vectors, ids, far=1e-2)
    assert point.genuine == 20 * 45
    assert point.impostor == 200 * 199 // 2 - 20 * 45
    assert point.far <= 1e-2
    assert point.tar > 0.9


def test_calibrate_threshold_refuses_failed_faces() -> None:
    vectors = _unit([[1, 0], [0, 1]])
    vectors[0] = np.nan
    with pytest.raises(ValueError, match="found faces only"):
        calibrate_threshold(vectors, ["a", "b"], 1e-3)


def test_the_euclidean_metric_scores_minus_the_distance_and_ranks_by_it() -> None:
    left = np.array([[0.0, 0.0], [1.0, 1.0]])
    right = np.array([[3.0, 4.0], [1.0, 1.0]])
    assert pair_scores(left, right, "euclidean").tolist() == [-5.0, 0.0]
    gallery = np.array([[0.0, 0.0], [10.0, 0.0]])
    probes = np.array([[1.0, 0.0], [6.0, 0.0]])
    ranks = identification_ranks(probes, ["a", "a"], gallery, ["a", "b"], metric="euclidean")
    assert ranks.tolist() == [0, 1]

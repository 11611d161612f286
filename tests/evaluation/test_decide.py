"""The decision maths: identity-bootstrap spreads, paired comparisons, template rules, flip averaging."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.decide import (
    at_threshold,
    closed_set,
    enrolment,
    first_photos,
    fold_of,
    identity_scores,
    open_set,
    reranked_by_mean,
    with_flip,
)
from models.evaluation.paired import bootstrap_rate, mcnemar_exact, paired_comparison


def _unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def _separable_people(people: int, photos: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, unit embeddings): each person's photos close together, people far apart."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((people, 16))
    ids = np.repeat([f"p{i:02d}" for i in range(people)], photos)
    embeddings = np.repeat(centres, photos, axis=0) + 0.05 * rng.standard_normal((people * photos, 16))
    return ids, (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)


def test_mcnemar_is_symmetric_and_exact_on_small_counts() -> None:
    assert mcnemar_exact(3, 9) == mcnemar_exact(9, 3)
    assert mcnemar_exact(0, 0) == 1.0
    # 0 of 6 discordant probes favour A: 2 x 0.5^6
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_the_identity_bootstrap_is_wider_when_probes_cluster_by_person() -> None:
    # the same 50 % rate: people right or wrong on all their probes, or half right each
    clustered = np.repeat(np.arange(40) % 2 == 0, 10)
    mixed = np.tile([True, False], 200)
    groups = np.repeat(np.arange(40), 10)
    assert bootstrap_rate(clustered, groups).se > 2 * bootstrap_rate(mixed, groups).se


def test_a_paired_comparison_counts_discordant_probes_and_brackets_the_difference() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(100), 10)
    a = rng.random(1000) < 0.8
    b = a.copy()
    b[rng.choice(np.flatnonzero(~a), 50, replace=False)] = True  # B fixes 50 of A's errors
    result = paired_comparison(a, b, groups)
    assert (result.only_a, result.only_b) == (0, 50)
    assert result.difference == pytest.approx(0.05)
    assert result.low < 0.05 < result.high and result.low > 0
    assert result.mcnemar_p < 1e-10
    assert result.resolvable == pytest.approx(2.8 * result.se)
    with pytest.raises(ValueError, match="one correctness flag per probe"):
        paired_comparison(a, b[:-1], groups)


def test_enrolment_takes_three_photos_of_people_with_five_or_more_and_one_of_the_others() -> None:
    ids = np.array(["a"] * 6 + ["b"] * 4 + ["c"] * 5)
    assert first_photos(ids, 1).tolist() == [True] + [False] * 5 + [True] + [False] * 3 + [True] + [False] * 4
    enrolled = enrolment(ids, 3, 5)
    assert enrolled.tolist() == [True] * 3 + [False] * 3 + [True] + [False] * 3 + [True] * 3 + [False] * 2


def test_the_three_template_rules() -> None:
    # person 0 enrolled twice (two directions), person 1 once; the probe lies between person 0's faces
    enrolled = _unit([[1, 0, 0], [0, 1, 0], [0.8, 0.8, 0.2]])
    owners = np.array([0, 0, 1])
    probe = _unit([[1, 1, 0]])
    best = identity_scores(probe, enrolled, owners, 2, "best")
    mean = identity_scores(probe, enrolled, owners, 2, "mean")
    both = identity_scores(probe, enrolled, owners, 2, "both")
    assert best[0, 0] == pytest.approx(np.sqrt(0.5))  # its best single face
    assert mean[0, 0] == pytest.approx(1.0)  # the mean of (1,0,0) and (0,1,0) points at it
    assert best.argmax() == 1 and mean.argmax() == 0  # the rule decides who is found
    assert np.allclose(both, np.maximum(best, mean))
    # a person with no enrolled face never ranks first
    assert identity_scores(probe, enrolled, owners, 3, "mean")[0, 2] == -np.inf


def test_closed_and_open_set_scores_on_separable_people() -> None:
    people, photos = 20, 6
    ids, embeddings = _separable_people(people, photos, seed=0)
    enrolled = enrolment(ids, 3, 5)
    for rule in ("best", "mean", "both"):
        assert closed_set(embeddings, ids, enrolled, rule).spread.rate == 1.0
        scored, threshold = open_set(embeddings, ids, enrolled, rule)
        assert scored.spread.rate == 1.0 and threshold < 0.9
        assert len(scored.correct) == 4 * people * (photos - 3)  # each person is mated in 4 of 5 trials
    folds = fold_of(ids)
    assert all(len(set(folds[ids == name])) == 1 for name in set(ids))
    assert sorted(np.bincount(folds)) == [24] * 5


def test_reranking_a_best_face_shortlist_misses_a_person_only_the_mean_finds_when_too_short() -> None:
    # p0's two faces lie either side of its probes, p1's single face is nearer each probe than either
    rows = [[1, 0, 0], [0, 1, 0], [0.75, 0.75, 0.55], [0.7, 0.7, 0], [0.7, 0.7, 0.05], [0.7, 0.7, 0.1]]
    others = [[0, 0, 1], [0, -1, 0], [-1, 0, 0]]  # more people, for the five folds
    rows += [row for row in others for _ in range(2)]
    embeddings = _unit(rows)
    ids = np.array(["p0", "p0", "p1", "p0", "p0", "p0", "s1", "s1", "s2", "s2", "s3", "s3"])
    enrolled = np.zeros(len(ids), bool)
    enrolled[[0, 1, 2, 6, 8, 10]] = True
    differ_one, mated, _, strangers = reranked_by_mean(embeddings, ids, enrolled, 1)
    differ_all, *_ = reranked_by_mean(embeddings, ids, enrolled, 4)
    assert (differ_one, mated, strangers) == (3, int((~enrolled).sum()), len(ids))
    assert differ_all == 0


def test_at_a_fixed_threshold_a_stranger_counts_when_named_and_a_probe_when_found_first() -> None:
    people, photos = 20, 6
    ids, embeddings = _separable_people(people, photos, seed=1)
    enrolled = enrolment(ids, 3, 5)
    named, strangers, found, mated = at_threshold(embeddings, ids, enrolled, "mean", 0.9)
    assert (named, strangers, found, mated) == (0, people * photos, mated, 4 * people * (photos - 3))
    named, _, found, _ = at_threshold(embeddings, ids, enrolled, "mean", -1.0)
    assert named == strangers and found == mated  # below every score: everyone is named


def test_flip_averaging_normalises_the_sum() -> None:
    plain, mirrored = _unit([[1, 0]]), _unit([[0, 1]])
    assert np.allclose(with_flip(plain, mirrored), _unit([[1, 1]]))

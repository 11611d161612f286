"""Protocol maths on cosine scores: 10-fold verification, TAR at a FAR, top-k identification, threshold
calibration. numpy only; the pipeline that makes the scores lives in :mod:`models.evaluation.faces`.

Failures (an image where no face was found) arrive as NaN: a NaN embedding gives a NaN score, and every
function below says how it counts one. The rule is the same everywhere: a failure is never a success.

Usage::

    result = ten_fold_accuracy(scores, same, folds)   # scores (P,), same (P,) bool, folds (P,) int
    result.mean, result.std
    tar_at_far(scores, same, far=1e-3).tar
    identification_top_k(probes, probe_ids, gallery, gallery_ids, ks=(1, 5, 10))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean"]


@dataclass(frozen=True, slots=True)
class FoldResult:
    """Per-fold accuracy with the threshold chosen on the other folds."""

    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation over the folds (ddof 0, as insightface and most papers report)."""
        return float(np.std(self.accuracies))


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A cosine threshold with the rates it gives; a pair is accepted when ``score >= threshold``."""

    threshold: float
    tar: float  # accepted genuine pairs / all genuine pairs (failures count as rejected)
    far: float  # accepted impostor pairs / scored impostor pairs
    genuine: int
    impostor: int


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises accuracy of ``score >= t`` on these pairs, and that accuracy.

    NaN scores are wrong whatever the threshold, so they lower the accuracy but do not move the choice.
    Candidate thresholds lie halfway between consecutive distinct scores (and just outside both ends);
    among equally good ones the lowest is returned.

    Example:
        >>> best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]))
        (0.5, 1.0)
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise ValueError(f"scores and same must be 1-D of one length, got {scores.shape} and {same.shape}")
    if len(scores) == 0:
        raise ValueError("no pairs to choose a threshold on")
    valid = ~np.isnan(scores)
    s, y = scores[valid], same[valid]
    if len(s) == 0:
        return 0.0, 0.0
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # Cutting before sorted index i accepts s[i:]: correct = genuine at >= i + impostors below i.
    genuine_from = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])  # genuine count in s[i:], i = 0..n
    impostor_below = np.concatenate([[0], np.cumsum(~y)])  # impostor count in s[:i]
    correct = genuine_from + impostor_below
    # A cut is only real between distinct scores (or at either end).
    cuttable = np.concatenate([[True], s[1:] > s[:-1], [True]])
    correct = np.where(cuttable, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        threshold = s[0] - 1e-6
    elif i == len(s):
        threshold = s[-1] + 1e-6
    else:
        threshold = (s[i - 1] + s[i]) / 2
    return float(threshold), float(correct[i] / len(scores))


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right by ``score >= threshold``; NaN scores are wrong."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    with np.errstate(invalid="ignore"):
        accepted = scores >= threshold
    right = np.where(np.isnan(scores), False, accepted == same)
    return float(right.mean())


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> FoldResult:
    """LFW's protocol: for each fold, pick the threshold on the other folds, measure accuracy on it.

    Example:
        >>> scores = np.tile([0.9, 0.8, 0.2, 0.1], 2)
        >>> same = np.tile([True, True, False, False], 2)
        >>> ten_fold_accuracy(scores, same, np.repeat([0, 1], 4)).mean
        1.0
    """
    scores, same, folds = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(folds)
    labels = np.unique(folds)
    if len(labels) < 2:
        raise ValueError("the protocol needs at least two folds")
    accuracies, thresholds = [], []
    for fold in labels:
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], same[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(scores[test], same[test], threshold))
    return FoldResult(accuracies=tuple(accuracies), thresholds=tuple(thresholds))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> OperatingPoint:
    """True accept rate at the lowest threshold whose false accept rate is at most ``far``.

    The threshold sits just above the ``(⌊far·n⌋ + 1)``-th highest impostor score, so at most ``⌊far·n⌋`` of
    the ``n`` scored impostor pairs pass. Genuine pairs with a NaN score (no face) count in the denominator
    as rejected; impostor pairs with a NaN score are left out of ``n`` (the service would refuse them, which
    is right, but they say nothing about the threshold). With 3,000 LFW impostors and far = 1e-3 at most 3
    may pass, so the figure is coarse.

    Example:
        >>> point = tar_at_far(np.array([0.9, 0.6, 0.5, 0.1, 0.2]), np.array([1, 1, 0, 0, 0], bool), 0.0)
        >>> point.tar, point.far
        (1.0, 0.0)
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if not 0 <= far < 1:
        raise ValueError(f"far must be in [0, 1), got {far}")
    impostor = np.sort(scores[~same & ~np.isnan(scores)])[::-1]
    genuine = scores[same]
    if len(impostor) == 0 or len(genuine) == 0:
        raise ValueError("need at least one scored impostor pair and one genuine pair")
    threshold = threshold_at_false_rate(impostor, far)
    with np.errstate(invalid="ignore"):
        tar = float(np.sum(genuine >= threshold) / len(genuine))
        actual = float(np.sum(impostor >= threshold) / len(impostor))
    return OperatingPoint(
        threshold=threshold, tar=tar, far=actual, genuine=len(genuine), impostor=len(impostor)
    )


def threshold_at_false_rate(impostor: np.ndarray, rate: float) -> float:
    """The lowest threshold at which at most ``⌊rate·n⌋`` of the ``n`` impostor scores pass (``>=``).

    It sits just above the ``(⌊rate·n⌋ + 1)``-th highest score; when every score may pass, it is the lowest.
    Shared by TAR@FAR (impostor pairs) and open-set FPIR (non-mated probes' best scores).

    Example:
        >>> bool(threshold_at_false_rate(np.array([0.2, 0.9, 0.5]), 0.0) == np.nextafter(0.9, 1))
        True
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    scores = np.sort(np.asarray(impostor, np.float64))[::-1]
    if len(scores) == 0 or np.isnan(scores).any():
        raise ValueError("need at least one impostor score and no NaN")
    allowed = math.floor(rate * len(scores) + 1e-9)
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def identification_ranks(
    probes: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
    gallery: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    *,
    metric: Metric = "cosine",
    chunk: int = 2048,
) -> np.ndarray:
    """0-based rank of each probe's true identity among gallery entries (by :func:`pair_scores`' metric).

    Inputs are embedding rows (L2-normalised for ``"cosine"``); a row of NaN is a failure. A failed probe,
    or a probe whose identity has no (scored) gallery entry, gets rank ``len(gallery)``: a miss at every k.
    Failed gallery rows never rank. Ties are resolved in the probe's favour (only strictly better entries
    count).
    """
    probes, gallery = np.asarray(probes, np.float32), np.asarray(gallery, np.float32)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if len(probes) != len(probe_ids) or len(gallery) != len(gallery_ids):
        raise ValueError("each embedding needs one identity")
    gallery_ok = ~np.isnan(gallery).any(axis=1)
    gallery_clean = np.where(gallery_ok[:, None], gallery, 0.0)
    column = {identity: i for i, identity in enumerate(gallery_ids.tolist()) if gallery_ok[i]}
    ranks = np.full(len(probes), len(gallery), dtype=np.int64)
    for start in range(0, len(probes), chunk):
        block = probes[start : start + chunk]
        ids = probe_ids[start : start + chunk].tolist()
        ok = ~np.isnan(block).any(axis=1)
        scores = _similarity(np.where(ok[:, None], block, 0.0), gallery_clean, metric)
        scores[:, ~gallery_ok] = -np.inf
        for row, identity in enumerate(ids):
            col = column.get(identity)
            if not ok[row] or col is None:
                continue
            ranks[start + row] = int(np.sum(scores[row] > scores[row, col]))
    return ranks


def top_k_rates(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of probes whose true identity ranks within the first k, for each k.

    Example:
        >>> top_k_rates(np.array([0, 0, 3, 12]), ks=(1, 5, 10))
        {1: 0.5, 5: 0.75, 10: 0.75}
    """
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no probes")
    return {k: float(np.mean(ranks < k)) for k in ks}


def identification_top_k(
    probes: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
    gallery: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """Top-k identification rates (see :func:`identification_ranks` for how failures count)."""
    return top_k_rates(identification_ranks(probes, probe_ids, gallery, gallery_ids), ks)


def pair_scores(left: np.ndarray, right: np.ndarray, metric: Metric = "cosine") -> np.ndarray:
    """Row-wise similarity (higher = more alike); NaN where either row is a failure (NaN).

    ``"cosine"``: dot product of L2-normalised rows. ``"euclidean"``: minus the Euclidean distance, the
    metric face_recognition (dlib) is built for.
    """
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    if metric == "euclidean":
        return -np.linalg.norm(left - right, axis=1)
    return np.sum(left * right, axis=1)


def _similarity(probes: np.ndarray, gallery: np.ndarray, metric: Metric) -> np.ndarray:
    if metric == "euclidean":
        squared = (probes**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2 * probes @ gallery.T
        return -np.sqrt(np.maximum(squared, 0.0))
    return probes @ gallery.T


def calibrate_threshold(embeddings: np.ndarray, identities: Sequence[object], far: float) -> OperatingPoint:
    """The cosine threshold at ``far`` over every pair of the given faces (all genuine, all impostor pairs).

    ``embeddings`` are L2-normalised rows of faces that were found (no NaN); ``identities`` one label each.
    Uses every unordered pair, so ``n`` faces make ``n(n−1)/2`` pairs (4,300 faces ≈ 9 M pairs, < 1 s).
    """
    embeddings = np.asarray(embeddings, np.float32)
    ids = np.asarray(identities)
    if np.isnan(embeddings).any():
        raise ValueError("calibration takes found faces only (no NaN rows)")
    if len(embeddings) != len(ids):
        raise ValueError("each embedding needs one identity")
    rows, cols = np.triu_indices(len(embeddings), k=1)
    similarity = embeddings @ embeddings.T
    scores = similarity[rows, cols]
    same = ids[rows] == ids[cols]
    return tar_at_far(scores, same, far)


__all__ = [
    "FoldResult",
    "Metric",
    "OperatingPoint",
    "accuracy_at",
    "best_threshold",
    "calibrate_threshold",
    "identification_ranks",
    "identification_top_k",
    "pair_scores",
    "tar_at_far",
    "ten_fold_accuracy",
    "threshold_at_false_rate",
    "top_k_rates",
]

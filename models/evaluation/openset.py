"""Open-set identification maths: who is enrolled, and how often strangers are taken for them.

A *mated* probe's identity is in the gallery; a *non-mated* probe's is not. At a score threshold ``t``:

- **DIR** (detection and identification rate): the share of mated probes whose true identity is ranked first
  *and* whose best score is ``>= t``. Ties for first place count for the probe, as in
  :func:`models.evaluation.protocol.identification_ranks`.
- **FPIR** (false positive identification rate): the share of non-mated probes whose best gallery score is
  ``>= t`` — a stranger returned as someone known.

Failures (no face) arrive as NaN rows: a failed mated probe is a miss at every threshold (it stays in the
DIR denominator), a failed gallery photo leaves its identity unfindable, and a failed non-mated probe is left
out of the FPIR denominator (the service returns nothing for it, which is right, but it says nothing about
the threshold) and counted. numpy only.

Usage::

    scores = open_set_scores(probes, probe_ids, gallery, gallery_ids)
    t = threshold_at_fpir(scores.non_mated_top, 0.01)
    point = open_set_point(scores, t)        # point.dir, point.fpir
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from models.evaluation.protocol import threshold_at_false_rate

Item = TypeVar("Item")
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class OpenSetSplit(Generic[Item]):
    """Gallery: the first item of each enrolled identity; mated: their other items; non-mated: the rest."""

    gallery: tuple[Item, ...]
    mated: tuple[Item, ...]
    non_mated: tuple[Item, ...]


def open_set_split(
    items: Sequence[Item], identity: Callable[[Item], Key], enrolled: Callable[[Key], bool]
) -> OpenSetSplit[Item]:
    """Split ``items`` (in their given order) by whether their identity is ``enrolled``.

    Example:
        >>> split = open_set_split(["a1", "a2", "b1", "c1", "c2"], lambda s: s[0], lambda i: i != "b")
        >>> split.gallery, split.mated, split.non_mated
        (('a1', 'c1'), ('a2', 'c2'), ('b1',))
    """
    gallery: list[Item] = []
    mated: list[Item] = []
    non_mated: list[Item] = []
    seen: set[Key] = set()
    for item in items:
        who = identity(item)
        if not enrolled(who):
            non_mated.append(item)
        elif who in seen:
            mated.append(item)
        else:
            seen.add(who)
            gallery.append(item)
    return OpenSetSplit(gallery=tuple(gallery), mated=tuple(mated), non_mated=tuple(non_mated))


@dataclass(frozen=True, slots=True)
class OpenSetScores:
    """Per mated probe: its best gallery score and whether its own identity scored best; per non-mated
    probe: its best gallery score. NaN where the probe had no face (or the gallery none at all)."""

    mated_top: np.ndarray
    mated_hit: np.ndarray
    non_mated_top: np.ndarray

    @property
    def non_mated_scored(self) -> np.ndarray:
        return self.non_mated_top[~np.isnan(self.non_mated_top)]

    @property
    def non_mated_failed(self) -> int:
        return int(np.sum(np.isnan(self.non_mated_top)))


def open_set_scores(
    probes: np.ndarray,
    probe_ids: Sequence[Hashable] | np.ndarray,
    gallery: np.ndarray,
    gallery_ids: Sequence[Hashable] | np.ndarray,
    *,
    chunk: int = 2048,
) -> OpenSetScores:
    """Best cosine score of each probe over the gallery (L2-normalised rows, one row per gallery identity).

    A probe is mated when its identity is one of ``gallery_ids`` (even if that gallery photo had no face:
    the person was enrolled, the service just cannot find them — a miss).
    """
    probes, gallery = np.asarray(probes, np.float32), np.asarray(gallery, np.float32)
    probe_ids, gallery_ids = list(probe_ids), list(gallery_ids)
    if len(probes) != len(probe_ids) or len(gallery) != len(gallery_ids):
        raise ValueError("each embedding needs one identity")
    if len(set(gallery_ids)) != len(gallery_ids):
        raise ValueError("one gallery row per identity")
    column = {identity: i for i, identity in enumerate(gallery_ids)}
    gallery_ok = ~np.isnan(gallery).any(axis=1)
    gallery_clean = np.where(gallery_ok[:, None], gallery, 0.0)
    top = np.full(len(probes), np.nan)
    hit = np.zeros(len(probes), bool)
    for start in range(0, len(probes), chunk):
        block = probes[start : start + chunk]
        ok = ~np.isnan(block).any(axis=1)
        scores = np.where(ok[:, None], block, 0.0) @ gallery_clean.T
        scores[:, ~gallery_ok] = -np.inf
        if not gallery_ok.any():
            continue
        best = scores.max(axis=1)
        for row in np.flatnonzero(ok):
            top[start + row] = best[row]
            col = column.get(probe_ids[start + row])
            hit[start + row] = col is not None and gallery_ok[col] and scores[row, col] >= best[row]
    mated = np.array([identity in column for identity in probe_ids], bool)
    return OpenSetScores(mated_top=top[mated], mated_hit=hit[mated], non_mated_top=top[~mated])


def threshold_at_fpir(non_mated_top: np.ndarray, fpir: float) -> float:
    """The lowest threshold at which at most ``⌊fpir·n⌋`` of the ``n`` scored non-mated probes pass.

    Example:
        >>> bool(threshold_at_fpir(np.array([0.1, 0.5, 0.3, 0.2]), 0.25) == np.nextafter(0.3, 1))
        True
    """
    scored = np.asarray(non_mated_top, np.float64)
    return threshold_at_false_rate(scored[~np.isnan(scored)], fpir)


@dataclass(frozen=True, slots=True)
class OpenSetPoint:
    """DIR and FPIR at one threshold, with the counts they rest on."""

    threshold: float
    dir: float
    fpir: float
    hits: int  # mated probes identified at rank 1 with a score >= threshold
    mated: int  # every mated probe, failures included
    false_alarms: int  # non-mated probes with a best score >= threshold
    non_mated: int  # scored non-mated probes (failures left out)

    @property
    def dir_standard_error(self) -> float:
        """Binomial standard error of ``dir`` over the mated probes."""
        return math.sqrt(self.dir * (1 - self.dir) / self.mated) if self.mated else math.nan


def open_set_point(scores: OpenSetScores, threshold: float) -> OpenSetPoint:
    """DIR and FPIR of ``best score >= threshold``.

    Example:
        >>> s = OpenSetScores(np.array([0.9, 0.6, 0.8]), np.array([True, True, False]), np.array([0.7, 0.2]))
        >>> p = open_set_point(s, 0.65)
        >>> (p.hits, p.mated, p.false_alarms, p.non_mated)
        (1, 3, 1, 2)
    """
    if len(scores.mated_top) == 0:
        raise ValueError("no mated probes")
    non_mated = scores.non_mated_scored
    if len(non_mated) == 0:
        raise ValueError("no scored non-mated probes")
    with np.errstate(invalid="ignore"):
        hits = int(np.sum(scores.mated_hit & (scores.mated_top >= threshold)))
    alarms = int(np.sum(non_mated >= threshold))
    return OpenSetPoint(
        threshold=float(threshold),
        dir=hits / len(scores.mated_top),
        fpir=alarms / len(non_mated),
        hits=hits,
        mated=len(scores.mated_top),
        false_alarms=alarms,
        non_mated=len(non_mated),
    )


def dir_at_fpir(scores: OpenSetScores, fpir: float) -> OpenSetPoint:
    """The point on these scores' own curve: threshold chosen on their non-mated probes (no held-out data)."""
    return open_set_point(scores, threshold_at_fpir(scores.non_mated_top, fpir))


__all__ = [
    "OpenSetPoint",
    "OpenSetScores",
    "OpenSetSplit",
    "dir_at_fpir",
    "open_set_point",
    "open_set_scores",
    "open_set_split",
    "threshold_at_fpir",
]

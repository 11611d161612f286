"""``facebank eval openset``: open-set identification on LFW with thresholds chosen on CelebA.

- **LFW** (test only): gallery = the first photo of each person with at least two; mated probes = their
  other photos; non-mated probes = every photo of the people with a single photo. Faces: the most central,
  as ``eval lfw`` picks them.
- **CelebA** (a folder-per-identity set disjoint from LFW, e.g. ``celeba-train``): identities are dealt
  into ``folds`` disjoint folds (seeded); trial *i* enrols the first photo of every identity outside fold
  *i* (the rest of their photos are mated probes) and uses every photo of fold *i* as non-mated. Faces:
  the largest, as enrolment and ``eval calibrate`` pick them. Pooled over the trials each CelebA photo is a
  non-mated probe exactly once; the threshold at each FPIR target is chosen on that pool and applied to
  LFW unchanged. Per trial the report gives the trial's own DIR-at-FPIR curve (mean ± spread over the
  folds) and the threshold chosen on the *other* trials applied to it (how well a CelebA threshold holds
  its FPIR on unseen people).
- FPIR at a fixed threshold grows with the number of people enrolled, so the CelebA thresholds are also
  applied to LFW galleries of CelebA's size (random draws); and the manifest threshold the service matches
  with today is measured on both sets.

Embeddings come from :func:`models.evaluation.run.embed_paths` (the service's pipeline and its cache).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.folders import (
    DEFAULT_CELEBA,
    DEFAULT_LFW,
    LabelledImage,
    inside_lfw,
    list_identity_folders,
)
from models.evaluation.lfw import LfwImage, list_images
from models.evaluation.openset import (
    OpenSetPoint,
    OpenSetScores,
    OpenSetSplit,
    dir_at_fpir,
    open_set_point,
    open_set_scores,
    open_set_split,
    threshold_at_fpir,
)
from models.evaluation.run import Progress, embed_paths
from service.config import Settings
from service.runtime.manifest import load_manifest

FPIR_TARGETS = (0.01, 0.001)
SMALL_GALLERY_DRAWS = 5


def lfw_open_set_split(images: Sequence[LfwImage], limit: int | None = None) -> OpenSetSplit[LfwImage]:
    """LFW's open-set split; ``limit`` keeps the first people (by name) of each kind up to ~limit photos.

    Example:
        >>> images = [LfwImage("A", 1), LfwImage("A", 2), LfwImage("B", 1), LfwImage("C", 1)]
        >>> split = lfw_open_set_split(images)
        >>> [i.name for i in split.gallery], [i.name for i in split.mated], [i.name for i in split.non_mated]
        (['A'], ['A'], ['B', 'C'])
    """
    images = sorted(images)
    photos = Counter(image.name for image in images)
    if limit is not None:
        kept: set[str] = set()
        for enrolled in (True, False):
            total = 0
            for name in sorted(photos):
                if (photos[name] >= 2) is enrolled and total < limit:
                    kept.add(name)
                    total += photos[name]
        images = [image for image in images if image.name in kept]
    return open_set_split(images, lambda image: image.name, lambda name: photos[name] >= 2)


def identity_folds(identities: Sequence[str], folds: int, seed: int) -> list[frozenset[str]]:
    """Deal the identities (sorted, then shuffled with ``seed``) into ``folds`` disjoint folds."""
    unique = sorted(set(identities))
    if folds < 2 or len(unique) < folds:
        raise ValueError(f"need at least 2 folds and one identity per fold: {len(unique)} for {folds}")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [frozenset(unique[j] for j in order[i::folds]) for i in range(folds)]


def limit_identities(items: Sequence[LabelledImage], limit: int, minimum: int) -> list[LabelledImage]:
    """The first identities (by name) until at least ``limit`` photos and ``minimum`` identities."""
    photos = Counter(item.identity for item in items)
    kept: set[str] = set()
    total = 0
    for identity in sorted(photos):
        if total >= limit and len(kept) >= minimum:
            break
        kept.add(identity)
        total += photos[identity]
    return [item for item in items if item.identity in kept]


def subsample_gallery(split: OpenSetSplit[LfwImage], size: int, seed: int) -> OpenSetSplit[LfwImage]:
    """``size`` enrolled people drawn at random, with their mated probes; the non-mated stay the same.

    FPIR at a fixed threshold grows with the gallery (a stranger meets more people to resemble), so a
    threshold chosen on CelebA's smaller gallery is checked on LFW galleries of the same size too.
    """
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(len(split.gallery), min(size, len(split.gallery)), replace=False).tolist())
    gallery = tuple(image for i, image in enumerate(split.gallery) if i in keep)
    names = {image.name for image in gallery}
    mated = tuple(image for image in split.mated if image.name in names)
    return OpenSetSplit(gallery=gallery, mated=mated, non_mated=split.non_mated)


def _identity(item: LabelledImage) -> str:
    return item.identity


def _outside(fold: frozenset[str]) -> Callable[[str], bool]:
    """Enrolled = not in the held-out fold."""
    return lambda identity: identity not in fold


def _scores(
    embeddings: np.ndarray, identities: Sequence[str], row: dict[Any, int], split: OpenSetSplit[Any]
) -> OpenSetScores:
    gallery = [row[item] for item in split.gallery]
    probes = [row[item] for item in split.mated + split.non_mated]
    return open_set_scores(
        embeddings[probes],
        [identities[i] for i in probes],
        embeddings[gallery],
        [identities[i] for i in gallery],
    )


def _point_json(point: OpenSetPoint) -> dict[str, Any]:
    return {
        "threshold": round(point.threshold, 6),
        "dir": round(point.dir, 6),
        "dir_standard_error": round(point.dir_standard_error, 6),
        "fpir": round(point.fpir, 6),
        "hits": point.hits,
        "mated": point.mated,
        "false_alarms": point.false_alarms,
        "non_mated": point.non_mated,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {
        "mean": round(float(array.mean()), 6),
        "std": round(float(array.std()), 6),  # population std over the folds, as the LFW folds report
        "min": round(float(array.min()), 6),
        "max": round(float(array.max()), 6),
    }


@dataclass(frozen=True)
class FoldTrial:
    """One CelebA trial: its sizes, its own curve, and the other trials' threshold applied to it."""

    identities_enrolled: int
    identities_non_mated: int
    own: dict[float, OpenSetPoint]
    held_out: dict[float, OpenSetPoint]


@dataclass(frozen=True)
class OpenSetReport:
    """Open-set figures of one model; fractions in [0, 1]."""

    model: str
    detector: str
    fpir_targets: tuple[float, ...]
    celeba_dataset: str
    celeba_thresholds: dict[float, OpenSetPoint]  # pooled CelebA trials, threshold chosen there
    celeba_trials: tuple[FoldTrial, ...]
    celeba_images: int
    celeba_identities: int
    celeba_no_face: int
    lfw_at_celeba_threshold: dict[float, OpenSetPoint]
    lfw_own_curve: dict[float, OpenSetPoint]
    lfw_small_gallery: dict[float, tuple[OpenSetPoint, ...]]  # CelebA thresholds, CelebA-sized galleries
    lfw_gallery: int
    small_gallery_size: int
    manifest_threshold: float  # what the service matches at today
    lfw_at_manifest_threshold: OpenSetPoint
    celeba_at_manifest_threshold: OpenSetPoint
    lfw_no_face: int
    lfw_rank1: float
    seconds: float
    folds: int
    seed: int
    limit: int | None = None

    def as_json(self) -> dict[str, Any]:
        def points(table: dict[float, OpenSetPoint]) -> dict[str, Any]:
            return {f"{fpir:g}": _point_json(point) for fpir, point in table.items()}

        lfw_main = self.lfw_at_celeba_threshold
        return {
            "model": self.model,
            "detector": self.detector,
            "lfw_dir_at_fpir_1e-2": round(lfw_main[0.01].dir, 6) if 0.01 in lfw_main else None,
            "lfw_dir_at_fpir_1e-3": round(lfw_main[0.001].dir, 6) if 0.001 in lfw_main else None,
            "lfw": {
                "gallery": self.lfw_gallery,
                "no_face": self.lfw_no_face,
                "rank1_of_mated": round(self.lfw_rank1, 6),
                "at_celeba_threshold": points(lfw_main),
                "own_curve_not_deployable": points(self.lfw_own_curve),
                "at_manifest_threshold": _point_json(self.lfw_at_manifest_threshold),
                "at_celeba_threshold_celeba_sized_gallery": {
                    f"{f:g}": {
                        "gallery": self.small_gallery_size,
                        "draws": len(self.lfw_small_gallery[f]),
                        "fpir": _spread([p.fpir for p in self.lfw_small_gallery[f]]),
                        "dir": _spread([p.dir for p in self.lfw_small_gallery[f]]),
                        "non_mated": self.lfw_small_gallery[f][0].non_mated,
                    }
                    for f in self.fpir_targets
                },
            },
            "celeba": {
                "dataset": self.celeba_dataset,
                "images": self.celeba_images,
                "identities": self.celeba_identities,
                "no_face": self.celeba_no_face,
                "folds": self.folds,
                "seed": self.seed,
                # Each mated probe is in every trial but its own fold's, so the pooled DIR counts it
                # folds - 1 times: a binomial error over those counts would be too small; none is given.
                "pooled_thresholds": {
                    fpir: {**point, "dir_standard_error": None}
                    for fpir, point in points(self.celeba_thresholds).items()
                },
                "own_curve_dir": {f"{f:g}": self._own_curve(f) for f in self.fpir_targets},
                "at_manifest_threshold": {
                    **_point_json(self.celeba_at_manifest_threshold),
                    "dir_standard_error": None,
                },
                "held_out_threshold_fpir": {
                    f"{f:g}": _spread([t.held_out[f].fpir for t in self.celeba_trials])
                    for f in self.fpir_targets
                },
                "held_out_threshold_dir": {
                    f"{f:g}": _spread([t.held_out[f].dir for t in self.celeba_trials])
                    for f in self.fpir_targets
                },
                "trials": [
                    {
                        "identities_enrolled": t.identities_enrolled,
                        "identities_non_mated": t.identities_non_mated,
                        "own": points(t.own),
                        "held_out": points(t.held_out),
                    }
                    for t in self.celeba_trials
                ],
            },
            "seconds": round(self.seconds, 1),
            "limit": self.limit,
        }

    def _own_curve(self, fpir: float) -> dict[str, Any]:
        """Spread of the trials' own DIR at ``fpir``, unless a trial may not let one stranger through
        (fewer than 1/fpir non-mated probes): then one photo sets its threshold and the DIR means nothing."""
        if any(t.own[fpir].non_mated * fpir < 1 for t in self.celeba_trials):
            return {"unresolved": f"a fold has fewer than {1 / fpir:g} non-mated probes"}
        return _spread([t.own[fpir].dir for t in self.celeba_trials])

    def summary(self) -> str:
        lines = [
            f"model {self.model} (detector {self.detector}) in {self.seconds:.0f} s"
            + (f", --limit {self.limit} (not comparable with full runs)" if self.limit else ""),
        ]
        for fpir in self.fpir_targets:
            cal = self.celeba_thresholds[fpir]
            lfw = self.lfw_at_celeba_threshold[fpir]
            held = [t.held_out[fpir].fpir for t in self.celeba_trials]
            held_dir = [t.held_out[fpir].dir for t in self.celeba_trials]
            small = self.lfw_small_gallery[fpir]
            lines += [
                f"FPIR target {fpir:g}: CelebA threshold {cal.threshold:.4f} ({cal.false_alarms} of "
                f"{cal.non_mated} non-mated pass)",
                f"  LFW at that threshold: DIR {100 * lfw.dir:.2f} % (± {100 * lfw.dir_standard_error:.2f} "
                f"SE; {lfw.hits} of {lfw.mated} mated), FPIR {100 * lfw.fpir:.3f} % ({lfw.false_alarms} of "
                f"{lfw.non_mated} non-mated)",
                f"  LFW at that threshold with {self.small_gallery_size} people enrolled (CelebA's gallery "
                f"size, {len(small)} draws): FPIR {100 * np.mean([p.fpir for p in small]):.3f} %, DIR "
                f"{100 * np.mean([p.dir for p in small]):.2f} %",
                f"  CelebA {self.folds} folds, threshold from the other folds: DIR "
                f"{100 * np.mean(held_dir):.2f} ± {100 * np.std(held_dir):.2f} %, FPIR "
                f"{100 * np.mean(held):.3f} ± {100 * np.std(held):.3f} %",
            ]
        lfw, cal = self.lfw_at_manifest_threshold, self.celeba_at_manifest_threshold
        lines.append(
            f"manifest threshold {self.manifest_threshold:.4f}: LFW DIR {100 * lfw.dir:.2f} %, FPIR "
            f"{100 * lfw.fpir:.3f} %; CelebA (pooled) DIR {100 * cal.dir:.2f} %, FPIR {100 * cal.fpir:.3f} %"
        )
        lines.append(
            f"LFW: {self.lfw_gallery} enrolled people, rank-1 of mated probes {100 * self.lfw_rank1:.2f} %, "
            f"{self.lfw_no_face} photos without a face; CelebA: {self.celeba_images} photos of "
            f"{self.celeba_identities} identities, {self.celeba_no_face} without a face"
        )
        return "\n".join(lines)


def evaluate_open_set(
    settings: Settings,
    *,
    lfw_dir: Path = DEFAULT_LFW,
    celeba_dir: Path = DEFAULT_CELEBA,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    folds: int = 5,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> OpenSetReport:
    """Open-set identification on LFW at thresholds chosen on CelebA folds (see the module docstring)."""
    if inside_lfw(celeba_dir):
        raise ValueError("thresholds must not be chosen on LFW; give a CelebA-like set for --celeba")
    started = time.perf_counter()
    targets = tuple(fpir_targets)

    items = list_identity_folders(celeba_dir)
    if limit is not None:
        items = limit_identities(items, limit, minimum=folds)
    celeba = embed_paths(
        settings,
        [i.path for i in items],
        choice="largest",
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
    )
    celeba_ids = [item.identity for item in items]
    celeba_row = {item: i for i, item in enumerate(items)}
    fold_sets = identity_folds(celeba_ids, folds, seed)
    trial_scores = []
    for held in fold_sets:
        trial = open_set_split(items, _identity, _outside(held))
        trial_scores.append(_scores(celeba.embeddings, celeba_ids, celeba_row, trial))
    pooled = np.concatenate([s.non_mated_top for s in trial_scores])
    thresholds = {f: threshold_at_fpir(pooled, f) for f in targets}
    trials = []
    for i, scores in enumerate(trial_scores):
        others = np.concatenate([s.non_mated_top for j, s in enumerate(trial_scores) if j != i])
        trials.append(
            FoldTrial(
                identities_enrolled=len(set(celeba_ids)) - len(fold_sets[i]),
                identities_non_mated=len(fold_sets[i]),
                own={f: dir_at_fpir(scores, f) for f in targets},
                held_out={f: open_set_point(scores, threshold_at_fpir(others, f)) for f in targets},
            )
        )
    # The pooled CelebA points: every photo non-mated once, mated probes of all trials together.
    pooled_scores = OpenSetScores(
        mated_top=np.concatenate([s.mated_top for s in trial_scores]),
        mated_hit=np.concatenate([s.mated_hit for s in trial_scores]),
        non_mated_top=pooled,
    )
    celeba_points = {f: open_set_point(pooled_scores, t) for f, t in thresholds.items()}

    entry = load_manifest(settings.model_dir / "manifest.toml").get(settings.embedder)
    assert entry.embedder is not None  # embed_paths built a pipeline with it
    manifest_threshold = entry.embedder.threshold

    split = lfw_open_set_split(list_images(lfw_dir), limit)
    lfw_items: list[LfwImage] = sorted(split.gallery + split.mated + split.non_mated)
    lfw = embed_paths(
        settings,
        [i.path(lfw_dir) for i in lfw_items],
        choice="central",
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
    )
    lfw_row = {item: i for i, item in enumerate(lfw_items)}
    lfw_names = [i.name for i in lfw_items]
    lfw_scores = _scores(lfw.embeddings, lfw_names, lfw_row, split)
    small_size = min(t.identities_enrolled for t in trials)
    small = [
        _scores(lfw.embeddings, lfw_names, lfw_row, subsample_gallery(split, small_size, seed + draw))
        for draw in range(SMALL_GALLERY_DRAWS)
    ]
    return OpenSetReport(
        model=lfw.model,
        detector=lfw.detector,
        fpir_targets=targets,
        celeba_dataset=str(celeba_dir),
        celeba_thresholds=celeba_points,
        celeba_trials=tuple(trials),
        celeba_images=len(items),
        celeba_identities=len(set(celeba_ids)),
        celeba_no_face=celeba.batch.no_face,
        lfw_at_celeba_threshold={f: open_set_point(lfw_scores, t) for f, t in thresholds.items()},
        lfw_own_curve={f: dir_at_fpir(lfw_scores, f) for f in targets},
        lfw_small_gallery={
            f: tuple(open_set_point(scores, t) for scores in small) for f, t in thresholds.items()
        },
        small_gallery_size=small_size,
        manifest_threshold=manifest_threshold,
        lfw_at_manifest_threshold=open_set_point(lfw_scores, manifest_threshold),
        celeba_at_manifest_threshold=open_set_point(pooled_scores, manifest_threshold),
        lfw_gallery=len(split.gallery),
        lfw_no_face=lfw.batch.no_face,
        lfw_rank1=float(np.mean(lfw_scores.mated_hit)),
        seconds=time.perf_counter() - started,
        folds=folds,
        seed=seed,
        limit=limit,
    )


__all__ = [
    "DEFAULT_CELEBA",
    "FPIR_TARGETS",
    "FoldTrial",
    "OpenSetReport",
    "evaluate_open_set",
    "identity_folds",
    "lfw_open_set_split",
    "limit_identities",
    "subsample_gallery",
]

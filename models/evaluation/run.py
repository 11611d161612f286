"""The evaluations themselves: LFW verification and identification, and threshold calibration on a
folder-per-identity set. Each builds the service's pipeline from settings (``build_pipeline``) and pushes
every image through it with :func:`models.evaluation.faces.embed_files`.

Usage::

    report = evaluate_lfw(Settings(model_dir=Path("/tmp/fb-models")), lfw_dir=..., pairs_path=...)
    print(json.dumps(report.as_json()))
    calibration = calibrate_on_folder(settings, Path("../shared/data/celeba-train"), far=1e-3)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.faces import CacheKeys, FaceBatch, FaceChoice, embed_files
from models.evaluation.folders import DEFAULT_LFW, list_identity_folders
from models.evaluation.lfw import (
    IdentificationSplit,
    LfwImage,
    identification_split,
    limit_pairs,
    limit_split,
    list_images,
    read_pairs,
)
from models.evaluation.peers import PEER, embed_with_face_recognition, peer_version
from models.evaluation.protocol import (
    Metric,
    OperatingPoint,
    calibrate_threshold,
    identification_ranks,
    pair_scores,
    tar_at_far,
    ten_fold_accuracy,
    top_k_rates,
)
from service.config import Settings
from service.pipeline.factory import build_pipeline

Progress = Callable[[str], None]

DEFAULT_PAIRS = Path("../shared/data/lfw-pairs.txt")
FAR = 1e-3


def pipeline_settings(settings: Settings, *, workers: int) -> Settings:
    """One onnxruntime thread per session when several workers share the cores (unless set explicitly)."""
    if workers > 1 and settings.intra_op_threads == 0:
        return settings.model_copy(update={"intra_op_threads": 1})
    return settings


@dataclass
class EmbeddedSet:
    """Embeddings of a list of images through one pipeline configuration."""

    batch: FaceBatch
    model: str
    detector: str

    @property
    def embeddings(self) -> np.ndarray:
        assert self.batch.embeddings is not None
        return self.batch.embeddings


def embed_paths(
    settings: Settings,
    paths: Sequence[Path],
    *,
    choice: FaceChoice,
    cache_dir: Path | None,
    workers: int = 2,
    want_crops: bool = False,
    want_embeddings: bool = True,
    progress: Progress | None = None,
) -> EmbeddedSet:
    """Build the pipeline from ``settings`` and embed one face per path (cached); ``want_embeddings=False``
    stops at the aligned crops (training needs only those)."""
    settings = pipeline_settings(settings, workers=workers)
    pipeline, models = build_pipeline(settings)
    keys = CacheKeys.for_pipeline(settings, models, pipeline, choice)
    batch = embed_files(
        paths,
        pipeline,
        keys=keys,
        cache_dir=cache_dir,
        choice=choice,
        workers=workers,
        max_pixels=settings.max_image_pixels,
        want_crops=want_crops,
        want_embeddings=want_embeddings,
        progress=progress,
    )
    return EmbeddedSet(batch=batch, model=models.embedder_tag, detector=models.detector_tag)


@dataclass
class LfwReport:
    """Figures of one LFW run; fractions in [0, 1]. ``as_json`` gives the agreed keys first."""

    verification_accuracy: float
    verification_std: float
    tar_at_far: OperatingPoint
    top_k: dict[int, float]
    no_face: int
    model: str
    seconds: float
    detector: str = ""
    images: int = 0
    unreadable: int = 0
    several_faces: int = 0
    pairs: int = 0
    pairs_with_no_face: int = 0
    gallery: int = 0
    probes: int = 0
    probes_missed_no_face: int = 0
    fold_accuracies: tuple[float, ...] = ()
    fold_thresholds: tuple[float, ...] = ()
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "verification_accuracy": round(self.verification_accuracy, 6),
            "verification_std": round(self.verification_std, 6),
            "tar_at_far_1e-3": round(self.tar_at_far.tar, 6),
            "identification_top1": round(self.top_k[1], 6),
            "identification_top5": round(self.top_k[5], 6),
            "identification_top10": round(self.top_k[10], 6),
            "no_face": self.no_face,
            "model": self.model,
            "seconds": round(self.seconds, 1),
            "detector": self.detector,
            "images": self.images,
            "unreadable": self.unreadable,
            "several_faces": self.several_faces,
            "pairs": self.pairs,
            "pairs_with_no_face": self.pairs_with_no_face,
            "gallery": self.gallery,
            "probes": self.probes,
            "probes_missed_no_face": self.probes_missed_no_face,
            "far_threshold": round(self.tar_at_far.threshold, 6),
            "far_actual": round(self.tar_at_far.far, 6),
            "fold_accuracies": [round(a, 6) for a in self.fold_accuracies],
            "fold_thresholds": [round(t, 6) for t in self.fold_thresholds],
            "limit": self.limit,
        }

    def summary(self) -> str:
        point = self.tar_at_far
        lines = [
            f"model {self.model} (detector {self.detector}), {self.images} images in {self.seconds:.0f} s"
            + (f", --limit {self.limit} (not comparable with full runs)" if self.limit else ""),
            f"verification: {100 * self.verification_accuracy:.2f} ± {100 * self.verification_std:.2f} % "
            f"over {len(self.fold_accuracies)} folds ({self.pairs} pairs, {self.pairs_with_no_face} with "
            "a no-face image, counted wrong)",
            f"TAR@FAR=1e-3: {100 * point.tar:.2f} % (score threshold {point.threshold:.4f}, "
            f"FAR {point.far:.5f} over {point.impostor} impostor pairs)",
            f"identification: top-1 {100 * self.top_k[1]:.2f} %, top-5 {100 * self.top_k[5]:.2f} %, "
            f"top-10 {100 * self.top_k[10]:.2f} % ({self.probes} probes against {self.gallery} gallery "
            f"identities; {self.probes_missed_no_face} probes missed for want of a face)",
            f"no face: {self.no_face} images ({self.unreadable} unreadable); several faces (most central "
            f"used): {self.several_faces} images",
        ]
        return "\n".join(lines)


def evaluate_lfw(
    settings: Settings,
    *,
    lfw_dir: Path = DEFAULT_LFW,
    pairs_path: Path = DEFAULT_PAIRS,
    limit: int | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    engine: str = "facebank",
) -> LfwReport:
    """LFW verification (10 folds of pairs.txt) and identification (first image per person as gallery).

    ``engine="facebank"`` runs the service's pipeline built from ``settings``; ``"face_recognition"`` runs
    the dlib-based peer (:mod:`models.evaluation.peers`) through the same protocol, with its own metric.
    """
    started = time.perf_counter()
    pairs = read_pairs(pairs_path)
    split = identification_split(list_images(lfw_dir))
    if limit is not None:
        pairs = limit_pairs(pairs, limit)
        people = sorted({p.left.name for p in pairs} | {p.right.name for p in pairs})
        split = limit_split(split, people, limit)
    _check_split(split)
    images: list[LfwImage] = sorted(
        {p.left for p in pairs} | {p.right for p in pairs} | set(split.gallery) | set(split.probes)
    )
    row = {image: i for i, image in enumerate(images)}
    paths = [image.path(lfw_dir) for image in images]
    metric: Metric = "cosine"
    if engine == "facebank":
        embedded = embed_paths(
            settings, paths, choice="central", cache_dir=cache_dir, workers=workers, progress=progress
        )
    elif engine == PEER:
        batch = embed_with_face_recognition(paths, cache_dir=cache_dir, workers=workers, progress=progress)
        embedded = EmbeddedSet(
            batch=batch, model=f"{PEER} ({peer_version()})", detector="dlib HOG (upsample 1)"
        )
        metric = "euclidean"
    else:
        raise ValueError(f"unknown engine {engine!r}; known: facebank, {PEER}")
    vectors, found = embedded.embeddings, embedded.batch.found

    left = np.array([row[p.left] for p in pairs])
    right = np.array([row[p.right] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    scores = pair_scores(vectors[left], vectors[right], metric)
    result = ten_fold_accuracy(scores, same, folds)
    point = tar_at_far(scores, same, FAR)

    gallery_rows = np.array([row[i] for i in split.gallery])
    probe_rows = np.array([row[i] for i in split.probes])
    ranks = identification_ranks(
        vectors[probe_rows],
        [i.name for i in split.probes],
        vectors[gallery_rows],
        [i.name for i in split.gallery],
        metric=metric,
    )
    gallery_found = {image.name for image in split.gallery if found[row[image]]}
    probe_missed = sum(
        1 for image in split.probes if not found[row[image]] or image.name not in gallery_found
    )
    batch = embedded.batch
    return LfwReport(
        verification_accuracy=result.mean,
        verification_std=result.std,
        tar_at_far=point,
        top_k=top_k_rates(ranks, (1, 5, 10)),
        no_face=batch.no_face,
        model=embedded.model,
        seconds=time.perf_counter() - started,
        detector=embedded.detector,
        images=len(images),
        unreadable=batch.unreadable,
        several_faces=batch.several_faces,
        pairs=len(pairs),
        pairs_with_no_face=int(np.sum(np.isnan(scores))),
        gallery=len(split.gallery),
        probes=len(split.probes),
        probes_missed_no_face=probe_missed,
        fold_accuracies=result.accuracies,
        fold_thresholds=result.thresholds,
        limit=limit,
    )


def _check_split(split: IdentificationSplit) -> None:
    if not split.gallery or not split.probes:
        raise ValueError("identification needs at least one gallery image and one probe")


@dataclass(frozen=True)
class CalibrationReport:
    """A cosine threshold measured at ``far`` on a folder data set, and the value to put in a manifest."""

    point: OperatingPoint
    recommended: float
    at_recommended: OperatingPoint
    far_target: float
    images: int
    identities: int
    no_face: int
    model: str
    dataset: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "far_target": self.far_target,
            "threshold": round(self.point.threshold, 6),
            "tar": round(self.point.tar, 6),
            "far": round(self.point.far, 7),
            "recommended_threshold": self.recommended,
            "tar_at_recommended": round(self.at_recommended.tar, 6),
            "far_at_recommended": round(self.at_recommended.far, 7),
            "genuine_pairs": self.point.genuine,
            "impostor_pairs": self.point.impostor,
            "images": self.images,
            "identities": self.identities,
            "no_face": self.no_face,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        p, r = self.point, self.at_recommended
        return "\n".join(
            [
                f"model {self.model} on {self.dataset}: {self.images} images of {self.identities} identities "
                f"({self.no_face} without a face, left out), {p.genuine} genuine and {p.impostor} "
                "impostor pairs",
                f"FAR target {self.far_target:g}: threshold {p.threshold:.4f} (TAR {100 * p.tar:.2f} %, "
                f"FAR {p.far:.5f})",
                f"recommended manifest threshold {self.recommended:.2f} (rounded up): "
                f"TAR {100 * r.tar:.2f} %, FAR {r.far:.5f}",
            ]
        )


def operating_point_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> OperatingPoint:
    """TAR and FAR of ``score >= threshold``."""
    genuine, impostor = scores[same], scores[~same]
    return OperatingPoint(
        threshold=threshold,
        tar=float(np.mean(genuine >= threshold)),
        far=float(np.mean(impostor >= threshold)),
        genuine=len(genuine),
        impostor=len(impostor),
    )


def calibrate_embeddings(
    embeddings: np.ndarray, identities: Sequence[str], far: float
) -> tuple[OperatingPoint, float, OperatingPoint]:
    """Threshold at ``far`` over all pairs, that value rounded up to 0.01, and the rates at the latter."""
    point = calibrate_threshold(embeddings, identities, far)
    recommended = math.ceil(point.threshold * 100 - 1e-9) / 100
    ids = np.asarray(identities)
    rows, cols = np.triu_indices(len(embeddings), k=1)
    scores = (embeddings @ embeddings.T)[rows, cols]
    return point, recommended, operating_point_at(scores, ids[rows] == ids[cols], recommended)


def calibrate_on_folder(
    settings: Settings,
    dataset: Path,
    *,
    far: float = FAR,
    identities: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> CalibrationReport:
    """Measure the cosine threshold at ``far`` on every pair of a folder-per-identity set (never LFW).

    Faces are chosen as the service enrols them (the largest); images without a face are left out of the
    pairs and counted. ``identities`` restricts the set (e.g. to a model's validation identities).
    """
    started = time.perf_counter()
    items = list_identity_folders(dataset)
    if identities is not None:
        wanted = set(identities)
        items = [item for item in items if item.identity in wanted]
    embedded = embed_paths(
        settings,
        [item.path for item in items],
        choice="largest",
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
    )
    found = embedded.batch.found
    labels = [item.identity for item, ok in zip(items, found, strict=True) if ok]
    point, recommended, at_recommended = calibrate_embeddings(embedded.embeddings[found], labels, far)
    return CalibrationReport(
        point=point,
        recommended=recommended,
        at_recommended=at_recommended,
        far_target=far,
        images=len(items),
        identities=len({item.identity for item in items}),
        no_face=embedded.batch.no_face,
        model=embedded.model,
        dataset=str(dataset),
        seconds=time.perf_counter() - started,
    )


__all__ = [
    "DEFAULT_LFW",
    "DEFAULT_PAIRS",
    "CalibrationReport",
    "EmbeddedSet",
    "LfwReport",
    "calibrate_embeddings",
    "calibrate_on_folder",
    "embed_paths",
    "evaluate_lfw",
    "operating_point_at",
    "pipeline_settings",
]

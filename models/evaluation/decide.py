"""The decisions issue 13 asks for, on celeba-train's 209 people (never LFW): which embedder, flip test-time
augmentation or not, and how to score a person enrolled with several photos — each figure with an identity
bootstrap interval, each choice a paired comparison on the same probes (:mod:`models.evaluation.paired`).

Faces are the service's (largest face per photo, its detector and alignment; crops from the evaluation cache)
and embeddings come from the prepared ONNX graphs through the service's :class:`Embedder`, so a figure here
is what the service computes. With ``flip`` a face's embedding is the normalised mean of the embeddings of
the crop and of its mirror image.

Protocols (identities in sorted order; photos in file-name order):

- **single**: each person's first photo enrolled, every other photo identified (209 people, 4,129 probes):
  top-1; TAR at FAR 1e-3 over every pair of the 4,338 faces, and its mean ± std over 5 identity-disjoint
  folds.
- **templates**: people with at least 5 photos enrol their first 3 (the others their first), every other
  photo is identified; a person is scored by the best of their enrolled faces (``best``), by the cosine to
  the normalised mean of their faces (``mean``, what the service does: service/templates.py), or by the
  larger of the two (``both``). Closed-set top-1, and open-set DIR at FPIR 1 %: 5 identity-disjoint folds,
  trial *i* enrols everyone outside fold *i* and uses fold *i*'s photos as strangers; the threshold lets
  through 1 % of the strangers pooled over the trials.

Usage::

    nice -n 10 python -m models.evaluation.decide ../shared/data/celeba-train --model-dir /tmp/fb-models \\
        --cache /tmp/fb-cache --models mobilefacenet,edgeface-xs-q --json decide.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.evaluation.folders import inside_lfw
from models.evaluation.openset import threshold_at_fpir
from models.evaluation.paired import PairedComparison, RateSpread, bootstrap_rate, paired_comparison
from models.evaluation.protocol import calibrate_threshold
from models.evaluation.run_openset import identity_folds
from service.config import Settings
from service.pipeline import l2_normalize
from service.pipeline.embed import Embedder
from service.runtime.manifest import load_manifest, sha256_file
from service.runtime.models import embedder_config, prepared_entry
from service.runtime.sessions import create_session
from service.templates import candidates_for

Rule = Literal["best", "mean", "both"]
RULES: tuple[Rule, ...] = ("best", "mean", "both")
FAR = 1e-3
FPIR = 0.01
FOLDS = 5
TEMPLATE_PHOTOS = 3
TEMPLATE_MIN_PHOTOS = 5


def embed_crops(
    model_dir: Path, name: str, crops: np.ndarray, cache: Path | None = None, *, mirror: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(plain, mirrored or None) unit embeddings of ``crops`` by the prepared embedder ``name``, as served;
    kept in ``cache`` under the ONNX file's and the crops' hashes."""
    entry = load_manifest(model_dir / "manifest.toml").get(name)
    onnx = model_dir / entry.onnx_file
    digest = hashlib.sha256(sha256_file(onnx).encode() + np.ascontiguousarray(crops).tobytes()).hexdigest()
    folder = cache / "decide" if cache else None
    both, plain_only = f"{name}-{digest[:16]}.npz", f"{name}-{digest[:16]}-plain.npz"
    for file_name in [both] if mirror else [both, plain_only]:
        if folder is not None and (folder / file_name).is_file():
            with np.load(folder / file_name) as saved:
                return saved["plain"], saved["mirrored"] if mirror else None
    embedder = Embedder(create_session(onnx), embedder_config(entry))
    plain = embedder.embed(crops)
    mirrored = embedder.embed(np.ascontiguousarray(crops[:, :, ::-1])) if mirror else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if mirrored is not None:
            np.savez(folder / both, plain=plain, mirrored=mirrored)
        else:
            np.savez(folder / plain_only, plain=plain)
    return plain, mirrored


def with_flip(plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    return l2_normalize(plain + mirrored)


def first_photos(ids: np.ndarray, count: int) -> np.ndarray:
    """True for the first ``count`` photos of each identity (rows grouped by identity, in order)."""
    rank = np.zeros(len(ids), int)
    for i in range(1, len(ids)):
        rank[i] = rank[i - 1] + 1 if ids[i] == ids[i - 1] else 0
    return rank < count


def enrolment(ids: np.ndarray, photos: int, min_photos: int) -> np.ndarray:
    """Enrolled rows: the first ``photos`` of people with at least ``min_photos`` photos, else the first."""
    names, counts = np.unique(ids, return_counts=True)
    many = set(names[counts >= min_photos])
    return (first_photos(ids, photos) & np.array([i in many for i in ids])) | first_photos(ids, 1)


def identity_scores(
    probes: np.ndarray, enrolled: np.ndarray, owners: np.ndarray, people: int, rule: Rule
) -> np.ndarray:
    """(probes, people) scores: best enrolled face, cosine to the mean face, or the larger of the two."""
    sims = probes @ enrolled.T
    best = np.full((len(probes), people), -np.inf, np.float32)
    for person in range(people):
        columns = owners == person
        if columns.any():
            best[:, person] = sims[:, columns].max(axis=1)
    if rule == "best":
        return best
    sums = np.zeros((people, enrolled.shape[1]), np.float64)
    np.add.at(sums, owners, enrolled)
    mean = probes @ l2_normalize(sums.astype(np.float32)).T
    mean[:, np.bincount(owners, minlength=people) == 0] = -np.inf
    return mean if rule == "mean" else np.maximum(best, mean)


@dataclass(frozen=True)
class Scored:
    """One system on one protocol: per-probe correctness (for paired tests) and its summary."""

    correct: np.ndarray
    groups: np.ndarray
    spread: RateSpread


def closed_set(embeddings: np.ndarray, ids: np.ndarray, enrolled: np.ndarray, rule: Rule) -> Scored:
    names, index = np.unique(ids, return_inverse=True)
    scores = identity_scores(embeddings[~enrolled], embeddings[enrolled], index[enrolled], len(names), rule)
    correct = scores.argmax(axis=1) == index[~enrolled]
    return Scored(correct, index[~enrolled], bootstrap_rate(correct, index[~enrolled]))


def fold_of(ids: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each row's fold: its identity's among `eval openset`'s identity-disjoint folds (same seed)."""
    number = {name: f for f, fold in enumerate(identity_folds(ids.tolist(), folds, seed)) for name in fold}
    return np.array([number[name] for name in ids.tolist()])


@dataclass(frozen=True)
class OpenSetTrials:
    """Every trial of the identity-disjoint folds, pooled: per mated probe and trial its top score, whether
    its own identity ranks first, and its identity; per stranger (every row, once) its top score."""

    mated_top: np.ndarray
    mated_hit: np.ndarray
    mated_group: np.ndarray
    stranger_top: np.ndarray

    @classmethod
    def of(cls, embeddings: np.ndarray, ids: np.ndarray, enrolled: np.ndarray, rule: Rule) -> OpenSetTrials:
        names, index = np.unique(ids, return_inverse=True)
        fold = fold_of(ids)
        mated_top, mated_hit, mated_group, strangers = [], [], [], []
        for trial in range(FOLDS):
            inside = fold != trial
            gallery = enrolled & inside
            probes = ~enrolled & inside
            scores = identity_scores(embeddings, embeddings[gallery], index[gallery], len(names), rule)
            top, arg = scores.max(axis=1), scores.argmax(axis=1)
            mated_top.append(top[probes])
            mated_hit.append(arg[probes] == index[probes])
            mated_group.append(index[probes])
            strangers.append(top[~inside])
        return cls(*(np.concatenate(parts) for parts in (mated_top, mated_hit, mated_group, strangers)))

    def found(self, threshold: float) -> np.ndarray:
        """Per mated probe and trial: its identity ranks first with a score at or above ``threshold``."""
        return self.mated_hit & (self.mated_top >= threshold)


def open_set(
    embeddings: np.ndarray, ids: np.ndarray, enrolled: np.ndarray, rule: Rule, fpir: float = FPIR
) -> tuple[Scored, float]:
    """DIR at ``fpir`` over identity-disjoint folds (per mated probe and trial: rank 1 and score ≥ t)."""
    trials = OpenSetTrials.of(embeddings, ids, enrolled, rule)
    threshold = threshold_at_fpir(trials.stranger_top, fpir)
    correct = trials.found(threshold)
    return Scored(correct, trials.mated_group, bootstrap_rate(correct, trials.mated_group)), threshold


def reranked_by_mean(
    embeddings: np.ndarray, ids: np.ndarray, enrolled: np.ndarray, candidates: int
) -> tuple[int, int, int, int]:
    """How the service's rule (service/templates.py: the best-face ranking's first `candidates` people,
    re-ranked by template) compares with an exhaustive template ranking: (mated probes whose first person
    differs, mated probes, strangers of the open-set folds whose top score differs, strangers)."""
    names, index = np.unique(ids, return_inverse=True)

    def first(
        probes: np.ndarray, gallery: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        args = (probes, embeddings[gallery], index[gallery], len(names))
        best, mean = identity_scores(*args, "best"), identity_scores(*args, "mean")
        shortlist = np.argsort(-best, axis=1, kind="stable")[:, :candidates]
        reranked = np.take_along_axis(mean, shortlist, axis=1)
        picked = shortlist[np.arange(len(shortlist)), reranked.argmax(axis=1)]
        return picked, reranked.max(axis=1), mean.argmax(axis=1), mean.max(axis=1)

    picked, _, exhaustive, _ = first(embeddings[~enrolled], enrolled)
    fold = fold_of(ids)
    strangers_differ = 0
    for trial in range(FOLDS):
        _, top, _, exhaustive_top = first(embeddings[fold == trial], enrolled & (fold != trial))
        strangers_differ += int((np.abs(top - exhaustive_top) > 1e-6).sum())
    return int((picked != exhaustive).sum()), int((~enrolled).sum()), strangers_differ, len(ids)


def at_threshold(
    embeddings: np.ndarray, ids: np.ndarray, enrolled: np.ndarray, rule: Rule, threshold: float
) -> tuple[int, int, int, int]:
    """At a fixed threshold over the open-set folds: (strangers named, strangers, mated probes found first
    with a score at or above it, mated probe trials)."""
    trials = OpenSetTrials.of(embeddings, ids, enrolled, rule)
    named = int((trials.stranger_top >= threshold).sum())
    return named, len(trials.stranger_top), int(trials.found(threshold).sum()), len(trials.mated_top)


def tar_folds(embeddings: np.ndarray, ids: np.ndarray) -> tuple[float, float, float]:
    """TAR at FAR 1e-3 over every pair, and its mean and std over identity-disjoint folds."""
    everything = calibrate_threshold(embeddings, list(ids), FAR).tar
    fold = fold_of(ids)
    per_fold = [
        calibrate_threshold(embeddings[fold == f], list(ids[fold == f]), FAR).tar for f in range(FOLDS)
    ]
    return everything, float(np.mean(per_fold)), float(np.std(per_fold))


def _pct(spread: RateSpread) -> str:
    return f"{100 * spread.rate:.2f} % [{100 * spread.low:.2f}, {100 * spread.high:.2f}]"


def _diff(c: PairedComparison) -> str:
    return (
        f"{100 * c.difference:+.2f} [{100 * c.low:+.2f}, {100 * c.high:+.2f}] points; "
        f"{c.only_a} vs {c.only_b} discordant, McNemar p = {c.mcnemar_p:.2g}; "
        f"resolvable ≈ {100 * c.resolvable:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="ROOT/<identity>/*.jpg: celeba-train (never LFW)")
    parser.add_argument("--model-dir", type=Path, help="prepared models (default FACEBANK_MODEL_DIR)")
    parser.add_argument("--cache", type=Path, help="crop cache of the evaluations")
    parser.add_argument("--models", default="mobilefacenet,edgeface-xs-q", help="comma-separated embedders")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-flip", action="store_true", help="skip the mirror images and flip TTA")
    args = parser.parse_args(argv)
    if inside_lfw(args.dataset):
        parser.error("LFW is the test set: decide on CelebA")
    args.model_dir = args.model_dir or Settings().model_dir
    from models.training.data import prepare_crops

    crops = prepare_crops(args.dataset, Settings(model_dir=args.model_dir), cache_dir=args.cache)
    ids = np.asarray(crops.identities)
    single = first_photos(ids, 1)
    templates = enrolment(ids, TEMPLATE_PHOTOS, TEMPLATE_MIN_PHOTOS)
    print(
        f"{args.dataset}: {len(ids)} faces of {len(set(ids))} people "
        f"({crops.no_face} photos without a face); "
        f"single: {int((~single).sum())} probes; templates: {int(templates.sum())} faces enrolled, "
        f"{int((~templates).sum())} probes"
    )
    report: dict[str, object] = {}
    plain_single: dict[str, Scored] = {}
    for name in args.models.split(","):
        plain, mirrored = embed_crops(args.model_dir, name, crops.crops, args.cache, mirror=not args.no_flip)
        variants = {"": plain} if mirrored is None else {"": plain, "+flip": with_flip(plain, mirrored)}
        scored = {tta: closed_set(e, ids, single, "best") for tta, e in variants.items()}
        plain_single[name] = scored[""]
        for tta, e in variants.items():
            tar, tar_mean, tar_std = tar_folds(e, ids)
            report[f"{name}{tta}/single"] = {
                "top1": asdict(scored[tta].spread),
                "tar_far_1e-3": tar,
                "tar_folds": [tar_mean, tar_std],
            }
            print(
                f"{name}{tta}: single top-1 {_pct(scored[tta].spread)}; TAR@FAR=1e-3 {100 * tar:.2f} % "
                f"(folds {100 * tar_mean:.2f} ± {100 * tar_std:.2f})"
            )
        if "+flip" in scored:
            flip = paired_comparison(scored[""].correct, scored["+flip"].correct, scored[""].groups)
            report[f"{name}/flip_vs_plain"] = asdict(flip)
            print(f"  flip − plain: {_diff(flip)}")
        for tta, e in variants.items():
            closed = {rule: closed_set(e, ids, templates, rule) for rule in RULES}
            opened = {rule: open_set(e, ids, templates, rule) for rule in RULES}
            for rule in RULES:
                report[f"{name}{tta}/templates/{rule}"] = {
                    "top1": asdict(closed[rule].spread),
                    "dir_fpir_1pct": asdict(opened[rule][0].spread),
                    "threshold": opened[rule][1],
                }
                print(
                    f"  {name}{tta} templates/{rule}: top-1 {_pct(closed[rule].spread)}; "
                    f"DIR@FPIR1% {_pct(opened[rule][0].spread)} (t = {opened[rule][1]:.4f})"
                )
            for rule in ("mean", "both"):
                c_closed = paired_comparison(
                    closed["best"].correct, closed[rule].correct, closed["best"].groups
                )
                c_open = paired_comparison(
                    opened["best"][0].correct, opened[rule][0].correct, opened["best"][0].groups
                )
                report[f"{name}{tta}/templates/{rule}_vs_best"] = {
                    "top1": asdict(c_closed),
                    "dir": asdict(c_open),
                }
                print(f"    {rule} − best, top-1: {_diff(c_closed)}")
                print(f"    {rule} − best, DIR@FPIR1%: {_diff(c_open)}")
        e = variants[""]
        wanted = candidates_for(1, "mean")
        for shortlist in sorted({1, 2, 4, 8, 16, wanted}):
            differ, mated, strangers_differ, strangers = reranked_by_mean(e, ids, templates, shortlist)
            report[f"{name}/templates/reranking_{shortlist}"] = {
                "served": shortlist == wanted,
                "first_person_differs": differ,
                "stranger_top_score_differs": strangers_differ,
            }
            print(
                f"  {name}, best-face top {shortlist} re-ranked by mean"
                f"{' (as served)' if shortlist == wanted else ''}: first person differs from the exhaustive "
                f"ranking for {differ} of {mated} probes; top score for {strangers_differ} of {strangers} "
                "strangers"
            )
        threshold = embedder_config(prepared_entry(args.model_dir, name)).threshold
        for rule in ("best", "mean"):
            named, strangers, found, mated = at_threshold(e, ids, templates, rule, threshold)
            report[f"{name}/templates/{rule}/at_model_threshold"] = {
                "threshold": threshold,
                "fpir": named / strangers,
                "dir": found / mated,
            }
            print(
                f"  {name} templates/{rule} at the model's threshold {threshold}: FPIR "
                f"{100 * named / strangers:.2f} % ({named} of {strangers}), DIR {100 * found / mated:.2f} % "
                f"({found} of {mated})"
            )
    names = list(plain_single)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            c = paired_comparison(plain_single[a].correct, plain_single[b].correct, plain_single[a].groups)
            report[f"{b}_vs_{a}/single"] = asdict(c)
            print(f"{b} − {a}, single top-1: {_diff(c)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

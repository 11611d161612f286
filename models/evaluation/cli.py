"""``facebank eval lfw`` and ``facebank eval calibrate``: accuracy through the service's own pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.evaluation.folders import DEFAULT_CELEBA, inside_lfw


def _settings_for(args: argparse.Namespace, settings: Any) -> Any:
    update: dict[str, Any] = {}
    if args.model:
        update["embedder"] = args.model
    if args.model_dir:
        update["model_dir"] = args.model_dir
    return settings.model_copy(update=update) if update else settings


def _cache_dir(args: argparse.Namespace, settings: Any) -> Path | None:
    if args.no_cache:
        return None
    return args.cache or settings.data_dir / "cache" / "eval"


def _progress(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None
    return lambda message: print(message, file=sys.stderr, flush=True)


def _eval_lfw(args: argparse.Namespace, settings: Any) -> int:
    from models.evaluation.run import evaluate_lfw
    from service.runtime import ModelLoadError

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        report = evaluate_lfw(
            _settings_for(args, settings),
            lfw_dir=args.lfw,
            pairs_path=args.pairs,
            limit=args.limit,
            cache_dir=_cache_dir(args, settings),
            workers=args.workers,
            progress=_progress(args),
            engine=args.engine,
        )
    except (ModelLoadError, FileNotFoundError, ModuleNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json()) if args.json else report.summary())
    return 0


def _eval_calibrate(args: argparse.Namespace, settings: Any) -> int:
    from models.evaluation.run import calibrate_on_folder
    from service.runtime import ModelLoadError

    if inside_lfw(args.dataset):
        print("error: LFW is a test set; calibrate on other data (e.g. celeba-train)", file=sys.stderr)
        return 2
    identities = None
    if args.identities:
        identities = [line.strip() for line in args.identities.read_text().splitlines() if line.strip()]
    try:
        report = calibrate_on_folder(
            _settings_for(args, settings),
            args.dataset,
            far=args.far,
            identities=identities,
            cache_dir=_cache_dir(args, settings),
            workers=args.workers,
            progress=_progress(args),
        )
    except (ModelLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json()) if args.json else report.summary())
    return 0


def _eval_openset(args: argparse.Namespace, settings: Any) -> int:
    from models.evaluation.run_openset import evaluate_open_set
    from service.runtime import ModelLoadError

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        report = evaluate_open_set(
            _settings_for(args, settings),
            lfw_dir=args.lfw,
            celeba_dir=args.celeba,
            folds=args.folds,
            seed=args.seed,
            limit=args.limit,
            cache_dir=_cache_dir(args, settings),
            workers=args.workers,
            progress=_progress(args),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_json()) if args.json else report.summary())
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="embedder name in the prepared manifest (default FACEBANK_EMBEDDER)")
    parser.add_argument("--model-dir", type=Path, help="prepared models (default FACEBANK_MODEL_DIR)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--cache", type=Path, help="crop and embedding cache (default FACEBANK_DATA_DIR/cache/eval)"
    )
    parser.add_argument("--no-cache", action="store_true", help="compute everything, store nothing")
    parser.add_argument("--workers", type=int, default=2, help="threads for decode/detect/embed (default 2)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def register(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="measure accuracy through the service's pipeline")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)

    lfw = kinds.add_parser(
        "lfw",
        help="LFW 10-fold verification, TAR@FAR=1e-3, identification top-1/5/10",
        description="Fractions in [0, 1]. Images without a face count as wrong decisions and misses.",
    )
    _common(lfw)
    lfw.add_argument(
        "--limit", type=int, help="about N pairs and at most N probes (CI-sized; not comparable)"
    )
    lfw.add_argument(
        "--engine",
        choices=("facebank", "face_recognition"),
        default="facebank",
        help="our pipeline (default) or the face_recognition (dlib) peer through the same protocol",
    )
    lfw.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"), help="LFW image folder")
    lfw.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw-pairs.txt"), help="pairs.txt")
    lfw.set_defaults(handler=_eval_lfw)

    calibrate = kinds.add_parser(
        "calibrate",
        help="cosine threshold at a FAR on a folder-per-identity set (never LFW)",
        description="Every pair of the set's faces; prints the threshold and the value to put in a manifest.",
    )
    _common(calibrate)
    calibrate.add_argument(
        "dataset", type=Path, nargs="?", default=DEFAULT_CELEBA, help="ROOT/<identity>/*.jpg"
    )
    calibrate.add_argument("--far", type=float, default=1e-3, help="false accept rate (default 1e-3)")
    calibrate.add_argument("--identities", type=Path, help="file with one identity per line to restrict to")
    calibrate.set_defaults(handler=_eval_calibrate)

    openset = kinds.add_parser(
        "openset",
        help="open-set identification: LFW DIR at FPIR 1e-2 and 1e-3, thresholds chosen on CelebA folds",
        description=(
            "LFW gallery = first photo of each person with >= 2, mated = their other photos, non-mated = "
            "people with one photo; thresholds come from identity-disjoint CelebA folds, never from LFW."
        ),
    )
    _common(openset)
    openset.add_argument(
        "--limit", type=int, help="about N photos per side and set (CI-sized; not comparable)"
    )
    openset.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"), help="LFW image folder")
    openset.add_argument("--celeba", type=Path, default=DEFAULT_CELEBA, help="ROOT/<identity>/*.jpg, not LFW")
    openset.add_argument("--folds", type=int, default=5, help="identity-disjoint CelebA folds (default 5)")
    openset.add_argument("--seed", type=int, default=0, help="seed dealing identities into folds (default 0)")
    openset.set_defaults(handler=_eval_openset)

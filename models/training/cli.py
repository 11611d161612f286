"""``facebank train DATASET [--base {mobilefacenet,edgeface-xs}] --loss {softmax,cosface,coco,csoftmax} ...``:
fine-tune, export, register."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.training.bases import BASE_NAMES
from models.training.config import LOSSES


def _train(args: argparse.Namespace, settings: Any) -> int:
    from models.export.onnx_export import WeightFileError
    from models.training.config import TrainConfig
    from models.training.run import run_training
    from service.runtime import ModelLoadError

    if args.model_dir:
        settings = settings.model_copy(update={"model_dir": args.model_dir})
    try:
        config = TrainConfig(
            dataset=args.dataset,
            out=args.out,
            loss=args.loss,
            base=args.base,
            name=args.name or "",
            epochs=args.epochs,
            lr=args.lr,
            head_lr=args.head_lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            seed=args.seed,
            init_weights=args.init,
            val_dataset=args.val_dataset,
            max_identities=args.max_identities,
            head_init=args.head_init,
            freeze_bn=args.freeze_bn,
            frozen_blocks=args.frozen_blocks,
            flip=not args.no_flip,
            threads=args.threads,
            max_steps=args.max_steps,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not config.init_path.is_file():
        print(f"error: initial weights {config.init_path} not found (--init)", file=sys.stderr)
        return 1
    cache = None if args.no_cache else (args.cache or settings.data_dir / "cache" / "eval")
    say = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        report = run_training(
            config,
            settings,
            cache_dir=cache,
            register_dir=settings.model_dir if args.register else None,
            workers=args.workers,
            progress=say,
        )
    except WeightFileError as exc:  # --init is not a state dict of --base's network
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a validation set sharing identities with the training set
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = report.metrics()
    if args.json:
        print(json.dumps(metrics, default=str))
    else:
        print(
            f"{config.model_name}: validation top-1 {100 * metrics['val_top1_before']:.2f} % -> "
            f"{100 * metrics['val_top1_after']:.2f} % in {metrics['training_seconds']:.0f} s; "
            f"threshold {metrics['threshold_far_1e-3_val']:.4f}; outputs in {config.out}"
        )
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune MobileFaceNet or EdgeFace-XS on a folder-per-identity set and export it to ONNX",
        description=(
            "Detects and aligns DATASET once with the service's pipeline (cached), splits its identities "
            "into disjoint train/validation sets, fine-tunes from --init with a fresh head for --loss, "
            "reports validation identification top-1, exports ONNX with a parity check, writes a model card "
            "and a manifest fragment. Never point it at LFW."
        ),
    )
    parser.add_argument("dataset", type=Path, help="ROOT/<identity>/*.jpg, e.g. ../shared/data/celeba-train")
    parser.add_argument("--loss", choices=LOSSES, default="cosface")
    parser.add_argument(
        "--base",
        choices=BASE_NAMES,
        default="mobilefacenet",
        help="network to fine-tune (default mobilefacenet; edgeface-xs: non-commercial weights)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5, help="backbone learning rate (default 1e-5)")
    parser.add_argument("--head-lr", type=float, help="head learning rate (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--head-init", choices=("random", "centroids"), default="random")
    parser.add_argument(
        "--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (EdgeFace has none)"
    )
    parser.add_argument(
        "--frozen-blocks",
        type=int,
        default=0,
        help=(
            "freeze the stem and the first K blocks (mobilefacenet 15, edgeface-xs 18); their outputs are "
            "cached (default 0: train all)"
        ),
    )
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="identities held out (default 0.2)")
    parser.add_argument(
        "--val-dataset",
        type=Path,
        help="validate on every identity of this set (e.g. celeba-train); train on all of DATASET",
    )
    parser.add_argument(
        "--max-identities", type=int, help="train on the first N identities (by folder name) of DATASET only"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="initial weights (default: the base's upstream file)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", help="model name (default <base>-celeba-<loss>)")
    parser.add_argument("--register", action="store_true", help="add the model to the prepared manifest")
    parser.add_argument("--model-dir", type=Path, help="prepared models (default FACEBANK_MODEL_DIR)")
    parser.add_argument("--cache", type=Path, help="crop cache (default FACEBANK_DATA_DIR/cache/eval)")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="threads for detection (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.set_defaults(handler=_train)

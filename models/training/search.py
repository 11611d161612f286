"""Hyper-parameter search on validation identities only: one JSON line per configuration, nothing exported.

Crops are prepared (or read from the cache) once and every configuration is trained on the same
identity split (or, with ``--val-dataset``, on every identity of the data set and validated on every identity
of the other), then scored by validation identification top-1 (held-out CelebA identities; LFW is never
read here). Grid axes are comma-separated lists; every combination runs.

Usage::

    python -m models.training.search ../shared/data/celeba-train --cache CACHE --out runs.jsonl \\
        --loss cosface,coco --lr 1e-5,1e-4 --head-init random,centroids --frozen-blocks 13 --epochs 3
    python -m models.training.search ~/.cache/facebank-data/celeba-9k --base edgeface-xs --no-flip \\
        --val-dataset ../shared/data/celeba-train --frozen-blocks 15 --head-init centroids --out runs.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from models.training.bases import BASE_NAMES
from models.training.config import TrainConfig


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _strings(text: str) -> list[str]:
    return text.split(",")


def _optional_floats(text: str) -> list[float | None]:
    return [None if v in {"", "same"} else float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.search", description=__doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    parser.add_argument("--cache", type=Path, help="crop and trunk-output cache")
    parser.add_argument("--model-dir", type=Path, help="prepared models (default FACEBANK_MODEL_DIR)")
    parser.add_argument("--base", choices=BASE_NAMES, default="mobilefacenet")
    parser.add_argument("--val-dataset", type=Path, help="validate on every identity of this set")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--max-identities", type=int, help="train on the first N identities only")
    parser.add_argument("--loss", type=_strings, default=["cosface"])
    parser.add_argument("--lr", type=_floats, default=[1e-5])
    parser.add_argument("--head-lr", type=_optional_floats, default=[None], help="'same' means --lr")
    parser.add_argument("--head-init", type=_strings, default=["random"])
    parser.add_argument("--frozen-blocks", type=_ints, default=[13])
    parser.add_argument("--epochs", type=_ints, default=[3])
    parser.add_argument("--batch-size", type=_ints, default=[32])
    parser.add_argument("--freeze-bn", type=_ints, default=[0], help="0, 1 or 0,1")
    parser.add_argument("--cosface-margin", type=_floats, default=[0.35])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    from models.training.data import prepare_crops, train_and_validation
    from models.training.train import train_embedder
    from service.config import Settings

    settings = Settings()
    if args.model_dir:
        settings = settings.model_copy(update={"model_dir": args.model_dir})
    crops = prepare_crops(args.dataset, settings, cache_dir=args.cache)
    base = TrainConfig(
        dataset=args.dataset,
        out=Path("unused"),
        base=args.base,
        val_dataset=args.val_dataset,
        flip=not args.no_flip,
        max_identities=args.max_identities,
        seed=args.split_seed,
        threads=args.threads,
    )
    val_crops = prepare_crops(args.val_dataset, settings, cache_dir=args.cache) if args.val_dataset else None
    _, train, val = train_and_validation(
        crops,
        val_crops,
        val_fraction=base.val_fraction,
        seed=args.split_seed,
        max_identities=args.max_identities,
    )
    grid = itertools.product(
        args.loss,
        args.lr,
        args.head_lr,
        args.head_init,
        args.frozen_blocks,
        args.epochs,
        args.batch_size,
        args.freeze_bn,
        args.cosface_margin,
    )
    for loss, lr, head_lr, head_init, frozen, epochs, batch, freeze_bn, margin in grid:
        config = replace(
            base,
            loss=loss,
            lr=lr,
            head_lr=head_lr,
            head_init=head_init,
            frozen_blocks=frozen,
            epochs=epochs,
            batch_size=batch,
            freeze_bn=bool(freeze_bn),
            cosface_margin=margin,
        )
        started = time.perf_counter()
        result = train_embedder(config, train, val, cache_dir=args.cache)
        line = {
            "base": args.base,
            "train_images": len(train),
            "val_probes": result.final.probes,
            "flip": config.flip,
            "loss": loss,
            "lr": lr,
            "head_lr": config.effective_head_lr,
            "head_init": head_init,
            "frozen_blocks": frozen,
            "epochs": epochs,
            "batch_size": batch,
            "freeze_bn": bool(freeze_bn),
            "cosface_margin": margin,
            "split_seed": args.split_seed,
            "val_top1_before": round(result.baseline.top1, 5),
            "val_top1_after": round(result.final.top1, 5),
            "val_top1_per_epoch": [round(h.val_top1, 5) for h in result.history],
            "loss_per_epoch": [round(h.mean_loss, 4) for h in result.history],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(line), flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

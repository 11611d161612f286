"""``facebank train`` end to end: crops → identity split → fine-tune → ONNX + parity → threshold → card.

Outputs in ``config.out``: ``<name>.pt`` (backbone state dict), ``<name>.onnx``, ``<name>.md`` (model card),
``<name>.toml`` (manifest fragment), ``metrics.json`` and ``split.json`` (the train/validation identities).
With ``config.val_dataset`` every identity of ``config.dataset`` trains and every identity of the validation
set validates (their folder names must not overlap); otherwise ``config.val_fraction`` of the identities is
held out.
LFW is never touched here: evaluate the result with ``facebank eval lfw --model <name>`` after registering.

Usage::

    report = run_training(TrainConfig(dataset=..., out=..., loss="cosface"), settings, cache_dir=...)
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.evaluation.run import calibrate_embeddings
from models.training.bases import get_base
from models.training.config import TrainConfig
from models.training.data import CropSet, IdentitySplit, prepare_crops, train_and_validation
from models.training.publish import (
    ExportedModel,
    export_trained,
    register_in_model_dir,
    trained_entry,
    write_fragment,
)
from models.training.train import TrainResult, embed, train_embedder
from service.config import Settings

FAR = 1e-3


def hardware() -> str:
    """CPU model and core count (this project trains on CPU unless a GPU is lent)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores; torch {torch.__version__}"


@dataclass
class TrainingReport:
    config: TrainConfig
    result: TrainResult
    split: IdentitySplit
    exported: ExportedModel
    threshold: float
    threshold_tar: float
    threshold_far: float
    images: int
    no_face: int
    hardware: str
    date: str
    registered: Path | None

    def metrics(self) -> dict[str, Any]:
        r = self.result
        return {
            "model": self.config.model_name,
            "base": self.config.base,
            "loss": self.config.loss,
            "date": self.date,
            "hardware": self.hardware,
            "threads": r.threads,
            "training_seconds": round(r.seconds, 1),
            "images": self.images,
            "no_face": self.no_face,
            "train_identities": len(self.split.train),
            "val_identities": len(self.split.val),
            "train_images": r.train_images,
            "val_images": r.val_images,
            "val_top1_before": r.baseline.top1,
            "val_top1_after": r.final.top1,
            "val_probes": r.final.probes,
            "history": [vars(h) for h in r.history],
            "threshold_far_1e-3_val": self.threshold,
            "threshold_tar_val": self.threshold_tar,
            "threshold_far_val": self.threshold_far,
            "parity": self.exported.parity.summary(),
            "config": self.config.as_dict(),
        }


def model_card(report: TrainingReport) -> str:
    c, r, m = report.config, report.result, report.metrics()
    base = get_base(c.base)
    epochs = "\n".join(
        f"| {h.epoch} | {h.mean_loss:.4f} | {100 * h.val_top1:.2f} % | {h.seconds:.0f} s |" for h in r.history
    )
    held_out = (
        f"validation: every identity of `{c.val_dataset}`"
        if c.val_dataset
        else f"identities split by seed {c.seed}"
    )
    data = (
        f"`{c.dataset}`: {report.images} photos, {report.no_face} without a face left out; {held_out}: "
        f"{len(report.split.train)} train / {len(report.split.val)} validation identities "
        "(disjoint; `split.json`)"
    )
    trained = (
        f"{r.train_images} crops, {c.epochs} epochs, {r.seconds:.0f} s on {report.hardware}, "
        f"{r.threads} threads; {report.date}"
    )
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in c.as_dict().items() if k not in {"notes"})
    return f"""# Model card: {c.model_name} (face embedder, fine-tuned)

| | |
| --- | --- |
| Manifest name / tag | `{c.model_name}` / `{c.model_name}@1` |
| Network | {base.network}, input and template of `{base.manifest_entry}` |
| Initialised from | `{c.init_path}` ({base.origin}) |
| Loss | `{c.loss}` with a fresh head over {r.num_classes} training identities (`models/losses/`) |
| Data | {data} |
| Training | {trained} |
| Licence | {base.licence} |

## Hyper-parameters

| field | value |
| --- | --- |
{params}

## Validation (held-out CelebA identities, never LFW)

Identification: gallery = first photo of each validation identity, probes = the others
({r.final.probes} probes, {r.final.gallery} identities).

| epoch | mean training loss | validation top-1 | time |
| --- | --- | --- | --- |
| 0 (initial weights) | | {100 * r.baseline.top1:.2f} % | |
{epochs}

## Threshold

`threshold = {report.threshold:.4f}`: the cosine at FAR = 1e-3 over every pair of validation-identity faces
(TAR {100 * report.threshold_tar:.2f} %, FAR {report.threshold_far:.5f}); a pair matches when
score >= threshold.

## Export

{m["parity"]}
(real aligned validation faces; the export refuses a graph whose cosine to PyTorch is <= 0.9999).

## LFW

Not measured during training (LFW is a test set). Register the model and run
`facebank eval lfw --model {c.model_name}`; the figures are in `docs/accuracy.md`.

## Limitations

- Fine-tuned on {r.train_images} photos of {r.num_classes} celebrities; a few epochs on a small set can trade
  general accuracy for fit to that set. Compare its LFW figures with the base model before using it.
- CelebA's and the base's training data's demographic skews carry over; error rates across groups have not
  been measured.
"""


def run_training(
    config: TrainConfig,
    settings: Settings,
    *,
    cache_dir: Path | None,
    register_dir: Path | None = None,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
    crops: CropSet | None = None,
    val_crops: CropSet | None = None,
) -> TrainingReport:
    """Run one training end to end and write its outputs to ``config.out``."""
    say = progress or (lambda _msg: None)
    base = get_base(config.base)
    # A wrong --init fails here, with WeightFileError naming the file, before anything is written.
    net = base.build(config.init_path)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if crops is None:
        crops = prepare_crops(config.dataset, settings, cache_dir=cache_dir, workers=workers, progress=say)
    identities = len(set(crops.identities))
    say(f"{len(crops)} crops of {identities} identities ({crops.no_face} photos without a face)")
    if config.val_dataset is not None and val_crops is None:
        val_crops = prepare_crops(
            config.val_dataset, settings, cache_dir=cache_dir, workers=workers, progress=say
        )
    split, train, val = train_and_validation(
        crops,
        val_crops if config.val_dataset is not None else None,
        val_fraction=config.val_fraction,
        max_identities=config.max_identities,
        seed=config.seed,
    )
    (out / "split.json").write_text(json.dumps({"train": split.train, "val": split.val}, indent=1))
    result = train_embedder(config, train, val, progress=say, net=net, cache_dir=cache_dir)
    val_embeddings = embed(result.net, val.crops, base.preprocess())
    point, _, _ = calibrate_embeddings(val_embeddings, list(val.identities), FAR)
    exported = export_trained(result.net, config.model_name, out, val.crops[:32], base)
    say(exported.parity.summary())
    report = TrainingReport(
        config=config,
        result=result,
        split=split,
        exported=exported,
        threshold=point.threshold,
        threshold_tar=point.tar,
        threshold_far=point.far,
        images=crops.images or len(crops),
        no_face=crops.no_face,
        hardware=hardware(),
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        registered=None,
    )
    card = out / f"{config.model_name}.md"
    card.write_text(model_card(report), encoding="utf-8")
    provenance = (
        f"fine-tuned by facebank models/training from {base.entry().tag} on {Path(config.dataset).name} "
        f"({config.loss} loss, {config.epochs} epochs, lr {config.lr:g}, batch {config.batch_size}, "
        f"seed {config.seed}); exported by models/export/onnx_export.py"
    )
    trained_by = (
        f"facebank train {config.dataset} --base {config.base} --loss {config.loss} "
        f"--epochs {config.epochs} --lr {config.lr:g} "
        f"--batch-size {config.batch_size} ({report.date}; every setting in the card)"
    )
    entry = trained_entry(
        config.model_name,
        weights=exported.weights,
        onnx=exported.onnx,
        threshold=point.threshold,
        provenance=provenance,
        trained_by=trained_by,
        card=f"cards/{config.model_name}.md",
        base=base,
    )
    write_fragment(entry, out / f"{config.model_name}.toml")
    if register_dir is not None:
        report.registered = register_in_model_dir(entry, exported, card, register_dir)
        say(f"registered {entry.tag} in {report.registered}")
    (out / "metrics.json").write_text(json.dumps(report.metrics(), indent=1, default=str))
    return report


__all__ = ["TrainingReport", "hardware", "model_card", "run_training"]

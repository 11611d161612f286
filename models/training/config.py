"""The typed training configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.evaluation.folders import inside_lfw
from models.training.bases import BaseName, get_base

LossName = Literal["softmax", "cosface", "coco", "csoftmax"]
LOSSES: tuple[LossName, ...] = ("softmax", "cosface", "coco", "csoftmax")
HeadInit = Literal["random", "centroids"]
Optimizer = Literal["adamw", "sgd"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a fine-tuning run depends on; written into the model card.

    Defaults are the published recipe (3 epochs, learning rate 1e-5, batch 32, 112 px crops) with AdamW.
    ``head_lr`` is the fresh head's learning rate (default: ``lr``); at 1e-5 a randomly initialised head
    barely moves in 3 epochs, which is why ``head_init="centroids"`` (class means of the initial
    embeddings) and a larger ``head_lr`` exist — see docs/accuracy.md for what the search found.

    ``base`` is the network (:mod:`models.training.bases`); ``init_weights`` defaults to its upstream file.
    ``frozen_blocks = k > 0`` freezes the stem and the first ``k`` blocks of the base (MobileFaceNet: 15
    bottleneck blocks, BatchNorm statistics included; EdgeFace-XS: 18) and trains the rest. The frozen
    trunk's outputs are computed once per crop (and its mirror image) and cached, so an epoch costs only the
    small top of the network: on a CPU this turns tens of minutes per epoch into seconds. ``0`` trains every
    layer, as the published recipe does.

    ``val_dataset``: validate on every identity of another folder-per-identity set (which must share no
    identity folder name with ``dataset``) and train on every identity of ``dataset``; without it, a
    ``val_fraction`` of ``dataset``'s identities is held out. ``max_identities``: train on the first that
    many identities (by folder name) only.
    """

    dataset: Path
    out: Path
    loss: LossName = "cosface"
    base: BaseName = "mobilefacenet"
    name: str = ""
    epochs: int = 3
    lr: float = 1e-5
    head_lr: float | None = None
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    weight_decay: float = 5e-4
    val_fraction: float = 0.2
    seed: int = 0
    init_weights: Path | None = None
    val_dataset: Path | None = None
    max_identities: int | None = None
    head_init: HeadInit = "random"
    freeze_bn: bool = False
    frozen_blocks: int = 0
    flip: bool = True
    threads: int = 0
    cosface_scale: float = 64.0
    cosface_margin: float = 0.35
    coco_alpha: float | None = None
    max_steps: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError("learning rates must be positive")
        blocks = get_base(self.base).blocks
        if not 0 <= self.frozen_blocks <= blocks:
            raise ValueError(
                f"frozen_blocks must be in [0, {blocks}] ({self.base} has {blocks}), got {self.frozen_blocks}"
            )
        if self.max_identities is not None and self.max_identities < 2:
            raise ValueError(f"max_identities must be at least 2, got {self.max_identities}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.name and not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: lower-case letters, digits, '.', '_' and '-' only")
        if inside_lfw(Path(self.dataset)) or (self.val_dataset and inside_lfw(Path(self.val_dataset))):
            raise ValueError("LFW is the test set: never train or validate on it")

    @property
    def model_name(self) -> str:
        return self.name or f"{self.base}-celeba-{self.loss}"

    @property
    def init_path(self) -> Path:
        return self.init_weights if self.init_weights is not None else get_base(self.base).default_init

    @property
    def effective_head_lr(self) -> float:
        return self.head_lr if self.head_lr is not None else self.lr

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}


__all__ = ["LOSSES", "HeadInit", "LossName", "Optimizer", "TrainConfig"]

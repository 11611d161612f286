"""Fine-tune a face embedder (a :mod:`models.training.bases` network) on aligned crops with one of the
project's losses.

The backbone starts from the upstream weights (loaded strictly); the loss brings a fresh head sized to the
training identities. Inputs are preprocessed with the embedder's manifest entry (mean, std, channel order),
exactly as the service feeds the exported graph. Validation embeds held-out identities with the backbone
in eval mode and scores identification top-1 before training and after each epoch.

With ``config.frozen_blocks = k > 0`` the network is cut in two: a frozen trunk (stem + first k blocks,
eval mode) whose outputs are computed once per crop and per mirror image, and the trainable top. Both halves
share their modules with the full network, so exporting it afterwards exports the trained weights.

Usage::

    result = train_embedder(config, train_crops, val_crops)
    result.history[-1].val_top1, result.baseline.top1
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.losses import COCOLoss, CosFaceLoss, CSoftmaxLoss, SoftmaxLoss
from models.training.bases import Base, get_base
from models.training.config import TrainConfig
from models.training.data import CropSet, ValidationResult, validation_top1
from service.runtime.manifest import Preprocess

log = logging.getLogger(__name__)

LossModule = SoftmaxLoss | CosFaceLoss | COCOLoss | CSoftmaxLoss
EMBED_BATCH = 128


def to_tensor(crops: np.ndarray, preprocess: Preprocess) -> Tensor:
    """(N, H, W, 3) uint8 RGB → (N, 3, H, W) float32 as the manifest says (same maths as the service)."""
    pixels = torch.from_numpy(np.ascontiguousarray(crops)).float()
    if preprocess.channel_order == "BGR":
        pixels = pixels.flip(-1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32)
    std = torch.tensor(preprocess.std, dtype=torch.float32)
    return ((pixels - mean) / std).permute(0, 3, 1, 2).contiguous()


def make_loss(config: TrainConfig, num_classes: int, in_features: int | None = None) -> LossModule:
    """A fresh head for ``config.loss`` over ``num_classes`` training identities (``in_features``: the
    base's embedding dimension unless given)."""
    in_features = in_features if in_features is not None else get_base(config.base).dim
    if config.loss == "softmax":
        return SoftmaxLoss(in_features, num_classes)
    if config.loss == "cosface":
        return CosFaceLoss(in_features, num_classes, scale=config.cosface_scale, margin=config.cosface_margin)
    if config.loss == "coco":
        return COCOLoss(in_features, num_classes, alpha=config.coco_alpha)
    return CSoftmaxLoss(in_features, num_classes)


@torch.no_grad()
def embed(
    net: nn.Module, crops: np.ndarray, preprocess: Preprocess, batch: int = EMBED_BATCH, *, flip: bool = False
) -> np.ndarray:
    """L2-normalised embeddings of crops with the network in eval mode (restores its mode after).

    ``flip``: of the mean of the crop's and its mirror image's raw embeddings (flip test-time augmentation).
    """
    was_training = net.training
    net.eval()
    out = []
    for s in range(0, len(crops), batch):
        part = crops[s : s + batch]
        vectors = net(to_tensor(part, preprocess))
        if flip:
            vectors = vectors + net(to_tensor(part[:, :, ::-1], preprocess))
        out.append(F.normalize(vectors, dim=1).numpy())
    net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def trunk_outputs(
    trunk: nn.Module,
    crops: np.ndarray,
    preprocess: Preprocess,
    *,
    mirror: bool = False,
    cache: Path | None = None,
    batch: int = 64,
) -> np.ndarray:
    """The frozen trunk's float16 outputs for ``crops`` (mirrored if asked), cached in ``cache``."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    trunk.eval()
    if mirror:
        crops = crops[:, :, ::-1]
    parts = [
        trunk(to_tensor(crops[s : s + batch], preprocess)).numpy().astype(np.float16)
        for s in range(0, len(crops), batch)
    ]
    outputs = np.concatenate(parts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, outputs)
        os.replace(tmp, cache)
    return outputs


def _trunk_key(base: Base, net: nn.Module, frozen_blocks: int, crops: np.ndarray, mirror: bool) -> str:
    digest = hashlib.sha256()
    trunk, _ = base.split(net, frozen_blocks)
    for name, tensor in trunk.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    digest.update(np.ascontiguousarray(crops).tobytes())
    digest.update(f"{frozen_blocks}:{mirror}:{crops.shape}".encode())
    return digest.hexdigest()[:20]


@torch.no_grad()
def init_head_from_centroids(loss: LossModule, embeddings: np.ndarray, labels: np.ndarray) -> None:
    """Point every class vector at the mean direction of its class's initial embeddings."""
    num_classes = int(labels.max()) + 1
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings)
    means = torch.from_numpy(sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).float()
    if isinstance(loss, CosFaceLoss):
        loss.head.weight.copy_(means)
    elif isinstance(loss, COCOLoss):
        loss.centroids.copy_(means)
    else:
        loss.classifier.weight.copy_(means)
        if loss.classifier.bias is not None:
            loss.classifier.bias.zero_()
        if isinstance(loss, CSoftmaxLoss):
            loss.centres.copy_(means)
            loss.seen.fill_(True)


@dataclass
class EpochRecord:
    epoch: int
    mean_loss: float
    val_top1: float
    seconds: float


@dataclass
class TrainResult:
    net: nn.Module
    loss: LossModule
    baseline: ValidationResult
    final: ValidationResult
    history: list[EpochRecord]
    step_losses: list[float]
    seconds: float
    num_classes: int
    train_images: int
    val_images: int
    threads: int
    extra: dict[str, object] = field(default_factory=dict)


class _Inputs:
    """Batches for the trainable part: raw crops through the whole net, or cached trunk outputs."""

    def __init__(
        self,
        net: nn.Module,
        config: TrainConfig,
        crops: np.ndarray,
        preprocess: Preprocess,
        cache_dir: Path | None,
        say: Callable[[str], None],
    ) -> None:
        self.crops, self.preprocess, self.k = crops, preprocess, config.frozen_blocks
        base = get_base(config.base)
        self.trunk, self.top = base.split(net, self.k)
        self.model: nn.Module = self.top if self.k else net
        self.outputs: list[np.ndarray] = []
        if self.k:
            for p in self.trunk.parameters():
                p.requires_grad_(False)
            started = time.perf_counter()
            for mirror in (False, True) if config.flip else (False,):
                key = _trunk_key(base, net, self.k, crops, mirror)
                cache = cache_dir / "trunk" / f"{key}.npy" if cache_dir else None
                self.outputs.append(trunk_outputs(self.trunk, crops, preprocess, mirror=mirror, cache=cache))
            say(f"frozen trunk (stem + {self.k} blocks): outputs in {time.perf_counter() - started:.0f} s")

    def batch(self, rows: np.ndarray, mirror: np.ndarray) -> Tensor:
        if self.k:
            chosen = np.where(mirror[:, None, None, None], self.outputs[-1][rows], self.outputs[0][rows])
            return torch.from_numpy(chosen.astype(np.float32))
        crops = self.crops[rows]
        crops = np.where(mirror[:, None, None, None], crops[:, :, ::-1], crops)
        return to_tensor(crops, self.preprocess)

    def train_mode(self, freeze_bn: bool) -> None:
        self.model.train()
        if self.k:
            self.trunk.eval()  # a frozen trunk keeps its BatchNorm statistics
        if freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()


def _embed_with(
    model: nn.Module, inputs: Callable[[np.ndarray], Tensor], count: int, batch: int = EMBED_BATCH
) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [
            F.normalize(model(inputs(np.arange(s, min(s + batch, count)))), dim=1).numpy()
            for s in range(0, count, batch)
        ]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def train_embedder(
    config: TrainConfig,
    train: CropSet,
    val: CropSet | None,
    *,
    progress: Callable[[str], None] | None = None,
    net: nn.Module | None = None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune and validate; ``net`` overrides loading ``config.init_path`` (tests pass their own)."""
    say = progress or (lambda _msg: None)
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    base = get_base(config.base)
    preprocess = base.preprocess()
    net = net if net is not None else base.build(config.init_path)
    labels, names = train.labels()
    loss = make_loss(config, len(names))
    started = time.perf_counter()
    inputs = _Inputs(net, config, train.crops, preprocess, cache_dir, say)
    val_inputs = None
    if val is not None and len(val) and config.frozen_blocks:
        val_inputs = _Inputs(net, replace(config, flip=False), val.crops, preprocess, cache_dir, say)
    no_mirror = np.zeros(1, bool)

    def embed_train() -> np.ndarray:
        return _embed_with(inputs.model, lambda r: inputs.batch(r, no_mirror.repeat(len(r))), len(train))

    def validate() -> ValidationResult:
        if val is None or len(val) == 0:
            return ValidationResult(top1=math.nan, probes=0, gallery=0)
        if val_inputs is not None:
            vectors = _embed_with(
                val_inputs.model, lambda r: val_inputs.batch(r, no_mirror.repeat(len(r))), len(val)
            )
        else:
            vectors = embed(net, val.crops, preprocess)
        return validation_top1(vectors, list(val.identities))

    if config.head_init == "centroids":
        init_head_from_centroids(loss, embed_train(), labels)
    baseline = validate()
    say(f"before training: validation top-1 {100 * baseline.top1:.2f} % ({baseline.probes} probes)")
    groups = [
        {"params": [p for p in inputs.model.parameters() if p.requires_grad], "lr": config.lr},
        {"params": list(loss.parameters()), "lr": config.effective_head_lr},
    ]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups, momentum=0.9, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train) // config.batch_size)
    history: list[EpochRecord] = []
    step_losses: list[float] = []
    steps = 0
    final = baseline
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        inputs.train_mode(config.freeze_bn)
        loss.train()
        order = rng.permutation(len(train))
        epoch_losses = []
        for step in range(steps_per_epoch):
            rows = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            mirror = rng.random(len(rows)) < 0.5 if config.flip else np.zeros(len(rows), bool)
            value = loss(inputs.model(inputs.batch(rows, mirror)), torch.from_numpy(labels[rows]))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if not math.isfinite(value.item()):
                raise FloatingPointError(f"loss became {value.item()} at epoch {epoch}, step {step}")
            epoch_losses.append(value.item())
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                break
        step_losses += epoch_losses
        final = validate()
        record = EpochRecord(
            epoch=epoch,
            mean_loss=float(np.mean(epoch_losses)),
            val_top1=final.top1,
            seconds=time.perf_counter() - epoch_started,
        )
        history.append(record)
        say(
            f"epoch {epoch}/{config.epochs}: loss {record.mean_loss:.4f}, validation top-1 "
            f"{100 * record.val_top1:.2f} % ({record.seconds:.0f} s)"
        )
        if config.max_steps is not None and steps >= config.max_steps:
            break
    net.eval()
    return TrainResult(
        net=net,
        loss=loss,
        baseline=baseline,
        final=final,
        history=history,
        step_losses=step_losses,
        seconds=time.perf_counter() - started,
        num_classes=len(names),
        train_images=len(train),
        val_images=0 if val is None else len(val),
        threads=threads,
    )


__all__ = [
    "EpochRecord",
    "LossModule",
    "TrainResult",
    "embed",
    "init_head_from_centroids",
    "make_loss",
    "to_tensor",
    "train_embedder",
    "trunk_outputs",
]

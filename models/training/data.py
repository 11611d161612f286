"""Training data: detect and align a folder-per-identity set once with the service's pipeline, cache the
112×112 crops, split the identities into disjoint train and validation sets.

Faces are chosen as the service enrols them (the largest of the photo); photos without a face are left out
and counted. Crops are cached by image sha256 and pipeline configuration (see
:mod:`models.evaluation.faces`), so the second run of any training reads them from disk.

Usage::

    crops = prepare_crops(Path("../shared/data/celeba-train"), settings, cache_dir=Path("cache"))
    split = split_identities(crops.identities, val_fraction=0.2, seed=0)
    train, val = crops.subset(split.train), crops.subset(split.val)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.evaluation.folders import list_identity_folders
from models.evaluation.protocol import identification_ranks, top_k_rates
from service.config import Settings


@dataclass(frozen=True)
class CropSet:
    """Aligned crops with one identity label each, in the data set's sorted file order."""

    crops: np.ndarray  # (N, H, W, 3) uint8 RGB
    identities: tuple[str, ...]
    paths: tuple[str, ...]
    images: int = 0  # files listed, faces or not
    no_face: int = 0  # files left out: no face found, or not decodable

    def __post_init__(self) -> None:
        if not len(self.crops) == len(self.identities) == len(self.paths):
            raise ValueError("one identity and one path per crop")

    def __len__(self) -> int:
        return len(self.identities)

    def subset(self, identities: Iterable[str]) -> CropSet:
        wanted = set(identities)
        rows = [i for i, identity in enumerate(self.identities) if identity in wanted]
        return CropSet(
            crops=self.crops[rows],
            identities=tuple(self.identities[i] for i in rows),
            paths=tuple(self.paths[i] for i in rows),
        )

    def labels(self) -> tuple[np.ndarray, list[str]]:
        """Integer class per crop and the class names (sorted identities)."""
        names = sorted(set(self.identities))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[i] for i in self.identities], np.int64), names


def prepare_crops(
    dataset: Path,
    settings: Settings,
    *,
    cache_dir: Path | None,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> CropSet:
    """Detect, choose the largest face, align — once per image and pipeline configuration (cached)."""
    from models.evaluation.run import embed_paths

    items = list_identity_folders(dataset)
    embedded = embed_paths(
        settings,
        [item.path for item in items],
        choice="largest",
        cache_dir=cache_dir,
        workers=workers,
        want_crops=True,
        want_embeddings=False,
        progress=progress,
    )
    batch = embedded.batch
    assert batch.crops is not None
    found = batch.found
    return CropSet(
        crops=batch.crops[found],
        identities=tuple(item.identity for item, ok in zip(items, found, strict=True) if ok),
        paths=tuple(str(item.path) for item, ok in zip(items, found, strict=True) if ok),
        images=len(items),
        no_face=batch.no_face,
    )


@dataclass(frozen=True)
class IdentitySplit:
    train: tuple[str, ...]
    val: tuple[str, ...]


def split_identities(identities: Iterable[str], *, val_fraction: float, seed: int) -> IdentitySplit:
    """Disjoint train and validation identities, drawn with a seeded permutation of the sorted names.

    The result depends only on the set of names, the fraction and the seed. At least one identity goes
    to each side.

    Example:
        >>> split = split_identities(["a", "b", "c", "d", "a"], val_fraction=0.25, seed=0)
        >>> len(split.train), len(split.val), set(split.train) & set(split.val)
        (3, 1, set())
    """
    names = sorted(set(identities))
    if len(names) < 2:
        raise ValueError("need at least two identities to split")
    count = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:count])
    train = sorted(names[i] for i in order[count:])
    return IdentitySplit(train=tuple(train), val=tuple(val))


def train_and_validation(
    crops: CropSet,
    val_crops: CropSet | None,
    *,
    val_fraction: float,
    seed: int,
    max_identities: int | None = None,
) -> tuple[IdentitySplit, CropSet, CropSet]:
    """Every identity of ``crops`` trains and every identity of ``val_crops`` validates, or, without
    ``val_crops``, a seeded ``val_fraction`` of ``crops``' identities is held out. Raises ``ValueError`` when
    the two sets share an identity folder name: validation must be identity-disjoint.

    ``max_identities``: train on the first that many identities (by folder name) of ``crops`` only (what
    two CPU cores can afford; the others are not used at all)."""
    if max_identities is not None:
        crops = crops.subset(sorted(set(crops.identities))[:max_identities])
    if val_crops is None:
        split = split_identities(crops.identities, val_fraction=val_fraction, seed=seed)
        return split, crops.subset(split.train), crops.subset(split.val)
    split = IdentitySplit(
        train=tuple(sorted(set(crops.identities))), val=tuple(sorted(set(val_crops.identities)))
    )
    shared = set(split.train) & set(split.val)
    if shared:
        raise ValueError(
            f"the training and validation sets share {len(shared)} identity folder names "
            f"(e.g. {sorted(shared)[0]}): validation must be identity-disjoint"
        )
    return split, crops, val_crops


@dataclass(frozen=True)
class ValidationResult:
    top1: float
    probes: int
    gallery: int


def validation_top1(embeddings: np.ndarray, identities: Sequence[str]) -> ValidationResult:
    """Identification on held-out identities: gallery = each identity's first image, probes = the rest.

    Example:
        >>> e = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.98]])
        >>> validation_top1(e / np.linalg.norm(e, axis=1, keepdims=True), ["a", "b", "a", "b"]).top1
        1.0
    """
    first: dict[str, int] = {}
    for row, identity in enumerate(identities):
        first.setdefault(identity, row)
    gallery_rows = sorted(first.values())
    gallery_set = set(gallery_rows)
    probe_rows = [row for row in range(len(identities)) if row not in gallery_set]
    if not probe_rows:
        raise ValueError("validation needs an identity with at least two images")
    ranks = identification_ranks(
        embeddings[probe_rows],
        [identities[r] for r in probe_rows],
        embeddings[gallery_rows],
        [identities[r] for r in gallery_rows],
    )
    return ValidationResult(
        top1=top_k_rates(ranks, (1,))[1], probes=len(probe_rows), gallery=len(gallery_rows)
    )


__all__ = [
    "CropSet",
    "IdentitySplit",
    "ValidationResult",
    "prepare_crops",
    "split_identities",
    "train_and_validation",
    "validation_top1",
]

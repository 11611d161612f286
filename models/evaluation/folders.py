"""Folder-per-identity data sets (``ROOT/<identity>/<file>.jpg``), as ``../shared/data/celeba-train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Where the evaluation data sets lie beside the repository (../shared); LFW is a test set only.
DEFAULT_LFW = Path("../shared/data/lfw")
DEFAULT_CELEBA = Path("../shared/data/celeba-train")

def inside_lfw(path: Path) -> bool:
    """True for a path inside a folder named lfw (links resolved): LFW is the test set, never for training,
    calibrating or choosing a threshold."""
    return any(part.lower() == "lfw" for part in Path(path).resolve().parts)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    identity: str


def list_identity_folders(root: Path, *, min_images: int = 1) -> list[LabelledImage]:
    """Every image under ``root/<identity>/``, sorted by identity then file name.

    Identities with fewer than ``min_images`` images are left out. Raises FileNotFoundError when nothing
    is found, so a wrong path fails loudly.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    images: list[LabelledImage] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) >= min_images:
            images += [LabelledImage(path=f, identity=folder.name) for f in files]
    if not images:
        raise FileNotFoundError(f"no images in identity folders under {root}")
    return images


__all__ = ["IMAGE_SUFFIXES", "LabelledImage", "list_identity_folders"]

"""What the benchmark runs on: LFW photos from ../shared, 640×480 canvases of them, synthetic galleries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field

from service.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


class BenchSettings(Settings):
    """The service's settings plus where the benchmark finds its data (FACEBANK_SHARED_DIR)."""

    shared_dir: Path = Field(
        default=REPO_ROOT.parent / "shared", description="LFW and upstream weights, as the tests find them."
    )


def shared_dir() -> Path:
    """../shared beside the repository (or FACEBANK_SHARED_DIR)."""
    return BenchSettings().shared_dir


class DataMissing(RuntimeError):
    """LFW or the upstream models are not where the benchmark looks for them."""


def lfw_dir(shared: Path) -> Path:
    lfw = shared / "data" / "lfw"
    if not lfw.is_dir():
        raise DataMissing(f"LFW photos not found in {lfw} (set FACEBANK_SHARED_DIR or pass --shared)")
    return lfw


def lfw_people_with_two_photos(lfw: Path, count: int) -> list[str]:
    """The first `count` people (by name) who have a second photo to identify."""
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    return [n for n in names if (lfw / n / f"{n}_0002.jpg").is_file()][:count]


def lfw_photos(lfw: Path, count: int) -> list[Path]:
    """The first photo of the first `count` people by name: one face each, varied people."""
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())[:count]
    return [lfw / n / f"{n}_0001.jpg" for n in names]


def canvases_640x480(photos: list[Path], count: int) -> list[Image.Image]:
    """`count` grey 640×480 canvases, each holding four LFW photos scaled to 240×240 in a 2×2 grid."""
    if not photos:
        raise DataMissing("no LFW photos to compose canvases from")
    canvases = []
    for i in range(count):
        canvas = Image.new("RGB", (640, 480), (127, 127, 127))
        for slot, (x, y) in enumerate(((40, 0), (360, 0), (40, 240), (360, 240))):
            with Image.open(photos[(4 * i + slot) % len(photos)]) as photo:
                canvas.paste(photo.convert("RGB").resize((240, 240), Image.Resampling.BILINEAR), (x, y))
        canvases.append(canvas)
    return canvases


def unit_vector_chunks(n: int, dim: int, *, seed: int = 0, chunk: int = 262_144) -> Iterator[np.ndarray]:
    """`n` random unit vectors (float32) in chunks, so a 10M gallery never needs a float64 copy."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def unit_vectors(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    start = 0
    for block in unit_vector_chunks(n, dim, seed=seed):
        out[start : start + len(block)] = block
        start += len(block)
    return out

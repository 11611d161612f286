"""Face choice, the npz cache and embed_files' bookkeeping, on a stub pipeline (no models needed); the
cache keys of the real pipeline (prepared models)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.evaluation.faces import ArrayCache, CacheKeys, FaceBatch, choose_face, embed_files
from service.config import Settings
from service.pipeline.factory import build_pipeline
from service.runtime.manifest import load_manifest
from service.schemas import DetectedFace


def _face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> DetectedFace:
    return DetectedFace((x1, y1, x2, y2), score, np.zeros((5, 2), np.float32))


def test_choose_face_central_picks_the_box_nearest_the_image_centre() -> None:
    big_corner, small_centre = _face(0, 0, 120, 120, 0.99), _face(110, 110, 140, 140, 0.6)
    assert choose_face([big_corner, small_centre], 250, 250, "central") is small_centre
    assert choose_face([big_corner, small_centre], 250, 250, "largest") is big_corner
    assert choose_face([], 250, 250, "central") is None


def test_array_cache_round_trips_rows_through_disk(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "c")
    cache.put(["a", "b"], value=np.array([[1.0, 2.0], [3.0, 4.0]]), count=np.array([1, 0]))
    reopened = ArrayCache(tmp_path / "c")
    assert len(reopened) == 2 and "b" in reopened
    row = reopened.get("b")
    assert row is not None
    assert row["value"].tolist() == [3.0, 4.0] and int(row["count"]) == 0
    assert reopened.get("missing") is None


def test_array_cache_without_a_folder_writes_nothing(tmp_path: Path) -> None:
    cache = ArrayCache(None)
    cache.put(["a"], value=np.zeros((1, 2)))
    assert "a" in cache
    assert not any(tmp_path.iterdir())


def test_array_cache_refuses_arrays_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one row per key"):
        ArrayCache(None).put(["a", "b"], value=np.zeros((3, 2)))


@dataclass
class _Config:
    input_size: tuple[int, int] = (8, 8)
    dim: int = 4
    max_batch: int = 2


@dataclass
class _Embedder:
    config: _Config = field(default_factory=_Config)
    calls: int = 0

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.calls += len(crops)
        vectors = np.stack([np.r_[c.mean(), 1.0, 0.0, 0.0] for c in crops.astype(np.float32)])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass
class _Pipeline:
    """Finds one face in bright images, two in very bright ones, none in dark ones."""

    embedder: _Embedder = field(default_factory=_Embedder)
    detections: int = 0

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        self.detections += 1
        level = int(np.asarray(image).mean())
        if level < 50:
            return []
        faces = [_face(10, 10, 20, 20)]
        return [*faces, _face(0, 0, 5, 5)] if level > 200 else faces

    def align(self, image: Image.Image, faces: list[DetectedFace]) -> np.ndarray:
        level = int(np.asarray(image).mean())
        return np.full((len(faces), 8, 8, 3), level, np.uint8)


def _photos(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for name, level in [("dark", 10), ("one", 120), ("two", 230)]:
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (level,) * 3).save(buffer, format="PNG")
        path = folder / f"{name}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not an image")
    return [*paths, broken]


def _run(
    paths: list[Path], pipeline: _Pipeline, cache: Path | None, keys: CacheKeys, **kw: object
) -> FaceBatch:
    return embed_files(paths, pipeline, keys=keys, cache_dir=cache, workers=2, **kw)  # type: ignore[arg-type]


def test_embed_files_counts_failures_and_leaves_nan_rows(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    batch = _run(paths, _Pipeline(), None, CacheKeys("c", "e", "stub@1"))
    assert batch.faces_found.tolist() == [0, 1, 2, -1]
    assert batch.no_face == 2 and batch.unreadable == 1 and batch.several_faces == 1
    assert batch.embeddings is not None
    assert np.isnan(batch.embeddings[[0, 3]]).all()
    assert np.allclose(np.linalg.norm(batch.embeddings[[1, 2]], axis=1), 1.0)


def test_embed_files_reads_the_second_run_from_the_cache(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    keys = CacheKeys("crops-key", "embed-key", "stub@1")
    first = _run(paths, _Pipeline(), tmp_path / "cache", keys)
    again = _Pipeline()
    second = _run(paths, again, tmp_path / "cache", keys)
    assert again.detections == 0 and again.embedder.calls == 0
    assert second.faces_found.tolist() == first.faces_found.tolist()
    assert np.array_equal(second.embeddings, first.embeddings, equal_nan=True)


def test_a_new_embedder_key_reuses_the_crops_and_only_re_embeds(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    _run(paths, _Pipeline(), tmp_path / "cache", CacheKeys("crops-key", "model-a", "a@1"))
    other = _Pipeline()
    batch = _run(paths, other, tmp_path / "cache", CacheKeys("crops-key", "model-b", "b@1"), want_crops=True)
    assert other.detections == 0
    assert other.embedder.calls == 2
    assert batch.crops is not None and batch.crops[1].mean() == 120


def test_fp16_embeddings_are_cached_apart_from_fp32_ones_while_sharing_the_crops(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, embedder="mobilefacenet", device="cpu")
    pipeline, models = build_pipeline(settings)
    entry = load_manifest(model_dir / "manifest.toml").get(settings.embedder)
    assert entry.fp16_onnx_sha256 is not None
    fp32 = CacheKeys.for_pipeline(settings, models, pipeline, "central")
    # What load_models returns for fp16 on a CUDA machine (here it refuses fp16 at start).
    fp16_models = replace(models, embedder_precision="fp16", embedder_onnx_sha256=entry.fp16_onnx_sha256)
    fp16_settings = settings.model_copy(update={"embedder_precision": "fp16"})
    fp16 = CacheKeys.for_pipeline(fp16_settings, fp16_models, pipeline, "central")
    assert fp16.crops == fp32.crops  # same detector and alignment: only the embedding differs
    assert fp16.embeddings != fp32.embeddings
    assert fp16.embeddings.startswith("mobilefacenet_1-fp16-") and fp16.embedder_tag == fp32.embedder_tag
    # Another fp16 file (a new export) is another cache.
    other_file = replace(fp16_models, embedder_onnx_sha256="0" * 64)
    other = CacheKeys.for_pipeline(fp16_settings, other_file, pipeline, "central")
    assert other.embeddings != fp16.embeddings


def test_the_fp32_embedding_key_is_the_one_caches_were_written_under(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, embedder="mobilefacenet", device="cpu")
    pipeline, models = build_pipeline(settings)
    keys = CacheKeys.for_pipeline(settings, models, pipeline, "central")
    onnx_sha256 = load_manifest(model_dir / "manifest.toml").get(settings.embedder).onnx_sha256
    recipe = {"crops": keys.crops, "embedder": "mobilefacenet@1", "onnx": onnx_sha256}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    assert keys.embeddings == f"mobilefacenet_1-{digest}"

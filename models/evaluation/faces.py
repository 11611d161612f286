"""Run image files through the service's own pipeline (decode → detect → align → embed), with a cache.

One face per image: the detector runs exactly as the service configures it, and when it finds several faces
one is chosen — the most central (``"central"``: box centre nearest the image centre, what LFW's
face-centred photos call for) or the largest (``"largest"``: the service's enrolment policy, used for
training data). An image with no face, or one that cannot be decoded, is a failure: its embedding is a row
of NaN, it is counted, and the protocols in :mod:`models.evaluation.protocol` score it as wrong. There is no
fallback crop.

Cache: aligned crops and embeddings are stored in append-only ``.npz`` chunks keyed by the image's sha256,
under folders named after everything that could change them — crops after the detector (tag and ONNX hash),
the detection limits, the alignment template and the face choice; embeddings after the crop key plus the
embedder (tag and ONNX hash, and for the fp16 export its precision and file hash: fp16 shares fp32's tag).
Evaluating a second embedder, or the same one in fp16, re-uses the crops and only re-embeds.

Usage::

    pipeline, models = build_pipeline(settings)
    keys = CacheKeys.for_pipeline(settings, models, pipeline, choice="central")
    batch = embed_files(paths, pipeline, keys=keys, cache_dir=Path("cache"), workers=2)
    batch.embeddings, batch.no_face
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.pipeline import FacePipeline, ImageDecodeError, decode_image
from service.pipeline.face_policy import largest_face
from service.runtime.manifest import ManifestError, load_manifest
from service.schemas import DetectedFace

if TYPE_CHECKING:
    from service.config import Settings
    from service.runtime import LoadedModels

log = logging.getLogger(__name__)

FaceChoice = Literal["central", "largest"]
Progress = Callable[[str], None]

# Bump when the way crops or embeddings are made here changes, so old cache entries stop matching.
CACHE_VERSION = "1"
UNREADABLE = -1  # faces_found for a file that could not be decoded
BLOCK = 1024  # images per cache chunk


def choose_face(
    faces: Sequence[DetectedFace], width: int, height: int, choice: FaceChoice
) -> DetectedFace | None:
    """The face to use from an image's detections, or None when there are none.

    Example:
        >>> import numpy as np
        >>> corner = DetectedFace((0, 0, 60, 60), 0.99, np.zeros((5, 2)))
        >>> middle = DetectedFace((80, 80, 120, 120), 0.90, np.zeros((5, 2)))
        >>> choose_face([corner, middle], 200, 200, "central") is middle
        True
        >>> choose_face([corner, middle], 200, 200, "largest") is corner
        True
    """
    if not faces:
        return None
    if choice == "largest":
        return largest_face(faces)
    cx, cy = width / 2, height / 2

    def distance(face: DetectedFace) -> float:
        x1, y1, x2, y2 = face.bbox
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    return min(faces, key=lambda f: (distance(f), -f.score))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """Folder names for the crop and the embedding caches of one pipeline configuration."""

    crops: str
    embeddings: str
    embedder_tag: str

    @classmethod
    def for_pipeline(
        cls, settings: Settings, models: LoadedModels, pipeline: FacePipeline, choice: FaceChoice
    ) -> CacheKeys:
        hashes = _prepared_onnx_hashes(settings.model_dir)
        cfg = pipeline.embedder.config
        crop_recipe = {
            "version": CACHE_VERSION,
            "detector": models.detector_tag,
            "detector_onnx": hashes.get(settings.detector),
            "limits": asdict(pipeline.limits),
            "max_image_pixels": settings.max_image_pixels,
            "template": np.asarray(cfg.template).round(4).tolist(),
            "input_size": list(cfg.input_size),
            "choice": choice,
        }
        crops = f"{_safe(models.detector_tag)}-{_digest(crop_recipe)}"
        embed_recipe: dict[str, object] = {
            "crops": crops,
            "embedder": models.embedder_tag,
            "onnx": hashes.get(settings.embedder),
        }
        name = _safe(models.embedder_tag)
        # fp16 keeps the fp32 tag (the gallery mixes them), so only these keep its embeddings apart; fp32's
        # recipe is left as it was so that existing caches stay valid.
        if models.embedder_precision != "fp32":
            embed_recipe["precision"] = models.embedder_precision
            embed_recipe["fp16_onnx"] = models.embedder_onnx_sha256
            name = f"{name}-{models.embedder_precision}"
        embeddings = f"{name}-{_digest(embed_recipe)}"
        return cls(crops=crops, embeddings=embeddings, embedder_tag=models.embedder_tag)


def _prepared_onnx_hashes(model_dir: Path) -> dict[str, str | None]:
    try:
        return {entry.name: entry.onnx_sha256 for entry in load_manifest(model_dir / "manifest.toml")}
    except ManifestError:
        return {}


def _digest(recipe: object) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _safe(tag: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)


class ArrayCache:
    """Rows keyed by a string, kept in append-only ``chunk-*.npz`` files under one folder.

    ``folder=None`` keeps nothing on disk. Each :meth:`put` writes one new chunk (to a temporary name, then
    renamed), so an interrupted run keeps what it finished and concurrent runs never corrupt each other.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._rows: dict[str, tuple[int, int]] = {}
        self._chunks: list[dict[str, np.ndarray]] = []
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("chunk-*.npz")):
                try:
                    with np.load(path) as data:
                        self._add({name: data[name] for name in data.files})
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("ignoring unreadable cache chunk %s: %s", path, exc)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def _add(self, arrays: dict[str, np.ndarray]) -> None:
        index = len(self._chunks)
        self._chunks.append(arrays)
        for row, key in enumerate(arrays["key"].tolist()):
            self._rows[key] = (index, row)

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        where = self._rows.get(key)
        if where is None:
            return None
        chunk = self._chunks[where[0]]
        return {name: values[where[1]] for name, values in chunk.items() if name != "key"}

    def put(self, keys: Sequence[str], **arrays: np.ndarray) -> None:
        if not keys:
            return
        data = {"key": np.asarray(keys), **{name: np.asarray(values) for name, values in arrays.items()}}
        if any(len(values) != len(keys) for values in data.values()):
            raise ValueError("every array needs one row per key")
        self._add(data)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"chunk-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as handle:
                np.savez(handle, **data)  # type: ignore[arg-type]
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class FaceBatch:
    """Per input file: its sha256, how many faces the detector found, the chosen crop and embedding.

    ``faces_found`` is ``-1`` for a file that could not be decoded. Rows of ``embeddings`` are NaN (and
    rows of ``crops`` zero) where no face was used.
    """

    keys: tuple[str, ...]
    faces_found: np.ndarray
    embeddings: np.ndarray | None
    crops: np.ndarray | None

    @property
    def found(self) -> np.ndarray:
        return self.faces_found > 0

    @property
    def no_face(self) -> int:
        """Files where no face was used: none detected, or not decodable."""
        return int(np.sum(~self.found))

    @property
    def unreadable(self) -> int:
        return int(np.sum(self.faces_found == UNREADABLE))

    @property
    def several_faces(self) -> int:
        return int(np.sum(self.faces_found > 1))


def hash_files(paths: Sequence[Path], workers: int = 2) -> list[str]:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda p: sha256_bytes(Path(p).read_bytes()), paths, chunksize=64))


def _detect_and_align(
    path: Path, pipeline: FacePipeline, choice: FaceChoice, max_pixels: int
) -> tuple[int, np.ndarray | None]:
    try:
        image = decode_image(Path(path).read_bytes(), max_pixels=max_pixels)
    except ImageDecodeError as exc:
        log.warning("%s: %s", path, exc.message)
        return UNREADABLE, None
    faces = pipeline.detect(image)
    face = choose_face(faces, image.width, image.height, choice)
    if face is None:
        return 0, None
    return len(faces), pipeline.align(image, [face])[0]


def _blocks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_files(
    paths: Sequence[Path],
    pipeline: FacePipeline,
    *,
    keys: CacheKeys,
    cache_dir: Path | None,
    choice: FaceChoice = "central",
    workers: int = 2,
    max_pixels: int = 40_000_000,
    want_embeddings: bool = True,
    want_crops: bool = False,
    progress: Progress | None = None,
) -> FaceBatch:
    """Crops and/or embeddings of one face per file, computed once and then read from the cache.

    Detection, alignment and embedding run on a pool of ``workers`` threads (onnxruntime and Pillow release
    the GIL; with two cores, two workers with one onnxruntime thread each beat one worker with two).
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    shas = hash_files(paths, workers)
    root = cache_dir
    crop_cache = ArrayCache(root / "crops" / keys.crops if root else None)
    embed_cache = (
        ArrayCache(root / "embeddings" / keys.embeddings if root else None) if want_embeddings else None
    )
    cfg = pipeline.embedder.config
    width, height = cfg.input_size
    faces_found = np.zeros(len(paths), np.int64)
    embeddings = np.full((len(paths), cfg.dim), np.nan, np.float32) if want_embeddings else None
    crops = np.zeros((len(paths), height, width, 3), np.uint8) if want_crops else None

    def need_crop(i: int) -> bool:
        return want_crops or embed_cache is None or shas[i] not in embed_cache

    # 1. embeddings already cached
    if embed_cache is not None and embeddings is not None:
        for i, sha in enumerate(shas):
            row = embed_cache.get(sha)
            if row is not None:
                faces_found[i] = int(row["faces_found"])
                embeddings[i] = row["embedding"]
    # 2. crops: from the cache, else detect and align
    todo = [i for i in range(len(paths)) if need_crop(i)]
    crop_of: dict[int, np.ndarray] = {}
    missing = []
    for i in todo:
        row = crop_cache.get(shas[i])
        if row is None:
            missing.append(i)
            continue
        faces_found[i] = int(row["faces_found"])
        if faces_found[i] > 0:
            crop_of[i] = row["crop"]
    say(
        f"{len(paths)} images: {len(paths) - len(todo)} embeddings cached, "
        f"{len(todo) - len(missing)} crops cached, {len(missing)} to detect"
    )
    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = 0
        for block in _blocks(missing, BLOCK):
            results = list(
                pool.map(lambda i: _detect_and_align(paths[i], pipeline, choice, max_pixels), block)
            )
            block_crops = np.zeros((len(block), height, width, 3), np.uint8)
            for j, (i, (count, crop)) in enumerate(zip(block, results, strict=True)):
                faces_found[i] = count
                if crop is not None:
                    crop_of[i] = crop
                    block_crops[j] = crop
            crop_cache.put([shas[i] for i in block], faces_found=faces_found[list(block)], crop=block_crops)
            done += len(block)
            rate = done / max(time.perf_counter() - started, 1e-9)
            say(f"detected {done}/{len(missing)} ({rate:.0f} images/s)")
        # 3. embed what is not cached yet
        if embed_cache is not None and embeddings is not None:
            to_embed = [i for i in todo if shas[i] not in embed_cache]
            for block in _blocks(to_embed, BLOCK):
                with_face = [i for i in block if i in crop_of]
                batches = [with_face[s : s + cfg.max_batch] for s in range(0, len(with_face), cfg.max_batch)]
                vectors = pool.map(
                    lambda b: pipeline.embedder.embed(np.stack([crop_of[i] for i in b])), batches
                )
                for batch, result in zip(batches, vectors, strict=True):
                    embeddings[batch] = result
                embed_cache.put(
                    [shas[i] for i in block],
                    faces_found=faces_found[list(block)],
                    embedding=embeddings[list(block)],
                )
            if to_embed:
                say(f"embedded {len(to_embed)} images")
    if crops is not None:
        for i, crop in crop_of.items():
            crops[i] = crop
    return FaceBatch(keys=tuple(shas), faces_found=faces_found, embeddings=embeddings, crops=crops)


__all__ = [
    "ArrayCache",
    "CacheKeys",
    "FaceBatch",
    "FaceChoice",
    "choose_face",
    "embed_files",
    "hash_files",
    "sha256_bytes",
]

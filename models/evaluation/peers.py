"""Peers measured through the same protocols: face_recognition (dlib), the most used Python face library.

face_recognition is run with its own defaults — HOG detector upsampled once, 5-point landmarks, the dlib
ResNet encoder with one jitter — and its own metric, the Euclidean distance between encodings (lower is
more alike; the protocols receive minus the distance). The face choice and the no-face rule are the same as
for our pipeline: the most central detection, and an image without one is a failure, never a fallback crop.

face_recognition_models 0.3 imports ``pkg_resources``, which setuptools 81 and later no longer ship; when it
is missing, :func:`import_face_recognition` provides the one function the package calls
(``resource_filename``) before importing it. Without this, ``import face_recognition`` prints an install hint
and calls ``quit()``.

Optional: ``bash bench/install-peers.sh`` (pinned: the ``peers`` extra, then ``face-recognition`` itself
with ``--no-deps`` next to ``dlib-bin``, or pip builds ``dlib`` from source).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.faces import UNREADABLE, ArrayCache, FaceBatch, hash_files
from service.pipeline import ImageDecodeError, decode_image

PEER = "face_recognition"
MAX_PIXELS = 40_000_000
_state: dict[str, Any] = {}


def import_face_recognition() -> Any:
    """``import face_recognition``, working around the missing ``pkg_resources`` of recent setuptools."""
    try:
        import pkg_resources  # type: ignore[import-untyped]  # noqa: F401
    except ModuleNotFoundError:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            module = importlib.import_module(package)
            return os.path.join(os.path.dirname(module.__file__ or ""), resource)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import face_recognition_models  # noqa: F401  (fails loudly here instead of quit() inside face_recognition)

    return importlib.import_module("face_recognition")


def peer_version() -> str:
    versions = []
    for dist in ("face-recognition", "face-recognition-models", "dlib-bin", "dlib"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(versions)


def _init_worker() -> None:
    _state["fr"] = import_face_recognition()


def _central(
    locations: Sequence[tuple[int, int, int, int]], width: int, height: int
) -> tuple[int, int, int, int]:
    """Most central (top, right, bottom, left) box, as :func:`models.evaluation.faces.choose_face` does."""

    def distance(box: tuple[int, int, int, int]) -> float:
        top, right, bottom, left = box
        return ((left + right) / 2 - width / 2) ** 2 + ((top + bottom) / 2 - height / 2) ** 2

    return min(locations, key=distance)


def _encode_one(path: str) -> tuple[int, np.ndarray | None]:
    fr = _state["fr"]
    try:
        image = decode_image(Path(path).read_bytes(), max_pixels=MAX_PIXELS)
    except ImageDecodeError:
        return UNREADABLE, None
    pixels = np.asarray(image, dtype=np.uint8)
    locations = fr.face_locations(pixels, number_of_times_to_upsample=1, model="hog")
    if not locations:
        return 0, None
    box = _central(locations, image.width, image.height)
    encoding = fr.face_encodings(pixels, [box], num_jitters=1, model="small")[0]
    return len(locations), np.asarray(encoding, np.float32)


def embed_with_face_recognition(
    paths: Sequence[Path],
    *,
    cache_dir: Path | None,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> FaceBatch:
    """face_recognition's 128-d encoding of the most central face per file (NaN rows where none), cached."""
    say = progress or (lambda _msg: None)
    import_face_recognition()  # fail here, in the caller, when it is not installed
    version = peer_version().replace(" ", "").replace(",", "_")
    cache = ArrayCache(cache_dir / "peers" / f"{PEER}-{version}-hog1-central" if cache_dir else None)
    shas = hash_files(paths, workers)
    faces_found = np.zeros(len(paths), np.int64)
    embeddings = np.full((len(paths), 128), np.nan, np.float32)
    missing = []
    for i, sha in enumerate(shas):
        row = cache.get(sha)
        if row is None:
            missing.append(i)
        else:
            faces_found[i], embeddings[i] = int(row["faces_found"]), row["embedding"]
    say(f"{len(paths)} images: {len(paths) - len(missing)} cached, {len(missing)} to run through {PEER}")
    started = time.perf_counter()
    block = 512
    with ProcessPoolExecutor(max(1, workers), initializer=_init_worker) as pool:
        for start in range(0, len(missing), block):
            rows = missing[start : start + block]
            for i, (count, vector) in zip(
                rows, pool.map(_encode_one, [str(paths[i]) for i in rows], chunksize=8), strict=True
            ):
                faces_found[i] = count
                if vector is not None:
                    embeddings[i] = vector
            cache.put([shas[i] for i in rows], faces_found=faces_found[rows], embedding=embeddings[rows])
            done = start + len(rows)
            say(f"{PEER}: {done}/{len(missing)} ({done / (time.perf_counter() - started):.1f} images/s)")
    return FaceBatch(keys=tuple(shas), faces_found=faces_found, embeddings=embeddings, crops=None)


__all__ = ["PEER", "embed_with_face_recognition", "import_face_recognition", "peer_version"]

"""Exact inner-product search on a GPU with FAISS: `GpuIndexFlatIP` storage, ids kept by `SlotIndex`.

FAISS GPU flat indexes take no ids and cannot remove vectors, so the id map, replacement and removal
(tombstones plus compaction) live on the host in `service.index.slots`, which the CPU tests cover with an
`IndexFlatIP` storage. The vectors stay resident on the device (fp16 when `fp16`, half the bytes a search
reads); only queries go in and (scores, positions) come back per call.

`shards > 1` splits the gallery over several `GpuIndexFlatIP`, each with its own `StandardGpuResources`
(own CUDA streams), searched from one thread each. Why it may help: FAISS selects the top k of each query
with one thread block per query (`runBlockSelect`, grid = number of queries), so a single query's k-selection
runs on one SM whatever the gallery size; shards select in parallel. Whether that wins on a given GPU is for
`python -m bench --device cuda --sections search` to say (docs/benchmarks.md, "GPU search").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from service.index.slots import FlatStorage, SlotIndex

log = logging.getLogger(__name__)

# FAISS's GPU k-selection limit (GPU_MAX_SELECTION_K in faiss/gpu/utils/DeviceDefs.cuh) for CUDA builds.
GPU_MAX_K = 2048


class GpuIndexUnavailable(RuntimeError):
    """FAISS cannot place an index on a GPU here (no GPU build, or no GPU visible)."""


def gpu_unavailable_reason() -> str | None:
    """None when FAISS can put an index on a GPU here; otherwise why it cannot."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "GpuIndexFlatIP"):
        return f"faiss {faiss.__version__} is built without GPU support (install faiss-gpu)"
    try:
        gpus = int(faiss.get_num_gpus())
    except RuntimeError as exc:  # a driver/runtime mismatch surfaces here
        return f"faiss could not count GPUs: {exc}"
    if gpus < 1:
        return f"faiss {faiss.__version__} has GPU support but sees no GPU (CUDA_VISIBLE_DEVICES, driver?)"
    return None


def _max_k(use_cuvs: bool) -> int:
    get = getattr(faiss, "getMaxKSelection", None)  # exported by some builds; ask it when it is there
    if get is not None:
        try:
            return int(get(use_cuvs))
        except TypeError:
            return int(get())
    return GPU_MAX_K


class GpuFlatStorage:
    """One `GpuIndexFlatIP` on one device: vectors resident there, fp32 or fp16."""

    # FAISS GPU indexes are not thread-safe even for searches: StandardGpuResources manages one region of
    # temporary GPU memory with a single user at a time (FAISS wiki, "Threads and asynchronous calls";
    # concurrent searches fail with 'p + size == head_' in StackDeviceMemory: faiss issue #321). So
    # `SlotIndex` gives this storage's searches one turn at a time; successive calls from different threads
    # are fine (faiss issue #1777).
    concurrent_search = False

    def __init__(self, dim: int, *, resources: Any, fp16: bool) -> None:
        self.dim = dim
        self.fp16 = fp16
        self.resources = resources
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = fp16
        self._index = faiss.GpuIndexFlatIP(resources, dim, config)
        self.max_k: int | None = _max_k(bool(getattr(config, "use_cuvs", False)))

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def append(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self._index.search(queries, k)
        return scores, positions

    def take(self, start: int, count: int) -> np.ndarray:
        return self._index.reconstruct_n(start, count)

    def clear(self) -> None:
        self._index.reset()


class InterleavedStorage:
    """Several storages as one: position p lives in part p % parts at p // parts; parts searched at once.

    Backend-neutral (the tests run it over CPU parts); on a GPU each part has its own resources and streams.
    """

    def __init__(self, parts: Sequence[FlatStorage]) -> None:
        if not parts:
            raise ValueError("at least one part")
        self.parts = list(parts)
        self.dim = parts[0].dim
        limits = [p.max_k for p in parts if p.max_k is not None]
        self.max_k: int | None = min(limits) if limits else None
        # Two overlapping calls would search one part from two pool threads at once.
        self.concurrent_search = all(p.concurrent_search for p in parts)
        self._pool = ThreadPoolExecutor(len(parts), thread_name_prefix="index-shard")

    @property
    def ntotal(self) -> int:
        return sum(p.ntotal for p in self.parts)

    def append(self, vectors: np.ndarray) -> None:
        start, count = self.ntotal, len(self.parts)
        for s, part in enumerate(self.parts):
            block = vectors[(s - start) % count :: count]
            if len(block):
                part.append(np.ascontiguousarray(block))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        count = len(self.parts)

        def one(s: int) -> tuple[np.ndarray, np.ndarray]:
            part = self.parts[s]
            depth = min(k, part.ntotal)
            if depth == 0:
                return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
            scores, local = part.search(queries, depth)
            return scores, np.where(local >= 0, local * count + s, -1)

        found = list(self._pool.map(one, range(count)))
        scores = np.concatenate([f[0] for f in found], axis=1)
        positions = np.concatenate([f[1] for f in found], axis=1)
        # Best score first; equal scores by position, as a single flat storage ranks them; missing last.
        missing = positions < 0
        order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, positions), -scores, missing), axis=1)
        order = order[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)

    def take(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, self.dim), np.float32)
        parts = len(self.parts)
        for s, part in enumerate(self.parts):
            first = start + (s - start) % parts  # first global position >= start held by part s
            if first >= start + count:
                continue
            n = len(range(first, start + count, parts))
            out[first - start :: parts] = part.take(first // parts, n)
        return out

    def clear(self) -> None:
        for part in self.parts:
            part.clear()


class FaissGpuFlatIndex(SlotIndex):
    """`VectorIndex` on a GPU: exact search over `GpuIndexFlatIP` (fp16 storage by default), ids on the host.

    Same behaviour as `FaissFlatIndex` (the tests check the shared logic against it on the CPU). One
    `StandardGpuResources` per shard; pass `resources` to share one with other indexes (single shard), and
    then do not search them from different threads at once (each index serialises only its own searches).
    """

    def __init__(self, dim: int, *, fp16: bool = True, shards: int = 1) -> None:
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise GpuIndexUnavailable(reason)
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.fp16 = fp16
        self.shards = shards
        self.resources = [faiss.StandardGpuResources() for _ in range(shards)]

        def make_storage() -> FlatStorage:
            parts = [GpuFlatStorage(dim, resources=r, fp16=fp16) for r in self.resources]
            return parts[0] if len(parts) == 1 else InterleavedStorage(parts)

        super().__init__(make_storage(), new_storage=make_storage)
        log.info(
            "FAISS GPU flat index on device 0: %s storage, %d shard(s), k up to %s",
            "fp16" if fp16 else "fp32",
            shards,
            self._storage.max_k,
        )

"""Exact inner-product search with FAISS (cosine on unit vectors)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from service.index.base import SearchResult
from service.index.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

# FAISS scans the gallery once per query unless a call has at least `distance_compute_blas_threshold`
# query floats (128000 in faiss-cpu 1.15.1: 1000 queries of 128), then it uses blocked matrix products.
# Measured on this 2-core CPU (IndexFlatIP, k=32, one thread): from 4 queries per call the blocked path is
# 2.9-5x faster (100k: 1,102 vs 382 q/s at 4 queries), with 1-3 queries it is slower (1 query: 184 vs 523
# q/s). See docs/benchmarks.md.
BLAS_MIN_QUERIES = 4


class _BlasThreshold:
    """Holds FAISS's process-wide threshold at `BLAS_MIN_QUERIES * dim` while any multi-query search runs.

    FAISS takes the blocked path when `queries * dim >= distance_compute_blas_threshold` (a count of query
    floats: `Run_search_inner_product` in faiss/utils/distances.cpp). At `BLAS_MIN_QUERIES * dim`, calls of
    4+ queries take it and calls of 1-3 keep the per-query scan, so a single-query search running beside a
    lowered window is computed exactly as alone (a threshold of 4, as set before, sent it to the slower
    blocked path with other rounding: 3.9 vs 1.9 ms at 100k here). That is what lets searches overlap: the
    first multi-query search to enter lowers it, the last to leave restores FAISS's value, and in between
    it is not written. Windows for another dimension wait for the current one to close (one dimension per
    service in practice); a 1-3 query search of an index with a larger dimension than the window's may
    still be sent to the blocked path by it.
    """

    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._users = 0
        self._value = 0
        self._restore_to = 0

    @contextmanager
    def lowered(self, dim: int) -> Iterator[None]:
        wanted = BLAS_MIN_QUERIES * dim
        with self._state:
            while self._users and self._value != wanted:
                self._state.wait()
            if self._users == 0:
                self._restore_to = faiss.cvar.distance_compute_blas_threshold
                self._value = wanted
                faiss.cvar.distance_compute_blas_threshold = min(self._restore_to, wanted)
            self._users += 1
        try:
            yield
        finally:
            with self._state:
                self._users -= 1
                if self._users == 0:
                    faiss.cvar.distance_compute_blas_threshold = self._restore_to
                    self._state.notify_all()


_blas_threshold = _BlasThreshold()


def search_flat(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`index.search`, on FAISS's blocked (BLAS) path for calls of `BLAS_MIN_QUERIES` or more queries."""
    if len(queries) >= BLAS_MIN_QUERIES:
        with _blas_threshold.lowered(queries.shape[1]):
            return index.search(queries, k)
    return index.search(queries, k)


def as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


def checked_batch(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`add`'s arguments as contiguous arrays, each id once (its last vector); None for an empty batch."""
    ids, vectors = as_ids(ids), as_vectors(vectors, dim)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(ids) == 0:
        return None
    keep = last_occurrences(ids)
    if keep is not None:
        ids, vectors = ids[keep], np.ascontiguousarray(vectors[keep])
    return ids, vectors


def last_occurrences(ids: np.ndarray) -> np.ndarray | None:
    """Positions that keep only the last of each repeated id, in order; None when ids are all distinct.

    Why: within one `add`, a later vector for an id replaces an earlier one, as across calls. Sorting, not
    `np.unique` (hash-based in NumPy 2.4: about 1 s for 1M ids here, against 10 ms for a sort).
    """
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):  # rebuilds add increasing keys
        return None
    order = np.argsort(ids, kind="stable")
    ranked = ids[order]
    is_last = np.ones(len(ids), dtype=bool)
    is_last[:-1] = ranked[1:] != ranked[:-1]
    if is_last.all():
        return None
    return np.sort(order[is_last])


class FaissFlatIndex:
    """IndexIDMap2 over IndexFlatIP: exact search, removal by id, thread-safe; searches run concurrently."""

    def __init__(self, dim: int, *, search_threads: int = 0) -> None:
        self.dim = dim
        self.search_threads = search_threads
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # FAISS CPU indexes allow concurrent searches but nothing concurrent with add/remove/reset
        # (github.com/facebookresearch/faiss/wiki/Threads-and-asynchronous-calls, "Thread safety").
        self._lock = ReadWriteLock()
        # The largest id present (see add_replacing: a 1M-face rebuild's adds took twice as long without it).
        self._max_id: int | None = None

    def __len__(self) -> int:
        return int(self._index.ntotal)  # one integer read, no lock: not held up behind a rebuild's adds

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = checked_batch(ids, vectors, self.dim)
        if batch is None:
            return
        ids, vectors = batch
        with self._lock.writing():
            self._max_id = add_replacing(self._index, ids, vectors, self._max_id)

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if len(ids) == 0:
            return 0
        with self._lock.writing():
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = as_vectors(queries, self.dim)
        if self.search_threads > 0:
            # OpenMP's thread count belongs to the calling thread, and requests search from a pool.
            faiss.omp_set_num_threads(self.search_threads)
        if k < 1:
            raise ValueError("k must be at least 1")
        with self._lock.reading():
            if len(queries) == 0 or self._index.ntotal == 0:
                return SearchResult.empty(len(queries), k)
            scores, ids = search_flat(self._index, queries, k)
        return SearchResult(scores=scores, ids=ids)

    def ids(self) -> np.ndarray:
        with self._lock.reading():
            return np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))

    def reset(self) -> None:
        with self._lock.writing():
            self._index.reset()
            self._max_id = None


def add_replacing(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, max_id: int | None) -> int:
    """`add_with_ids`, an id already present replaced; returns the new largest id.

    No id above `max_id` is present (None: empty), so a batch of larger ids skips `remove_ids`, which scans
    the whole index: database keys grow, so a rebuild and every new enrollment skip it.
    """
    if max_id is not None and int(ids.min()) <= max_id:
        index.remove_ids(faiss.IDSelectorBatch(ids))
    index.add_with_ids(vectors, ids)
    top = int(ids.max())
    return top if max_id is None else max(max_id, top)

"""Approximate inner-product search on the CPU with FAISS IVF (`IndexIVFFlat`): the gallery split into
`nlist` cells around k-means centroids, each query scanning the `nprobe` cells nearest to it.

Training: IVF needs centroids before it can hold a vector, and k-means needs enough vectors to place them
(FAISS warns below 39 per centroid). So the index starts exact, as a `FaissFlatIndex`, and is trained on
the vectors present once there are `min_per_list * nlist` of them; from then on it stays IVF until `reset`.
A rebuild from SQL (reset, then the gallery added in key order) therefore trains on the first
`min_per_list * nlist` faces it adds, so every rebuild or restart re-learns the centroids from the gallery
as it is; nothing retrains it in between (faces enrolled later fall into the nearest existing cell).
Training runs inside the `add` that reaches the threshold, under the write lock: k-means plus moving the
faces into cells took most of the 52 s (nlist 1024) and 181 s (nlist 4096) builds of 1M faces on two loaded
cores (docs/benchmarks.md, "Scale"), during which searches wait; in a rebuild from SQL that is part of
start-up.

Removal and replacement are native (`IndexIVF.remove_ids` drops the entries from their cells, no
tombstones); it scans every cell's id list, like `FaissFlatIndex`'s removal scans its id map (cost in
docs/benchmarks.md, "Scale").

Vectors are unit length and the metric is inner product, so scores are cosine similarities as with the flat
index; results are approximate (recall against exact search: `python -m bench --sections scale`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from service.index.base import SearchResult
from service.index.faiss_index import FaissFlatIndex, add_replacing, as_ids, as_vectors, checked_batch
from service.index.rwlock import ReadWriteLock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IvfParams:
    """IVF's knobs: `nlist` cells (about 1-4 × √N), `nprobe` cells scanned per query (recall vs speed),
    `min_per_list`: exact search until the gallery holds `min_per_list * nlist` faces to train on."""

    nlist: int = 1024
    nprobe: int = 32
    min_per_list: int = 39  # below this FAISS's k-means warns that centroids are poorly placed

    @property
    def train_at(self) -> int:
        return self.nlist * self.min_per_list


class FaissIvfIndex:
    """`VectorIndex` with approximate search: exact until trained, then IVF-Flat (see module)."""

    def __init__(self, dim: int, *, params: IvfParams | None = None, search_threads: int = 1) -> None:
        params = params or IvfParams()
        if params.nlist < 1 or params.nprobe < 1 or params.min_per_list < 1:
            raise ValueError(f"IVF parameters out of range: {params}")
        self.dim = dim
        self.params = params
        self.search_threads = search_threads
        self._lock = ReadWriteLock()
        self._exact: FaissFlatIndex | None = FaissFlatIndex(dim, search_threads=search_threads)
        self._ivf: faiss.IndexIVFFlat | None = None
        self._max_id: int | None = None  # as FaissFlatIndex: larger ids need no removal before adding

    @property
    def trained(self) -> bool:
        return self._ivf is not None

    def __len__(self) -> int:
        exact, ivf = self._exact, self._ivf
        return len(exact) if exact is not None else int(ivf.ntotal) if ivf is not None else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = checked_batch(ids, vectors, self.dim)
        if batch is None:
            return
        ids, vectors = batch
        with self._lock.writing():
            if self._ivf is None:
                assert self._exact is not None
                self._exact.add(ids, vectors)
                if len(self._exact) >= self.params.train_at:
                    self._train_from_exact()
                return
            self._max_id = add_replacing(self._ivf, ids, vectors, self._max_id)

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if len(ids) == 0:
            return 0
        with self._lock.writing():
            if self._ivf is None:
                assert self._exact is not None
                return self._exact.remove(ids)
            return int(self._ivf.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = as_vectors(queries, self.dim)
        if k < 1:
            raise ValueError("k must be at least 1")
        if self.search_threads > 0:
            # OpenMP's thread count belongs to the calling thread, and requests search from a pool.
            faiss.omp_set_num_threads(self.search_threads)
        with self._lock.reading():
            if self._ivf is None:
                assert self._exact is not None
                return self._exact.search(queries, k)
            if len(queries) == 0 or self._ivf.ntotal == 0:
                return SearchResult.empty(len(queries), k)
            # Per call, not on the index: concurrent searches must not share a mutable setting.
            params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]  # missing from faiss's stubs
            params.nprobe = min(self.params.nprobe, self.params.nlist)
            scores, ids = self._ivf.search(queries, k, params=params)
        return SearchResult(scores=scores, ids=ids)

    def ids(self) -> np.ndarray:
        with self._lock.reading():
            if self._ivf is None:
                assert self._exact is not None
                return self._exact.ids()
            lists = self._ivf.invlists
            assert lists is not None  # an IndexIVFFlat always has its own
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(cell), lists.list_size(cell)).copy()
                for cell in range(self._ivf.nlist)
                if lists.list_size(cell)
            ]
            return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.empty(0, np.int64)

    def reset(self) -> None:
        with self._lock.writing():
            self._ivf = None
            self._exact = FaissFlatIndex(self.dim, search_threads=self.search_threads)
            self._max_id = None

    # --- inside the write lock ---------------------------------------------------------------------------

    def _train_from_exact(self) -> None:
        """k-means on the exact index's vectors, which then move into the cells (the exact index goes)."""
        assert self._exact is not None
        flat = self._exact._index  # IndexIDMap2 over IndexFlatIP
        total = int(flat.ntotal)
        vectors = flat.index.reconstruct_n(0, total)
        ids = faiss.vector_to_array(flat.id_map).astype(np.int64)
        ivf = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, self.params.nlist, faiss.METRIC_INNER_PRODUCT
        )
        ivf.train(vectors)  # FAISS samples at most 256 per centroid itself
        ivf.add_with_ids(vectors, ids)
        self._ivf, self._exact = ivf, None
        self._max_id = int(ids.max())
        log.info("IVF index trained on %d faces (nlist=%d)", total, self.params.nlist)

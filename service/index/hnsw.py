"""Approximate inner-product search on the CPU with FAISS HNSW (`IndexHNSWFlat`), ids kept by `SlotIndex`.

FAISS HNSW graphs cannot remove a vector, so removal and replacement are `SlotIndex`'s tombstones: a
removed face stays in the graph (it still helps navigation) but every search passes FAISS a bitmap of the
live positions (`IDSelectorBitmap`), so HNSW collects `k` live results itself instead of searching deeper
and filtering afterwards. Once tombstones pass `compact_fraction` of the stored vectors the graph is rebuilt
from the live vectors: a full HNSW build (docs/benchmarks.md, "Approximate search in-process", gives its
cost and the recall with tombstones), run aside on a background thread (`SlotIndex`'s `compact_aside`) so
searches and writes go on meanwhile; the new graph is swapped in under the write lock.

Vectors are unit length and the metric is inner product, so scores are cosine similarities as with the flat
index; results are approximate (recall against exact search is measured by `python -m bench --sections ann`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from service.index.base import SearchResult
from service.index.slots import SlotIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HnswParams:
    """HNSW's knobs: `m` links per node (memory and build time grow with it), `ef_construction` the
    candidate list while building, `ef_search` the candidate list per query (recall vs speed; at least k)."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 200


class HnswStorage:
    """`IndexHNSWFlat` (inner product) as an append-only `FlatStorage`; its searches are approximate."""

    max_k: int | None = None
    concurrent_search = True  # FAISS CPU indexes allow concurrent searches (none beside a write)

    def __init__(self, dim: int, params: HnswParams) -> None:
        self.dim = dim
        self.params = params
        self._index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = params.ef_construction

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def append(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def search(
        self, queries: np.ndarray, k: int, live: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`live`: packed little-endian bitmap of the positions that may be returned (None: all)."""
        # Per call, not on the index: concurrent searches must not share a mutable setting.
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
        params.efSearch = max(self.params.ef_search, k)
        selector = None
        if live is not None:
            # FAISS's Python wrapper takes the array itself (the stubs only know the C++ (n, bitmap) form).
            selector = faiss.IDSelectorBitmap(live)  # type: ignore[call-arg, arg-type]
            params.sel = selector
        scores, positions = self._index.search(queries, k, params=params)
        del selector  # kept alive until FAISS is done with it
        return scores, positions

    def take(self, start: int, count: int) -> np.ndarray:
        return self._index.reconstruct_n(start, count)

    def clear(self) -> None:
        self._index.reset()


class FaissHnswIndex(SlotIndex):
    """`VectorIndex` with approximate search: HNSW graph on the CPU, tombstones for removal (see module)."""

    _storage: HnswStorage

    def __init__(
        self,
        dim: int,
        *,
        params: HnswParams | None = None,
        search_threads: int = 1,
        compact_fraction: float = 0.2,
        compact_min: int = 1024,
    ) -> None:
        params = params or HnswParams()
        if params.m < 2 or params.ef_construction < 1 or params.ef_search < 1:
            raise ValueError(f"HNSW parameters out of range: {params}")
        self.params = params
        self.search_threads = search_threads
        # The live-position bitmap for the selector, rebuilt on the first search after a write changed it.
        self._live: tuple[int, np.ndarray] | None = None  # (SlotIndex.writes when built, bitmap)
        super().__init__(
            HnswStorage(dim, params),
            new_storage=lambda: HnswStorage(dim, params),
            compact_fraction=compact_fraction,
            compact_min=compact_min,
            compact_aside=True,  # a 1M-face build takes minutes: searches must not wait for it
        )

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        if self.search_threads > 0:
            # OpenMP's thread count belongs to the calling thread, and requests search from a pool.
            faiss.omp_set_num_threads(self.search_threads)
        return super().search(queries, k)

    def _search_live(self, queries: np.ndarray, k: int) -> SearchResult:
        stored = self._storage.ntotal
        depth = min(k, stored)
        live = self._live_bitmap() if self.tombstones else None
        scores, positions = self._storage.search(queries, depth, live)
        result, _ = self._to_ids(scores, positions, k)  # pads to k; a -1 where HNSW found fewer live
        return result

    def _live_bitmap(self) -> np.ndarray:
        """Packed bitmap of live positions, for this state of the slot table (read side: writes excluded).

        Concurrent searches may both build it; they build the same one, and one tuple is assigned atomically.
        """
        cached = self._live
        if cached is not None and cached[0] == self.writes:
            return cached[1]
        bits = np.packbits(self._slot_ids[: self._storage.ntotal] >= 0, bitorder="little")
        self._live = (self.writes, bits)
        return bits

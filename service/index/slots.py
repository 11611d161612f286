"""Id bookkeeping on the host for flat storages that cannot remove vectors (FAISS GPU flat indexes).

`SlotIndex` keeps what `FaissFlatIndex` keeps in `IndexIDMap2` (which id sits at which position) in a
host array, and turns "remove" into a tombstone: the vector stays in the storage, its slot forgets the id,
and searches ask the storage for enough extra results to step over the tombstones. Compaction (copying the
live vectors into a fresh storage, in order) bounds the waste. The same code runs over a CPU `IndexFlatIP`
in the tests and over `GpuIndexFlatIP` in service, so the GPU path's logic is tested without a GPU.

Positions keep insertion order and compaction keeps the live vectors' order, so equal scores come back in
the same order as from `FaissFlatIndex` (FAISS ranks ties by position; `IndexIDMap2.remove_ids` also keeps
order).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import faiss
import numpy as np

from service.index.base import SearchResult
from service.index.faiss_index import as_ids, as_vectors, checked_batch, search_flat
from service.index.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

# What FAISS CPU reports as the score of a missing result (k larger than the index).
PAD_SCORE = np.float32(-np.finfo(np.float32).max)


class IndexNeedsRebuild(RuntimeError):
    """The storage took part of a batch and cannot drop it: positions and ids no longer agree."""


class FlatStorage(Protocol):
    """Vectors at positions 0..ntotal-1, appended only; exact inner-product search by position."""

    dim: int
    # The deepest search one call accepts (FAISS GPU k-selection stops at 2048); None means no limit.
    max_k: int | None
    # Whether `search` and `take` may run from several threads at once (FAISS CPU: yes; GPU: no).
    concurrent_search: bool

    @property
    def ntotal(self) -> int: ...

    def append(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the k best per query, best first; -1 positions past the end."""

    def take(self, start: int, count: int) -> np.ndarray:
        """float32 copy of the vectors at positions start..start+count-1 (as stored, e.g. fp16-rounded)."""

    def clear(self) -> None: ...


class CpuFlatStorage:
    """`IndexFlatIP` as a storage: what the tests run `SlotIndex` over in place of the GPU one."""

    max_k: int | None = None

    def __init__(self, dim: int, *, max_k: int | None = None, concurrent_search: bool = True) -> None:
        self.dim = dim
        # A limit, or serialised searches, can be set to exercise the GPU storage's paths on the CPU.
        self.max_k = max_k
        self.concurrent_search = concurrent_search
        self._index = faiss.IndexFlatIP(dim)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def append(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_flat(self._index, queries, k)  # the same paths as FaissFlatIndex, so the same scores

    def take(self, start: int, count: int) -> np.ndarray:
        return self._index.reconstruct_n(start, count)

    def clear(self) -> None:
        self._index.reset()


class SlotIndex:
    """A `VectorIndex` over an append-only `FlatStorage`: ids, replacement and removal kept on the host.

    `compact_min` and `compact_fraction`: tombstones are compacted away once there are more than both
    `compact_min` and `compact_fraction` of the stored vectors (each costs scan time and search depth).

    `compact_aside`: compaction builds the fresh storage on a background thread while searches and writes go
    on, reading the old storage in chunks under the read side, then swaps it in under the write side
    (replaying what changed meanwhile: removals become tombstones in the fresh storage, appends are copied
    over). For storages whose rebuild takes minutes (an HNSW graph of 1M faces: about 8 min here), where
    holding the write side would stop every search. Both storages are held until the swap, as in a
    compaction in place.

    A failed append that stored nothing leaves the index as it was. One that stored part of its batch (a
    shard of an `InterleavedStorage` ran out of memory) cannot be undone, since GPU flat indexes cannot drop
    vectors: the index raises `IndexNeedsRebuild` from then on, until `reset()` (which a rebuild starts with).
    """

    def __init__(
        self,
        storage: FlatStorage,
        *,
        new_storage: Callable[[], FlatStorage],
        compact_min: int = 1024,
        compact_fraction: float = 0.2,
        compact_aside: bool = False,
        chunk: int = 262_144,
    ) -> None:
        self.dim = storage.dim
        self._storage = storage
        self._new_storage = new_storage
        self._compact_min = compact_min
        self._compact_fraction = compact_fraction
        self._compact_aside = compact_aside
        self._aside: threading.Thread | None = None  # the compaction running in the background, if any
        # Bumped whenever positions change meaning (reset, compaction): a background compaction started
        # before it is stale and is dropped.
        self._generation = 0
        self._chunk = chunk
        self._slot_ids = np.empty(0, np.int64)  # id at each stored position; -1 for a tombstone
        self._slot_of: dict[int, int] = {}
        # Why the index cannot be trusted any more (a partial append); every call refuses until reset().
        self._broken: str | None = None
        # Searches share it, writes (add, remove, reset, compaction) hold it alone.
        self._lock = ReadWriteLock()
        # Serialises the storage's searches when it cannot search from several threads at once (GPU).
        self._storage_lock = threading.Lock()
        self.compactions = 0  # for tests and logs
        # Counts changes to the slot table (made on the write side), so readers can cache what they derive.
        self.writes = 0

    def __len__(self) -> int:
        with self._lock.reading():
            self._check_usable()
            return len(self._slot_of)

    @property
    def tombstones(self) -> int:
        # Derived, not counted: every stored vector without a live id is one, whatever failed on the way.
        return self._storage.ntotal - len(self._slot_of)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        batch = checked_batch(ids, vectors, self.dim)
        if batch is None:
            return
        ids, vectors = batch
        with self._lock.writing():
            self._check_usable()
            start = self._storage.ntotal
            try:
                self._storage.append(vectors)
            except BaseException as exc:
                if self._storage.ntotal != start:
                    # Part of the batch is stored (one shard took its share) and cannot be dropped from a
                    # GPU index: positions no longer match the slot table, so refuse until rebuilt.
                    self._broken = f"an append stored {self._storage.ntotal - start} of {len(ids)} vectors"
                    raise IndexNeedsRebuild(self._broken_message()) from exc
                raise  # nothing stored: the index is as it was, re-added ids keep their old vectors
            # Re-adding an id replaces it: its old slot becomes a tombstone, the new vector goes last. Only
            # now that the new vectors are stored, so a failed append loses nothing.
            self._bury([self._slot_of[key] for key in ids.tolist() if key in self._slot_of])
            self._grow(start + len(ids))
            self._slot_ids[start : start + len(ids)] = ids
            self._slot_of.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
            self.writes += 1
            self._maybe_compact()

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        with self._lock.writing():
            self._check_usable()
            slots = [self._slot_of.pop(key) for key in set(ids.tolist()) if key in self._slot_of]
            self._bury(slots)
            self.writes += 1
            self._maybe_compact()
        return len(slots)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = as_vectors(queries, self.dim)
        if k < 1:
            raise ValueError("k must be at least 1")
        while True:
            with self._lock.reading():
                self._check_usable()
                if len(queries) == 0 or not self._slot_of:
                    return SearchResult.empty(len(queries), k)
                result = self._search_live(queries, k)
            if result is not None:
                return result
            # Tombstones crowded the deepest search the storage allows: drop them (a write, so outside the
            # read side) and search again. Writes between the two are seen, as by any later search.
            with self._lock.writing():
                self._check_usable()
                self._compact()

    def ids(self) -> np.ndarray:
        with self._lock.reading():
            self._check_usable()
            return np.sort(np.fromiter(self._slot_of, dtype=np.int64, count=len(self._slot_of)))

    def reset(self) -> None:
        with self._lock.writing():
            self._storage.clear()
            self._slot_ids = np.empty(0, np.int64)
            self._slot_of = {}
            self._broken = None  # the storage is empty again: positions and slots agree
            self.writes += 1
            self._generation += 1

    def compact(self) -> None:
        """Copy the live vectors, in order, into a fresh storage and drop the tombstones."""
        with self._lock.writing():
            self._check_usable()
            self._compact()

    def join_compaction(self, timeout: float | None = None) -> bool:
        """Wait for a background compaction (`compact_aside`) to finish; False if it still runs."""
        running = self._aside
        if running is not None:
            running.join(timeout)
            return not running.is_alive()
        return True

    # --- inside the lock (the write side where they change anything) -----------------------------------

    def _compact(self) -> None:
        if self.tombstones == 0:
            return
        total = self._storage.ntotal
        snapshot = self._slot_ids[:total].copy()
        fresh = self._new_storage()
        for start, count, live in _live_chunks(snapshot, self._chunk):
            fresh.append(np.ascontiguousarray(self._storage.take(start, count)[live]))
        self._swap_in(fresh, total, snapshot)

    def _start_compaction_aside(self) -> None:
        """Under the write side: snapshot the slot table and build the fresh storage on a thread."""
        if self._aside is not None and self._aside.is_alive():
            return
        total = self._storage.ntotal
        snapshot = self._slot_ids[:total].copy()
        self._aside = threading.Thread(
            target=self._compact_aside_run,
            args=(self._generation, total, snapshot),
            name="index-compaction",
            daemon=True,
        )
        self._aside.start()

    def _compact_aside_run(self, generation: int, total: int, snapshot: np.ndarray) -> None:
        """The background half: copy the snapshot's live vectors out, then swap (or drop it if stale)."""
        try:
            fresh = self._new_storage()
            for start, count, live in _live_chunks(snapshot, self._chunk):
                with self._lock.reading():
                    if self._generation != generation or self._broken is not None:
                        return
                    with self._storage_turn():
                        vectors = self._storage.take(start, count)
                fresh.append(np.ascontiguousarray(vectors[live]))  # fresh is ours alone: no lock
            with self._lock.writing():
                if self._generation != generation or self._broken is not None:
                    return
                self._swap_in(fresh, total, snapshot)
        except Exception:
            # As a compaction in place: only scan time is at stake, the old storage is untouched.
            log.warning("background index compaction failed; keeping the tombstones", exc_info=True)

    def _swap_in(self, fresh: FlatStorage, total: int, snapshot: np.ndarray) -> None:
        """Under the write side: replay what changed since the snapshot onto `fresh` and make it current
        (nothing to replay for a compaction in place).

        Writes only bury slots or append after the end, so a snapshot-live position now holds the same id
        or a tombstone (removed or replaced meanwhile), and positions past `total` are the appends since.
        """
        stored = self._storage.ntotal
        ids = self._slot_ids[:stored]
        kept = ids[:total][snapshot >= 0]  # the snapshot's live ids, or -1 for those buried since
        if stored > total:
            fresh.append(np.ascontiguousarray(self._storage.take(total, stored - total)))
            kept = np.concatenate([kept, ids[total:]])
        self._storage.clear()
        self._storage = fresh
        self._slot_ids = kept.copy()
        live = np.flatnonzero(kept >= 0)
        self._slot_of = dict(zip(kept[live].tolist(), live.tolist(), strict=True))
        self.compactions += 1
        self.writes += 1
        self._generation += 1
        log.debug("index compacted: %d live of %d stored", len(live), len(kept))

    def _storage_turn(self) -> AbstractContextManager[object]:
        """Around a storage call made on the read side: a turn of its own unless it allows concurrent ones.

        GPU storages do not (StandardGpuResources serves one calling thread at a time: FAISS wiki, "Threads
        and asynchronous calls"; faiss issues #367, #321). The write side excludes every reader already.
        """
        return nullcontext() if self._storage.concurrent_search else self._storage_lock

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise IndexNeedsRebuild(self._broken_message())

    def _broken_message(self) -> str:
        return f"vector index is inconsistent ({self._broken}); reset it and rebuild it from SQL"

    def _grow(self, size: int) -> None:
        if size > len(self._slot_ids):
            grown = np.full(max(size, 2 * len(self._slot_ids), 1024), -1, np.int64)
            grown[: len(self._slot_ids)] = self._slot_ids
            self._slot_ids = grown

    def _bury(self, slots: list[int]) -> None:
        if slots:
            self._slot_ids[np.asarray(slots, np.int64)] = -1

    def _maybe_compact(self) -> None:
        stored, tombstones = self._storage.ntotal, self.tombstones
        if tombstones > self._compact_min and tombstones > self._compact_fraction * stored:
            if self._compact_aside:
                self._start_compaction_aside()
                return
            try:
                self._compact()
            except Exception:
                # Compaction only saves scan time, and the add or remove that called it is already done
                # (its caller must not see it fail); the old storage is untouched, the next call tries again.
                log.warning("index compaction failed; keeping %d tombstones", tombstones, exc_info=True)

    def _search_live(self, queries: np.ndarray, k: int) -> SearchResult | None:
        """The exact top k, or None when tombstones crowd out live results at the storage's deepest search
        (the caller compacts and asks again)."""
        stored = self._storage.ntotal
        # Every tombstone could outrank every live vector, so k + tombstones is always deep enough. But a
        # deep search costs (GPU k-selection slows with k) and tombstones rarely crowd one query's top, so
        # try a shallow one first: if each row still finds k live results, they are the exact top k.
        tombstones = self.tombstones
        full = min(k + tombstones, stored)
        shallow = min(full, 2 * k + 16)
        limit = self._storage.max_k
        if shallow < full and (limit is None or shallow <= limit):
            with self._storage_turn():
                found = self._storage.search(queries, shallow)
            result, complete = self._to_ids(*found, k)
            if complete:
                return result
        depth = full if limit is None else min(full, limit)
        with self._storage_turn():
            found = self._storage.search(queries, depth)
        result, complete = self._to_ids(*found, k)
        if complete or depth == full:
            return result
        if tombstones > 0:
            return None
        return self._search_beyond_limit(queries, k)

    def _to_ids(self, scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[SearchResult, bool]:
        """Positions to ids, tombstones dropped, the k best kept; and whether every row found all it could."""
        ids = np.where(positions >= 0, self._slot_ids[np.maximum(positions, 0)], -1)
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=PAD_SCORE)
        live = ids >= 0
        if self.tombstones:
            # A stable sort on "is a tombstone" moves the live results forward and keeps their ranking.
            order = np.argsort(~live, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            live = np.take_along_axis(live, order, axis=1)
        ids, scores, live = ids[:, :k], scores[:, :k], live[:, :k]
        # Like FaissFlatIndex (FAISS CPU): -1 and the lowest float wherever fewer than k exist.
        scores = np.where(live, scores, PAD_SCORE).astype(np.float32, copy=False)
        ids = np.where(live, ids, -1)
        complete = bool(np.all(live.sum(axis=1) == min(k, len(self._slot_of))))
        return SearchResult(np.ascontiguousarray(scores), np.ascontiguousarray(ids)), complete

    def _search_beyond_limit(self, queries: np.ndarray, k: int) -> SearchResult:
        """Exact top-k for a k deeper than the storage allows: scan its vectors in chunks on the host.

        Slow (the vectors are copied out), and only reached when a caller asks for more results than the
        GPU can select, e.g. a gallery of a few people with thousands of faces each.
        """
        log.debug("search for k=%d beyond the storage's limit %s: host scan", k, self._storage.max_k)
        total = self._storage.ntotal
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for start in range(0, total, self._chunk):
            count = min(self._chunk, total - start)
            scan = faiss.IndexFlatIP(self.dim)
            with self._storage_turn():
                vectors = self._storage.take(start, count)
            scan.add(vectors)
            # Through search_flat: the same path for 4+ queries whether or not another search holds the
            # BLAS window open, so results do not depend on what runs beside.
            scores, positions = search_flat(scan, queries, min(k, count))
            live = positions >= 0
            heap.add_result(
                np.ascontiguousarray(np.where(live, scores, -np.inf).astype(np.float32)),
                np.ascontiguousarray(np.where(live, positions + start, -1).astype(np.int64)),
            )
        heap.finalize()
        result, _ = self._to_ids(heap.D, heap.I, k)
        return result


def _live_chunks(slot_ids: np.ndarray, chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, count, live mask) of each `chunk` of stored positions that holds a live vector."""
    for start in range(0, len(slot_ids), chunk):
        live = slot_ids[start : start + chunk] >= 0
        if live.any():
            yield start, len(live), live

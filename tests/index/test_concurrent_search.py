"""Searches run side by side in both indexes; writes wait for them; GPU-like storages search one at a time."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import faiss
import numpy as np
import pytest

from service.index import (
    CpuFlatStorage,
    FaissFlatIndex,
    FaissHnswIndex,
    FaissIvfIndex,
    IvfParams,
    SearchResult,
    SlotIndex,
    VectorIndex,
)
from service.index.faiss_gpu import InterleavedStorage
from service.index.faiss_index import BLAS_MIN_QUERIES, _BlasThreshold
from service.pipeline.embed import l2_normalize
from tests._threads import WatchedLock, start, watch_waits

DIM = 64
WAIT_S = 10.0


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def _slot_index(storage: Callable[[], CpuFlatStorage | InterleavedStorage] | None = None) -> SlotIndex:
    make = storage or (lambda: CpuFlatStorage(DIM))
    return SlotIndex(make(), new_storage=make)


INDEXES: dict[str, Callable[[], VectorIndex]] = {
    "faiss_flat": lambda: FaissFlatIndex(DIM, search_threads=1),
    "slot_over_cpu": _slot_index,
    "slot_over_two_parts": lambda: _slot_index(
        lambda: InterleavedStorage([CpuFlatStorage(DIM), CpuFlatStorage(DIM)])
    ),
    # k = 10 beyond the storage's limit: every search is the host scan of `_search_beyond_limit`.
    "slot_k_limit_4": lambda: _slot_index(lambda: CpuFlatStorage(DIM, max_k=4)),
    "hnsw": lambda: FaissHnswIndex(DIM, search_threads=1),
    # Trained from the 16th face, half the cells probed: approximate, as in service.
    "ivf": lambda: FaissIvfIndex(DIM, params=IvfParams(nlist=4, nprobe=2, min_per_list=4), search_threads=1),
}


def _then(action: Callable[[], object], done: threading.Event) -> None:
    action()
    done.set()


def _run_threads(work: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("make_index", INDEXES.values(), ids=INDEXES.keys())
def test_concurrent_one_and_eight_query_searches_give_exactly_the_serial_results(
    make_index: Callable[[], VectorIndex],
) -> None:
    index = make_index()
    index.add(np.arange(20_000), _vectors(20_000))
    queries = _vectors(64, seed=7)
    calls = [queries[i : i + 1] for i in range(16)] + [queries[i : i + 8] for i in range(16, 64, 8)]
    # One OpenMP thread everywhere: with more, FAISS splits a single query's scan over the gallery
    # (another summation order), and only FaissFlatIndex sets the count itself.
    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        serial = [index.search(call, 10) for call in calls]
    finally:
        faiss.omp_set_num_threads(threads_before)
    threshold = faiss.cvar.distance_compute_blas_threshold

    def search_in_random_order(seed: int) -> None:
        faiss.omp_set_num_threads(1)
        rng = random.Random(seed)
        for _ in range(60):
            n = rng.randrange(len(calls))
            got = index.search(calls[n], 10)
            assert np.array_equal(got.ids, serial[n].ids), f"call {n} ({len(calls[n])} queries)"
            assert np.array_equal(got.scores, serial[n].scores), f"call {n} ({len(calls[n])} queries)"

    _run_threads(search_in_random_order, 4)
    assert faiss.cvar.distance_compute_blas_threshold == threshold  # FAISS's default is back


def test_the_blas_threshold_stays_lowered_until_the_last_overlapping_search_leaves() -> None:
    default = faiss.cvar.distance_compute_blas_threshold
    shared = _BlasThreshold()
    first, second = shared.lowered(DIM), shared.lowered(DIM)
    first.__enter__()
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_MIN_QUERIES * DIM
    second.__enter__()
    first.__exit__(None, None, None)
    # A search still inside must keep the blocked path it started on, whoever entered first.
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_MIN_QUERIES * DIM
    second.__exit__(None, None, None)
    assert faiss.cvar.distance_compute_blas_threshold == default


def test_the_blas_threshold_is_restored_when_a_search_raises() -> None:
    default = faiss.cvar.distance_compute_blas_threshold
    with pytest.raises(KeyError), _BlasThreshold().lowered(DIM):
        raise KeyError("boom")
    assert faiss.cvar.distance_compute_blas_threshold == default


def test_a_window_for_another_dimension_waits_for_the_open_one_to_close() -> None:
    shared = _BlasThreshold()
    waits = watch_waits(shared)
    entered = threading.Event()
    seen: list[int] = []  # checked here: an assertion failing in the thread would only be a warning

    def other_dimension() -> None:
        with shared.lowered(2 * DIM):
            seen.append(faiss.cvar.distance_compute_blas_threshold)
            entered.set()

    with shared.lowered(DIM):
        thread = threading.Thread(target=other_dimension)
        thread.start()
        assert waits.holds_back(thread, got_through=entered.is_set)
    assert entered.wait(WAIT_S)
    thread.join(WAIT_S)
    assert seen == [BLAS_MIN_QUERIES * 2 * DIM]


def test_single_queries_are_computed_alike_whether_or_not_a_multi_query_window_is_open() -> None:
    index = FaissFlatIndex(DIM, search_threads=1)
    index.add(np.arange(20_000), _vectors(20_000))
    queries = _vectors(3, seed=7)
    alone = [index.search(queries[: n + 1], 10) for n in range(3)]
    with _BlasThreshold().lowered(DIM):  # as while another thread's 8-query search runs
        beside = [index.search(queries[: n + 1], 10) for n in range(3)]
    for one, other in zip(alone, beside, strict=True):
        assert np.array_equal(one.scores, other.scores) and np.array_equal(one.ids, other.ids)


@pytest.mark.parametrize("make_index", INDEXES.values(), ids=INDEXES.keys())
def test_a_search_goes_ahead_while_another_search_is_inside(make_index: Callable[[], VectorIndex]) -> None:
    index = make_index()
    index.add(np.arange(100), _vectors(100))
    searched = threading.Event()
    # Stands for a search in flight in another thread: the read side the index's searches take.
    with index._lock.reading():  # type: ignore[attr-defined]
        thread = threading.Thread(target=_then, args=(lambda: index.search(_vectors(1), 3), searched))
        thread.start()
        assert searched.wait(WAIT_S)
    thread.join(WAIT_S)


@pytest.mark.parametrize("make_index", INDEXES.values(), ids=INDEXES.keys())
@pytest.mark.parametrize("write", ["add", "remove", "reset"])
def test_writes_wait_for_the_searches_inside(make_index: Callable[[], VectorIndex], write: str) -> None:
    index = make_index()
    index.add(np.arange(100), _vectors(100))
    calls: dict[str, Callable[[], object]] = {
        "add": lambda: index.add(np.array([500]), _vectors(1, seed=3)),
        "remove": lambda: index.remove(np.array([5])),
        "reset": index.reset,
    }
    written = threading.Event()
    waits = watch_waits(index._lock)  # type: ignore[attr-defined]
    with index._lock.reading():  # type: ignore[attr-defined]
        thread = threading.Thread(target=_then, args=(calls[write], written))
        thread.start()
        assert waits.holds_back(thread, got_through=written.is_set)
    assert written.wait(WAIT_S)
    thread.join(WAIT_S)


class _HeldStorage(CpuFlatStorage):
    """A CPU storage whose searches stop inside until the test lets them go (`release`) or, with `meet`,
    until another search is inside too; `inside` counts the searches in it now."""

    def __init__(self, *, concurrent_search: bool, meet: threading.Barrier | None = None) -> None:
        super().__init__(DIM, concurrent_search=concurrent_search)
        self.inside = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._meet = meet
        self._count = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._count:
            self.inside += 1
        self.entered.set()
        try:
            if self._meet is not None:
                self._meet.wait()
            else:
                assert self.release.wait(WAIT_S), "the test never let the search go"
            return super().search(queries, k)
        finally:
            with self._count:
                self.inside -= 1


def _held_index(storage: _HeldStorage) -> tuple[SlotIndex, Callable[[], None], list[SearchResult]]:
    """An index over `storage`, a search to run in threads, and where those searches put their results
    (checked against the same search in an ordinary index)."""
    index = SlotIndex(storage, new_storage=lambda: CpuFlatStorage(DIM))
    index.add(np.arange(200), _vectors(200))
    queries = _vectors(8, seed=2)
    results: list[SearchResult] = []
    return index, lambda: results.append(index.search(queries, 5)), results


def _plain_search() -> SearchResult:
    index = _slot_index()
    index.add(np.arange(200), _vectors(200))
    return index.search(_vectors(8, seed=2), 5)


def test_a_storage_that_cannot_search_concurrently_gets_one_search_at_a_time() -> None:
    storage = _HeldStorage(concurrent_search=False)
    index, search, results = _held_index(storage)
    turn = WatchedLock()
    index._storage_lock = turn  # type: ignore[assignment]
    first = start(search)
    assert storage.entered.wait(WAIT_S)
    second = start(search)
    # The second search waits for its turn on the storage instead of joining the first inside it.
    assert turn.holds_back(second, got_through=lambda: storage.inside > 1)
    storage.release.set()
    for thread in (first, second):
        thread.join(WAIT_S)
    want = _plain_search()
    assert len(results) == 2 and all(np.array_equal(r.ids, want.ids) for r in results)


def test_a_storage_that_can_search_concurrently_gets_searches_side_by_side() -> None:
    meet = threading.Barrier(2, timeout=WAIT_S)  # broken unless both searches are in the storage at once
    _, search, results = _held_index(_HeldStorage(concurrent_search=True, meet=meet))
    threads = [start(search) for _ in range(2)]
    for thread in threads:
        thread.join(WAIT_S)
    assert not meet.broken
    want = _plain_search()
    assert len(results) == 2 and all(np.array_equal(r.ids, want.ids) for r in results)


def test_interleaved_parts_search_concurrently_only_if_every_part_can() -> None:
    cpu = CpuFlatStorage(DIM)
    serial = CpuFlatStorage(DIM, concurrent_search=False)
    assert InterleavedStorage([cpu, CpuFlatStorage(DIM)]).concurrent_search
    assert not InterleavedStorage([cpu, serial]).concurrent_search


def test_concurrent_adds_removes_and_searches_leave_the_flat_index_consistent() -> None:
    index = FaissFlatIndex(DIM, search_threads=1)
    fresh = {offset: _vectors(200, seed=offset + 1) for offset in (0, 1000)}
    last_written: dict[int, np.ndarray] = {}
    probes = _vectors(64, seed=9)
    seen: set[int] = set()

    def work(i: int) -> None:
        if i < 2:  # two writers, each owning its keys
            offset = 1000 * i
            for n in range(200):
                key = offset + n % 32
                index.add(np.array([key]), fresh[offset][n][None, :])
                last_written[key] = fresh[offset][n]
                if n % 3 == 0:
                    index.remove(np.array([offset + (n * 7) % 32]))
        else:
            for n in range(200):
                calls = probes[n % 64 : n % 64 + (1 if n % 2 else 8)]
                seen.update(index.search(calls, 5).ids.ravel().tolist())

    _run_threads(work, 4)
    assert seen <= {-1} | set(range(32)) | set(range(1000, 1032))
    live = index.ids()
    assert len(live) == len(index) == len(set(live.tolist()))
    for key in live.tolist():
        result = index.search(last_written[key][None, :], 1)
        assert result.ids[0, 0] == key

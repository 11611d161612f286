"""SlotIndex (the GPU index's host bookkeeping) over CPU storages, checked against FaissFlatIndex.

The GPU index is `SlotIndex` over `GpuIndexFlatIP` storages; here the same code runs over `IndexFlatIP`
storages, with small compaction thresholds, a small k limit (the GPU stops at 2048) and interleaved parts
(the GPU shards), so every path the GPU takes runs on this CPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from service.index import CpuFlatStorage, FaissFlatIndex, SlotIndex
from service.index.faiss_gpu import InterleavedStorage
from service.index.slots import PAD_SCORE
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same as _assert_same

DIM = 16


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def _slot_index(
    *, parts: int = 1, max_k: int | None = None, compact_min: int = 4, compact_fraction: float = 0.25
) -> SlotIndex:
    def storage() -> CpuFlatStorage | InterleavedStorage:
        made = [CpuFlatStorage(DIM, max_k=max_k) for _ in range(parts)]
        return made[0] if parts == 1 else InterleavedStorage(made)

    return SlotIndex(
        storage(),
        new_storage=storage,
        compact_min=compact_min,
        compact_fraction=compact_fraction,
        chunk=7,  # several chunks even for small galleries
    )


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "never_compacts": {"compact_min": 10**9},
    "compacts_often": {"compact_min": 0, "compact_fraction": 0.0},
    "k_limit_6": {"max_k": 6, "compact_min": 10**9},
    "three_parts": {"parts": 3},
    "three_parts_k_limit_5": {"parts": 3, "max_k": 5, "compact_min": 10**9},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_adds_removes_and_searches_match_the_cpu_flat_index(variant: str) -> None:
    rng = np.random.default_rng(list(VARIANTS).index(variant))
    ours, reference = _slot_index(**VARIANTS[variant]), FaissFlatIndex(DIM)
    pool = _vectors(400, seed=1)
    for step in range(250):
        action = rng.choice(["add", "remove", "search"], p=[0.4, 0.3, 0.3])
        if action == "add":
            ids = rng.integers(0, 60, size=int(rng.integers(1, 9)))  # repeats, in the batch and across
            vectors = pool[rng.integers(0, len(pool), size=len(ids))]
            ours.add(ids, vectors)
            reference.add(ids, vectors)
        elif action == "remove":
            ids = rng.integers(0, 70, size=int(rng.integers(1, 6)))  # some never added
            assert ours.remove(ids) == reference.remove(ids), step
        else:
            queries = _vectors(int(rng.choice([1, 2, 5])), seed=1000 + step)
            _assert_same(ours, reference, queries, int(rng.integers(1, 45)))
        assert len(ours) == len(reference), step
        assert ours.ids().tolist() == reference.ids().tolist(), step


def test_equal_scores_come_back_in_the_same_order_as_the_cpu_flat_index() -> None:
    same = _vectors(1, seed=5)
    others = _vectors(6, seed=6)
    ours, reference = _slot_index(compact_min=10**9), FaissFlatIndex(DIM)
    for index in (ours, reference):
        index.add(np.array([10, 3, 7]), np.repeat(same, 3, axis=0))
        index.add(np.arange(100, 106), others)
        index.add(np.array([1, 8]), np.repeat(same, 2, axis=0))
        index.remove(np.array([7]))
        index.add(np.array([3]), same)  # replaced by the same vector: moves behind the others
    assert ours.tombstones == 2
    for k in (1, 2, 4, 9, 20):
        _assert_same(ours, reference, same, k)
    assert sorted(ours.search(same, 4).ids[0].tolist()) == [1, 3, 8, 10]


def test_asking_for_more_than_the_live_count_pads_like_faiss() -> None:
    ours = _slot_index(compact_min=10**9)
    ours.add(np.arange(5), _vectors(5))
    ours.remove(np.array([0, 1, 2]))
    result = ours.search(_vectors(2, seed=9), 4)
    assert (result.ids[:, 2:] == -1).all() and (result.ids[:, :2] >= 3).all()
    assert (result.scores[:, 2:] == PAD_SCORE).all()
    reference = FaissFlatIndex(DIM)
    reference.add(np.arange(3, 5), _vectors(5)[3:])
    _assert_same(ours, reference, _vectors(2, seed=9), 4)


def test_an_empty_index_returns_minus_one_and_minus_infinity_like_the_cpu_flat_index() -> None:
    for index in (_slot_index(), FaissFlatIndex(DIM)):
        result = index.search(_vectors(3), 4)
        assert result.ids.shape == (3, 4) and (result.ids == -1).all() and np.isneginf(result.scores).all()
        assert len(index) == 0 and index.ids().size == 0 and index.remove(np.array([1])) == 0


def test_an_index_whose_every_vector_was_removed_finds_nothing() -> None:
    ours = _slot_index(compact_min=10**9)
    ours.add(np.arange(4), _vectors(4))
    assert ours.remove(np.arange(4)) == 4
    result = ours.search(_vectors(1), 2)
    assert (result.ids == -1).all() and len(ours) == 0 and ours.tombstones == 4


def test_a_removed_id_added_again_is_found_with_its_new_vector() -> None:
    ours = _slot_index(compact_min=10**9)
    vectors = _vectors(3)
    ours.add(np.array([1, 2]), vectors[:2])
    ours.remove(np.array([1]))
    assert ours.search(vectors[:1], 2).ids[0].tolist() == [2, -1]
    ours.add(np.array([1]), vectors[2:])
    result = ours.search(vectors[2:], 1)
    assert result.ids[0, 0] == 1
    np.testing.assert_allclose(result.scores[0, 0], 1.0, rtol=1e-5)


def test_re_adding_an_existing_id_replaces_its_vector_and_leaves_one_entry() -> None:
    ours = _slot_index(compact_min=10**9)
    vectors = _vectors(2)
    ours.add(np.array([5]), vectors[:1])
    ours.add(np.array([5]), vectors[1:])
    assert len(ours) == 1 and ours.ids().tolist() == [5] and ours.tombstones == 1
    assert ours.search(vectors[:1], 3).ids[0].tolist() == [5, -1, -1]
    np.testing.assert_allclose(ours.search(vectors[1:], 1).scores[0, 0], 1.0, rtol=1e-5)


def test_a_repeated_id_within_one_add_keeps_the_last_vector_in_both_indexes() -> None:
    vectors = _vectors(3)
    for index in (_slot_index(), FaissFlatIndex(DIM)):
        index.add(np.array([4, 9, 4]), vectors)
        assert len(index) == 2
        result = index.search(vectors[2:], 2)
        assert result.ids[0].tolist()[0] == 4
        np.testing.assert_allclose(result.scores[0, 0], 1.0, rtol=1e-5)
        assert 4 not in index.search(vectors[:1], 2).ids[0, :1]


def test_tombstones_are_compacted_away_past_the_threshold_and_order_is_kept() -> None:
    ours = _slot_index(compact_min=3, compact_fraction=0.2)
    reference = FaissFlatIndex(DIM)
    vectors = _vectors(20)
    for index in (ours, reference):
        index.add(np.arange(20), vectors)
        index.remove(np.array([2, 4, 6]))
    assert ours.compactions == 0 and ours.tombstones == 3  # 3 is not more than the minimum
    for index in (ours, reference):
        index.remove(np.array([8, 10]))  # 5 > 3 and 5 > 0.2 * 20
    assert ours.compactions == 1 and ours.tombstones == 0
    _assert_same(ours, reference, vectors, 20)


def test_a_search_crowded_by_tombstones_beyond_the_k_limit_compacts_and_stays_exact() -> None:
    ours = _slot_index(max_k=4, compact_min=10**9)
    vectors = _vectors(12)
    ours.add(np.arange(12), vectors)
    # The query's five nearest are removed: the 4 deepest the storage allows are all tombstones.
    query = vectors[:1]
    nearest = ours.search(query, 5).ids[0]
    ours.remove(nearest)
    assert ours.compactions == 0
    reference = FaissFlatIndex(DIM)
    reference.add(np.arange(12), vectors)
    reference.remove(nearest)
    _assert_same(ours, reference, query, 3)
    assert ours.compactions == 1 and ours.tombstones == 0


def test_tombstones_crowding_the_first_shallow_search_lead_to_a_deeper_exact_one() -> None:
    ours, reference = _slot_index(compact_min=10**9), FaissFlatIndex(DIM)
    vectors = _vectors(100)
    query = vectors[:1]
    for index in (ours, reference):
        index.add(np.arange(100), vectors)
    nearest = ours.search(query, 40).ids[0]
    for index in (ours, reference):
        index.remove(nearest)  # the shallow first try (2k + 16 = 22 deep for k=3) sees only tombstones
    _assert_same(ours, reference, query, 3)
    assert ours.compactions == 0


def test_k_beyond_the_storage_limit_is_answered_exactly_by_a_host_scan() -> None:
    ours, reference = _slot_index(max_k=4, parts=2), FaissFlatIndex(DIM)
    vectors = _vectors(30)
    for index in (ours, reference):
        index.add(np.arange(30), vectors)
    _assert_same(ours, reference, _vectors(3, seed=4), 17)
    _assert_same(ours, reference, _vectors(1, seed=4), 40)


def test_interleaved_parts_hold_positions_round_robin_and_read_back_in_order() -> None:
    parts = [CpuFlatStorage(DIM) for _ in range(3)]
    storage = InterleavedStorage(parts)
    vectors = _vectors(11)
    storage.append(vectors[:4])
    storage.append(vectors[4:])
    assert [p.ntotal for p in parts] == [4, 4, 3] and storage.ntotal == 11
    np.testing.assert_array_equal(storage.take(0, 11), vectors)
    np.testing.assert_array_equal(storage.take(5, 4), vectors[5:9])
    scores, positions = storage.search(vectors[7:8], 3)
    assert positions[0, 0] == 7
    np.testing.assert_allclose(scores[0, 0], 1.0, rtol=1e-5)


def test_reset_forgets_everything() -> None:
    ours = _slot_index(compact_min=10**9)
    ours.add(np.arange(6), _vectors(6))
    ours.remove(np.array([1]))
    ours.reset()
    assert len(ours) == 0 and ours.tombstones == 0 and ours.ids().size == 0
    ours.add(np.array([3]), _vectors(1, seed=2))
    assert ours.search(_vectors(1, seed=2), 2).ids[0].tolist() == [3, -1]


def test_wrong_shapes_and_k_are_refused() -> None:
    ours = _slot_index()
    with pytest.raises(ValueError, match="shape"):
        ours.add(np.arange(2), np.ones((2, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="ids for"):
        ours.add(np.arange(3), _vectors(2))
    with pytest.raises(ValueError, match="k must be"):
        ours.search(_vectors(1), 0)


def test_concurrent_writers_and_searchers_leave_a_consistent_index() -> None:
    ours = _slot_index(parts=2, compact_min=8, compact_fraction=0.1)
    vectors = _vectors(64)
    fresh = {offset: _vectors(200, seed=offset + 1) for offset in (0, 1000)}  # one distinct vector per write
    last_written: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    seen_ids: set[int] = set()

    def writer(offset: int) -> None:
        try:
            for i in range(200):
                key = offset + i % 32
                ours.add(np.array([key]), fresh[offset][i][None, :])
                last_written[key] = fresh[offset][i]  # each writer owns its keys
                if i % 3 == 0:
                    ours.remove(np.array([offset + (i * 7) % 32]))
        except BaseException as exc:
            errors.append(exc)

    def searcher() -> None:
        try:
            for i in range(200):
                result = ours.search(vectors[i % 64][None, :], 5)
                seen_ids.update(result.ids[0].tolist())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 1000)]
    threads += [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen_ids <= {-1} | set(range(32)) | set(range(1000, 1032))
    live = ours.ids()
    assert len(live) == len(ours) == len(set(live.tolist()))
    # Every live id holds the vector last written for it and is found as its own best match.
    for key in live.tolist():
        result = ours.search(last_written[key][None, :], 1)
        assert result.ids[0, 0] == key
        np.testing.assert_allclose(result.scores[0, 0], 1.0, rtol=1e-5)

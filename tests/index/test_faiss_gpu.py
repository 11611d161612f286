"""FaissGpuFlatIndex on a real GPU: the same behaviour as FaissFlatIndex, vectors resident on the device.

Skipped where FAISS has no GPU (this CPU machine): the bookkeeping these tests exercise is covered on the
CPU by tests/index/test_slot_index.py over the same SlotIndex code.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.index import FaissFlatIndex, FaissGpuFlatIndex, gpu_unavailable_reason
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same

NO_GPU = gpu_unavailable_reason()
pytestmark = pytest.mark.skipif(NO_GPU is not None, reason=f"needs FAISS with a GPU: {NO_GPU}")

DIM = 32


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def _gpu_index(*, fp16: bool, shards: int = 1) -> FaissGpuFlatIndex:
    return FaissGpuFlatIndex(DIM, fp16=fp16, shards=shards)


@pytest.mark.parametrize("shards", [1, 3])
def test_random_adds_removes_and_searches_match_the_cpu_flat_index_in_fp32(shards: int) -> None:
    rng = np.random.default_rng(shards)
    ours, reference = _gpu_index(fp16=False, shards=shards), FaissFlatIndex(DIM)
    pool = _vectors(500, seed=1)
    for step in range(150):
        action = rng.choice(["add", "remove", "search"], p=[0.4, 0.3, 0.3])
        if action == "add":
            ids = rng.integers(0, 80, size=int(rng.integers(1, 12)))
            vectors = pool[rng.integers(0, len(pool), size=len(ids))]
            ours.add(ids, vectors)
            reference.add(ids, vectors)
        elif action == "remove":
            ids = rng.integers(0, 90, size=int(rng.integers(1, 6)))
            assert ours.remove(ids) == reference.remove(ids), step
        else:
            queries = _vectors(int(rng.choice([1, 3, 8])), seed=1000 + step)
            assert_same(ours, reference, queries, int(rng.integers(1, 60)), score_tolerance=1e-5)
        assert ours.ids().tolist() == reference.ids().tolist(), step


def test_fp16_storage_finds_each_vector_as_its_own_best_match() -> None:
    ours = _gpu_index(fp16=True)
    vectors = _vectors(5000, seed=2)
    ours.add(np.arange(5000) + 100, vectors)
    result = ours.search(vectors[:200], 3)
    assert result.ids[:, 0].tolist() == list(range(100, 300))
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=2e-3)  # fp16 rounding of the stored vectors


def test_k_beyond_the_gpu_selection_limit_is_still_exact() -> None:
    ours, reference = _gpu_index(fp16=False), FaissFlatIndex(DIM)
    vectors = _vectors(5000, seed=3)
    for index in (ours, reference):
        index.add(np.arange(5000), vectors)
    assert_same(ours, reference, _vectors(2, seed=4), 3000, score_tolerance=1e-5)


def test_many_removals_compact_on_the_device_and_keep_results() -> None:
    ours, reference = _gpu_index(fp16=False), FaissFlatIndex(DIM)
    vectors = _vectors(6000, seed=5)
    for index in (ours, reference):
        index.add(np.arange(6000), vectors)
        index.remove(np.arange(0, 6000, 3))
    assert ours.compactions >= 1
    assert_same(ours, reference, _vectors(4, seed=6), 50, score_tolerance=1e-5)

"""SlotIndex when its storage fails to append (e.g. GPU memory exhausted): the index logic is real, only the
storage's failure is simulated, by a CPU storage that raises on demand.

A failed append that stored nothing must leave the index as it was (re-added ids keep their old vectors);
one that stored part of the batch (a shard of an interleaved storage) cannot be undone on a GPU, so every
later call must refuse with a clear error until the index is reset and rebuilt.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.index import CpuFlatStorage, FaissFlatIndex, SlotIndex
from service.index.faiss_gpu import InterleavedStorage
from service.index.slots import IndexNeedsRebuild
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same

DIM = 8


class FailingStorage(CpuFlatStorage):
    """A CPU storage whose next append raises, as a GPU one does when device memory runs out."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.fail_next_append = False

    def append(self, vectors: np.ndarray) -> None:
        if self.fail_next_append:
            self.fail_next_append = False
            raise MemoryError("device out of memory")
        super().append(vectors)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def _index(storage: FailingStorage | InterleavedStorage) -> SlotIndex:
    return SlotIndex(storage, new_storage=lambda: CpuFlatStorage(DIM), compact_min=10**9)


def test_a_failed_append_leaves_re_added_ids_with_their_old_vectors() -> None:
    storage = FailingStorage(DIM)
    ours, reference = _index(storage), FaissFlatIndex(DIM)
    old = _vectors(10)
    for index in (ours, reference):
        index.add(np.arange(10), old)
    storage.fail_next_append = True
    with pytest.raises(MemoryError):
        ours.add(np.array([2, 5, 50]), _vectors(3, seed=1))
    assert len(ours) == 10 and ours.tombstones == 0 and ours.ids().tolist() == list(range(10))
    assert_same(ours, reference, old, 10)
    # And the index goes on working: the same add succeeds once the storage does.
    for index in (ours, reference):
        index.add(np.array([2, 5, 50]), _vectors(3, seed=1))
    assert ours.tombstones == 2
    assert_same(ours, reference, _vectors(5, seed=2), 11)


def test_a_partial_append_to_an_interleaved_storage_makes_every_later_call_ask_for_a_rebuild() -> None:
    parts = [FailingStorage(DIM) for _ in range(2)]
    ours = _index(InterleavedStorage(parts))
    ours.add(np.arange(10), _vectors(10))
    parts[1].fail_next_append = True  # part 0 takes its half of the batch, part 1 fails
    with pytest.raises(IndexNeedsRebuild, match="rebuild") as raised:
        ours.add(np.arange(100, 110), _vectors(10, seed=1))
    assert isinstance(raised.value.__cause__, MemoryError)
    calls = {
        "add": lambda: ours.add(np.array([200]), _vectors(1, seed=3)),
        "remove": lambda: ours.remove(np.array([1])),
        "search": lambda: ours.search(_vectors(1), 3),
        "ids": ours.ids,
        "len": lambda: len(ours),
        "compact": ours.compact,
    }
    for name, call in calls.items():
        with pytest.raises(IndexNeedsRebuild, match="rebuild"):
            call()
        assert name  # named for the failure message of the loop above


def test_reset_after_a_partial_append_gives_a_working_index_again() -> None:
    parts = [FailingStorage(DIM) for _ in range(2)]
    ours, reference = _index(InterleavedStorage(parts)), FaissFlatIndex(DIM)
    ours.add(np.arange(10), _vectors(10))
    parts[1].fail_next_append = True
    with pytest.raises(IndexNeedsRebuild):
        ours.add(np.arange(100, 110), _vectors(10, seed=1))
    ours.reset()  # what Gallery.rebuild does first
    vectors = _vectors(16, seed=4)
    for index in (ours, reference):
        index.add(np.arange(16), vectors)
        index.remove(np.array([3, 7]))
    assert ours.tombstones == 2
    assert_same(ours, reference, vectors, 14)
    # Every id is its own best match: positions and ids agree again.
    assert ours.search(vectors[[0, 5, 15]], 1).ids[:, 0].tolist() == [0, 5, 15]


def test_an_add_that_stored_its_vectors_succeeds_even_when_the_compaction_after_it_fails() -> None:
    fresh_storage_fails = True

    def new_storage() -> FailingStorage:
        made = FailingStorage(DIM)
        made.fail_next_append = fresh_storage_fails  # compaction copies the live vectors into it
        return made

    ours = SlotIndex(FailingStorage(DIM), new_storage=new_storage, compact_min=2, compact_fraction=0.1)
    reference = FaissFlatIndex(DIM)
    vectors = _vectors(12, seed=5)
    for index in (ours, reference):
        index.add(np.arange(10), vectors[:10])
        index.add(np.array([1, 2, 3]), vectors[9:12])  # 3 tombstones: past both thresholds
    assert ours.compactions == 0 and ours.tombstones == 3
    assert_same(ours, reference, vectors, 10)
    fresh_storage_fails = False
    for index in (ours, reference):
        index.remove(np.array([4]))  # the next chance to compact takes it
    assert ours.compactions == 1 and ours.tombstones == 0
    assert_same(ours, reference, vectors, 9)

"""SlotIndex with `compact_aside` (what FaissHnswIndex uses): the fresh storage is built on a background
thread while searches and writes go on, and what changed meanwhile is replayed at the swap."""

from __future__ import annotations

import threading

import numpy as np

from service.index import CpuFlatStorage, FaissFlatIndex, SlotIndex
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same

DIM = 16
WAIT_S = 10.0


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


class _GatedStorage(CpuFlatStorage):
    """Appends wait for `gate` once `hold` is set: a compaction that takes as long as the test likes."""

    def __init__(self, gate: threading.Event, hold: threading.Event, entered: threading.Event) -> None:
        super().__init__(DIM)
        self._gate, self._hold, self._entered = gate, hold, entered

    def append(self, vectors: np.ndarray) -> None:
        if self._hold.is_set():
            self._entered.set()
            assert self._gate.wait(WAIT_S), "the test never opened the gate"
        super().append(vectors)


def _gated_index() -> tuple[SlotIndex, threading.Event, threading.Event, threading.Event]:
    gate, hold, entered = threading.Event(), threading.Event(), threading.Event()
    first = _GatedStorage(gate, hold, entered)
    index = SlotIndex(
        first,
        new_storage=lambda: _GatedStorage(gate, hold, entered),
        compact_min=4,
        compact_fraction=0.25,
        compact_aside=True,
    )
    return index, gate, hold, entered


def _in_thread(action: object) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_searches_and_writes_go_on_while_the_fresh_storage_is_built_and_end_up_exact() -> None:
    index, gate, hold, entered = _gated_index()
    reference = FaissFlatIndex(DIM)
    vectors = _vectors(200)
    for target in (index, reference):
        target.add(np.arange(100), vectors[:100])
    hold.set()  # from now on every append into a storage waits at the gate...
    remover = _in_thread(lambda: index.remove(np.arange(0, 60, 2)))  # 30 > 25 % of 100: compaction
    reference.remove(np.arange(0, 60, 2))
    assert entered.wait(WAIT_S)  # ...the background build is stuck inside its append
    remover.join(WAIT_S)
    assert not remover.is_alive(), "the removal waited for the compaction"
    # Meanwhile: searches answer, removals and replacements land (appends would wait at the gate too).
    searcher = _in_thread(lambda: index.search(vectors[:5], 3))
    searcher.join(WAIT_S)
    assert not searcher.is_alive(), "a search waited for the compaction"
    for target in (index, reference):
        target.remove(np.array([1, 3, 61]))  # 1 and 3 were live in the snapshot, 61 too
    assert index.compactions == 0
    hold.clear()
    gate.set()
    for target in (index, reference):
        target.add(np.array([5, 150]), vectors[150:152])  # a replacement and a new face, after the snapshot
    assert index.join_compaction(WAIT_S)
    assert index.compactions == 1
    assert index.ids().tolist() == reference.ids().tolist()
    assert_same(index, reference, _vectors(20, seed=3), 10)
    assert_same(index, reference, vectors[:100], 10)


def test_a_reset_during_the_background_build_drops_its_result() -> None:
    index, gate, hold, entered = _gated_index()
    index.add(np.arange(100), _vectors(100))
    hold.set()
    index.remove(np.arange(40))
    assert entered.wait(WAIT_S)
    index.reset()  # the snapshot's positions mean nothing now
    hold.clear()  # (the background build still waits at the gate)
    reference = FaissFlatIndex(DIM)
    for target in (index, reference):
        target.add(np.arange(500, 600), _vectors(100, seed=2))  # as many as before, other faces
    gate.set()
    assert index.join_compaction(WAIT_S)
    assert index.compactions == 0 and index.ids().tolist() == list(range(500, 600))
    assert_same(index, reference, _vectors(10, seed=4), 5)

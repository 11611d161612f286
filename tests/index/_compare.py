"""Compare a VectorIndex with FaissFlatIndex, the reference behaviour."""

from __future__ import annotations

import numpy as np

from service.index import FaissFlatIndex, VectorIndex


def assert_same(
    ours: VectorIndex,
    reference: FaissFlatIndex,
    queries: np.ndarray,
    k: int,
    *,
    score_tolerance: float = 1e-6,
) -> None:
    """Same scores, and the same ids up to the order of equal scores.

    Why not the same order: FAISS lists equal scores by position, last first, and which of several equal
    scores make a top k depends on how deep it searched; SlotIndex searches deeper past tombstones.
    """
    got, want = ours.search(queries, k), reference.search(queries, k)
    assert got.scores.dtype == np.float32 and got.ids.dtype == np.int64
    assert got.ids.shape == want.ids.shape == (len(queries), k)
    np.testing.assert_allclose(got.scores, want.scores, rtol=score_tolerance, atol=score_tolerance)
    everything = reference.search(queries, max(len(reference), 1))
    for row in range(len(queries)):
        ids = got.ids[row]
        assert (ids == -1).tolist() == (want.ids[row] == -1).tolist()
        live = ids[ids >= 0].tolist()
        assert len(set(live)) == len(live), "an id came back twice"
        for j, key in enumerate(live):
            tied = np.abs(everything.scores[row] - got.scores[row, j]) <= score_tolerance
            assert key in everything.ids[row][tied].tolist(), (row, j, key)

"""What every CPU index type does alike: the flat index's behaviour, which HNSW keeps (as tombstones) and
IVF keeps both before training (exact) and after (native removal)."""

from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

from service.index import FaissFlatIndex, FaissHnswIndex, FaissIvfIndex, IvfParams, VectorIndex
from service.pipeline.embed import l2_normalize

NewIndex = Callable[..., VectorIndex]


NEW_INDEX: dict[str, NewIndex] = {
    "flat": FaissFlatIndex,
    "hnsw": FaissHnswIndex,
    "ivf_untrained": FaissIvfIndex,  # default parameters: exact until 39,936 faces
    # Trained from the second face on; every cell probed, so searches are exact and comparable.
    "ivf_trained": partial(FaissIvfIndex, params=IvfParams(nlist=2, nprobe=2, min_per_list=1)),
}


@pytest.fixture(params=NEW_INDEX)
def new_index(request: pytest.FixtureRequest) -> NewIndex:
    """Makes an index of the type under test: `new_index(dim, search_threads=...)`."""
    return NEW_INDEX[request.param]


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim)))


def test_search_finds_each_vector_as_its_own_best_match_by_id(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(50)
    ids = np.arange(1000, 1050)
    index.add(ids, vectors)
    result = index.search(vectors, 3)
    assert result.ids[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(result.scores[:, 0], 1.0, rtol=1e-5)
    assert np.all(np.diff(result.scores, axis=1) <= 1e-6)


def test_scores_are_cosine_similarities(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(20)
    index.add(np.arange(20), vectors)
    query = _vectors(1, seed=9)
    result = index.search(query, 20)
    expected = (vectors @ query[0])[result.ids[0]]
    np.testing.assert_allclose(result.scores[0], expected, rtol=1e-5)


def test_removed_ids_are_never_returned_and_counts_follow(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(10)
    index.add(np.arange(10), vectors)
    assert index.remove(np.array([3, 7, 42])) == 2
    assert len(index) == 8
    result = index.search(vectors, 10)
    assert 3 not in result.ids and 7 not in result.ids
    assert index.ids().tolist() == [0, 1, 2, 4, 5, 6, 8, 9]


def test_adding_an_existing_id_replaces_its_vector(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(2)
    index.add(np.array([5]), vectors[:1])
    index.add(np.array([5]), vectors[1:])
    assert len(index) == 1
    assert index.search(vectors[1:], 1).ids[0, 0] == 5
    np.testing.assert_allclose(index.search(vectors[1:], 1).scores[0, 0], 1.0, rtol=1e-5)


def test_search_on_an_empty_index_returns_minus_one_ids(new_index: NewIndex) -> None:
    result = new_index(16).search(_vectors(2), 4)
    assert result.ids.shape == (2, 4) and np.all(result.ids == -1)


def test_asking_for_more_than_stored_pads_with_minus_one(new_index: NewIndex) -> None:
    index = new_index(16)
    index.add(np.arange(2), _vectors(2))
    assert index.search(_vectors(1, seed=3), 5).ids[0, 2:].tolist() == [-1, -1, -1]


def test_wrong_dimension_is_refused(new_index: NewIndex) -> None:
    with pytest.raises(ValueError, match="shape"):
        new_index(16).add(np.arange(2), _vectors(2, dim=8))


def test_reset_empties_the_index(new_index: NewIndex) -> None:
    index = new_index(16)
    index.add(np.arange(4), _vectors(4))
    index.reset()
    assert len(index) == 0 and index.ids().size == 0


def test_search_uses_the_configured_thread_count_from_any_thread(new_index: NewIndex) -> None:
    import threading

    import faiss

    index = new_index(16, search_threads=1)
    index.add(np.arange(4), _vectors(4))
    seen: list[int] = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)
        index.search(_vectors(1), 2)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1]


def test_adding_ids_below_the_largest_still_replaces_them(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(4)
    index.add(np.array([10, 20]), vectors[:2])
    index.remove(np.array([20]))
    index.add(np.array([10]), vectors[2:3])  # below the largest id ever added: must replace
    index.add(np.array([20]), vectors[3:4])  # the removed largest id comes back once
    assert index.ids().tolist() == [10, 20] and len(index) == 2
    assert index.search(vectors[2:3], 1).ids[0, 0] == 10
    assert 10 not in index.search(vectors[:1], 2).ids[0, :1]


def test_ids_added_after_a_reset_are_not_mistaken_for_old_ones(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(3)
    index.add(np.array([7]), vectors[:1])
    index.reset()
    index.add(np.array([7]), vectors[1:2])
    index.add(np.array([7]), vectors[2:3])
    assert len(index) == 1 and index.search(vectors[2:3], 1).ids[0, 0] == 7


def test_a_repeated_id_within_one_add_is_stored_once_with_its_last_vector(new_index: NewIndex) -> None:
    index = new_index(16)
    vectors = _vectors(3)
    index.add(np.array([4, 9, 4]), vectors)
    assert len(index) == 2 and index.ids().tolist() == [4, 9]
    np.testing.assert_allclose(index.search(vectors[2:3], 1).scores[0, 0], 1.0, rtol=1e-5)


def test_a_batch_of_queries_scores_like_one_query_at_a_time_and_leaves_faiss_settings_alone(
    new_index: NewIndex,
) -> None:
    import faiss

    index = new_index(16)
    index.add(np.arange(300), _vectors(300))
    queries = _vectors(9, seed=4)
    before = faiss.cvar.distance_compute_blas_threshold
    batch = index.search(queries, 5)  # 9 queries: FAISS's blocked path
    assert faiss.cvar.distance_compute_blas_threshold == before
    for row, query in enumerate(queries):
        one = index.search(query[None, :], 5)
        assert one.ids[0].tolist() == batch.ids[row].tolist()
        np.testing.assert_allclose(one.scores[0], batch.scores[row], rtol=1e-5, atol=1e-6)

"""FaissHnswIndex: recall against exact search, removal by tombstones, rebuilds, and how it is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.index import (
    FaissFlatIndex,
    FaissHnswIndex,
    HnswParams,
    IndexTypeUnavailable,
    index_for,
    index_type_refusal,
    make_index,
)
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same

DIM = 32


def _vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim))).astype(np.float32)


def _recall_at_10(index: FaissHnswIndex, exact: FaissFlatIndex, queries: np.ndarray) -> float:
    got, want = index.search(queries, 10).ids, exact.search(queries, 10).ids
    return float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]))


def test_recall_at_10_against_exact_search_is_at_least_0_99_at_the_default_parameters() -> None:
    # Random unit vectors are HNSW's hard case (no clusters); 128-d, as the service's embeddings.
    gallery, queries = _vectors(4000, dim=128), _vectors(200, seed=1, dim=128)
    index, exact = FaissHnswIndex(128), FaissFlatIndex(128)
    for target in (index, exact):
        target.add(np.arange(4000), gallery)
    assert _recall_at_10(index, exact, queries) >= 0.99


def test_removed_and_replaced_ids_are_never_returned_and_recall_holds_with_tombstones() -> None:
    gallery = _vectors(3000, dim=128)
    index = FaissHnswIndex(128, compact_fraction=1.0)  # never rebuilds: every removal stays a tombstone
    exact = FaissFlatIndex(128)
    for target in (index, exact):
        target.add(np.arange(3000), gallery)
    rng = np.random.default_rng(3)
    removed = rng.choice(3000, 900, replace=False)
    replaced = rng.choice(np.setdiff1d(np.arange(3000), removed), 300, replace=False)
    new_vectors = _vectors(300, seed=4, dim=128)
    for target in (index, exact):
        assert target.remove(removed) == 900
        target.add(replaced, new_vectors)
    assert index.tombstones == 1200 and index.compactions == 0 and len(index) == 2100
    # Queries at the removed vectors and at the replaced ones' old vectors: their best matches are gone.
    queries = np.concatenate([gallery[removed[:100]], gallery[replaced[:100]], new_vectors[:100]])
    result = index.search(queries, 10)
    assert not np.isin(result.ids, removed).any()
    assert np.all(result.ids[100:200, 0] != replaced[:100])  # the old vector no longer answers for it
    assert result.ids[200:, 0].tolist() == replaced[:100].tolist()  # the new one does
    assert np.all(result.ids >= 0)  # k live results each, tombstones skipped inside the search
    assert _recall_at_10(index, exact, queries) >= 0.99


def test_past_the_tombstone_fraction_the_graph_is_rebuilt_from_the_live_vectors() -> None:
    index = FaissHnswIndex(DIM, compact_fraction=0.2)
    gallery = _vectors(6000)
    index.add(np.arange(6000), gallery)
    index.remove(np.arange(0, 3000, 2))  # 1500 of 6000: past 20 % (and past SlotIndex's minimum of 1024)
    assert index.join_compaction(timeout=60)  # rebuilt aside, on a background thread
    assert index.compactions == 1 and index.tombstones == 0 and len(index) == 4500
    assert index.ids().tolist() == sorted(set(range(6000)) - set(range(0, 3000, 2)))
    found = index.search(gallery[1:3000:2], 1)  # kept vectors still find themselves after the rebuild
    assert np.mean(found.ids[:, 0] == np.arange(1, 3000, 2)) >= 0.99


def test_random_adds_and_removes_match_the_flat_index_on_a_small_gallery() -> None:
    # Small enough that HNSW's candidate list covers the graph, so its answers are exact: any slip in the
    # slot bookkeeping (tombstones, replacement, rebuilds) shows as a difference.
    rng = np.random.default_rng(5)
    index, exact = FaissHnswIndex(DIM, compact_fraction=0.3, compact_min=8), FaissFlatIndex(DIM)
    for step in range(30):
        ids = rng.integers(0, 150, size=rng.integers(1, 12))
        vectors = _vectors(len(ids), seed=100 + step)
        for target in (index, exact):
            if step % 3 == 2:
                target.remove(ids)
            else:
                target.add(ids, vectors)
        assert index.ids().tolist() == exact.ids().tolist()
        assert_same(index, exact, _vectors(6, seed=500 + step), 8, score_tolerance=1e-5)
    assert index.join_compaction(timeout=60)
    assert index.compactions > 0


def test_reset_drops_tombstones_and_the_graph() -> None:
    index = FaissHnswIndex(DIM, compact_fraction=1.0)
    index.add(np.arange(50), _vectors(50))
    index.remove(np.arange(10))
    index.reset()
    assert len(index) == 0 and index.tombstones == 0
    index.add(np.arange(5), _vectors(5, seed=2))
    assert sorted(index.search(_vectors(1, seed=9), 5).ids[0].tolist()) == [0, 1, 2, 3, 4]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="HNSW"):
        FaissHnswIndex(DIM, params=HnswParams(m=1))


# --- choosing it -------------------------------------------------------------------------------------


def test_settings_choose_hnsw_with_its_parameters() -> None:
    settings = Settings(index_type="hnsw", hnsw_m=12, hnsw_ef_search=40, hnsw_ef_construction=50)
    index = index_for(settings, DIM)
    assert isinstance(index, FaissHnswIndex)
    assert index.params == HnswParams(m=12, ef_construction=50, ef_search=40)
    assert isinstance(index_for(Settings(), DIM), FaissFlatIndex)  # flat stays the default


def test_hnsw_on_cuda_is_refused_at_start_with_what_to_change() -> None:
    with pytest.raises(IndexTypeUnavailable, match="FACEBANK_INDEX_TYPE=hnsw runs on the CPU only"):
        make_index(DIM, device="cuda", index_type="hnsw")
    message = index_type_refusal("hnsw", "cuda")
    assert message is not None and "\n" not in message and "FACEBANK_DEVICE=cpu" in message
    assert index_type_refusal("hnsw", "cpu") is None and index_type_refusal("flat", "cuda") is None


def test_hnsw_with_device_auto_runs_on_the_cpu() -> None:
    assert isinstance(make_index(DIM, device="auto", index_type="hnsw"), FaissHnswIndex)


def test_an_unknown_index_type_is_refused() -> None:
    with pytest.raises(IndexTypeUnavailable, match="flat, hnsw or ivf"):
        make_index(DIM, index_type="annoy")  # type: ignore[arg-type]


def test_serve_refuses_hnsw_on_cuda_in_one_line_before_starting(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main as facebank

    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACEBANK_INDEX_TYPE", "hnsw")
    monkeypatch.setenv("FACEBANK_DEVICE", "cuda")
    assert facebank(["serve", "--port", "1"]) == 2  # port 1: were it to start, binding would fail loudly
    error = capsys.readouterr().err
    assert error.startswith("error: refusing to serve: FACEBANK_INDEX_TYPE=hnsw runs on the CPU only")
    assert error.count("\n") == 1

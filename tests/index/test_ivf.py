"""FaissIvfIndex: exact until trained, recall against exact search once trained, native removal, and how it
is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.index import (
    FaissFlatIndex,
    FaissIvfIndex,
    IndexTypeUnavailable,
    IvfParams,
    index_for,
    index_type_refusal,
    make_index,
)
from service.pipeline.embed import l2_normalize
from tests.index._compare import assert_same

DIM = 32


def _vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, dim))).astype(np.float32)


def _clustered(n: int, per_identity: int = 4, seed: int = 0, dim: int = 128) -> np.ndarray:
    """Faces around identity centres (cosine about 0.7 within an identity), as a face gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // per_identity, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = np.repeat(centres, per_identity, axis=0) + rng.normal(size=(n, dim)) * (0.6 / np.sqrt(dim))
    return l2_normalize(faces).astype(np.float32)


def _recall_at_10(index: FaissIvfIndex, exact: FaissFlatIndex, queries: np.ndarray) -> float:
    got, want = index.search(queries, 10).ids, exact.search(queries, 10).ids
    return float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]))


def test_below_the_training_size_it_is_exact_and_at_it_trains_on_what_is_there() -> None:
    params = IvfParams(nlist=8, nprobe=1, min_per_list=39)
    index, exact = FaissIvfIndex(DIM, params=params), FaissFlatIndex(DIM)
    gallery = _vectors(params.train_at)
    for target in (index, exact):
        target.add(np.arange(params.train_at - 1), gallery[:-1])
    assert not index.trained
    queries = _vectors(20, seed=1)
    assert_same(index, exact, queries, 10)  # one probe of 8 would miss most of these: it is exact
    index.add(np.array([params.train_at - 1]), gallery[-1:])
    assert index.trained and len(index) == params.train_at
    assert index.ids().tolist() == list(range(params.train_at))
    assert _recall_at_10(index, exact, queries) < 0.9  # now it probes 1 cell of 8: approximate


def test_once_trained_a_new_photo_finds_its_identity_as_exact_search_does() -> None:
    # 20k faces, 64 cells, 16 probed. Deeper in the ranking (the identity's other faces, then strangers,
    # all about equally far in this synthetic gallery) IVF loses recall: bench --sections scale measures it.
    gallery = _clustered(20_000)
    index = FaissIvfIndex(128, params=IvfParams(nlist=64, nprobe=16))
    exact = FaissFlatIndex(128)
    for target in (index, exact):
        target.add(np.arange(20_000), gallery)
    assert index.trained
    photos = l2_normalize(gallery[::100] + np.random.default_rng(5).normal(size=(200, 128)) * 0.05)
    got, want = index.search(photos.astype(np.float32), 1).ids, exact.search(photos.astype(np.float32), 1).ids
    assert np.mean(got == want) >= 0.98


def test_removed_and_replaced_faces_leave_their_cells() -> None:
    params = IvfParams(nlist=16, nprobe=16, min_per_list=4)  # every cell probed: exact, comparable
    index, exact = FaissIvfIndex(DIM, params=params), FaissFlatIndex(DIM)
    gallery = _vectors(3000)
    for target in (index, exact):
        target.add(np.arange(3000), gallery)
    rng = np.random.default_rng(3)
    removed = rng.choice(3000, 900, replace=False)
    replaced = rng.choice(np.setdiff1d(np.arange(3000), removed), 300, replace=False)
    new_vectors = _vectors(300, seed=4)
    for target in (index, exact):
        assert target.remove(removed) == 900
        target.add(replaced, new_vectors)
    assert len(index) == 2100 and index.ids().tolist() == exact.ids().tolist()
    queries = np.concatenate([gallery[removed[:50]], gallery[replaced[:50]], new_vectors[:50]])
    assert_same(index, exact, queries, 10, score_tolerance=1e-5)
    assert index.search(new_vectors[:50], 1).ids[:, 0].tolist() == replaced[:50].tolist()


def test_random_adds_and_removes_match_the_flat_index_before_and_after_training() -> None:
    rng = np.random.default_rng(5)
    index = FaissIvfIndex(DIM, params=IvfParams(nlist=4, nprobe=4, min_per_list=20))  # trains at 80
    exact = FaissFlatIndex(DIM)
    states = set()
    for step in range(40):
        ids = rng.integers(0, 150, size=rng.integers(1, 12))
        vectors = _vectors(len(ids), seed=100 + step)
        for target in (index, exact):
            if step % 4 == 3:
                target.remove(ids)
            else:
                target.add(ids, vectors)
        states.add(index.trained)
        assert index.ids().tolist() == exact.ids().tolist() and len(index) == len(exact)
        assert_same(index, exact, _vectors(6, seed=500 + step), 8, score_tolerance=1e-5)
    assert states == {False, True}


def test_reset_goes_back_to_exact_search_and_trains_again() -> None:
    index = FaissIvfIndex(DIM, params=IvfParams(nlist=2, nprobe=1, min_per_list=5))
    index.add(np.arange(50), _vectors(50))
    assert index.trained
    index.reset()
    assert not index.trained and len(index) == 0 and index.ids().tolist() == []
    index.add(np.arange(5), _vectors(5, seed=2))
    assert not index.trained
    assert sorted(index.search(_vectors(1, seed=9), 5).ids[0].tolist()) == [0, 1, 2, 3, 4]
    index.add(np.arange(5, 10), _vectors(5, seed=3))
    assert index.trained and len(index) == 10


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="IVF"):
        FaissIvfIndex(DIM, params=IvfParams(nprobe=0))


# --- choosing it -------------------------------------------------------------------------------------


def test_settings_choose_ivf_with_its_parameters() -> None:
    settings = Settings(index_type="ivf", ivf_nlist=256, ivf_nprobe=12, ivf_min_per_list=50)
    index = index_for(settings, DIM)
    assert isinstance(index, FaissIvfIndex)
    assert index.params == IvfParams(nlist=256, nprobe=12, min_per_list=50)


def test_ivf_on_cuda_is_refused_at_start_with_what_to_change() -> None:
    with pytest.raises(IndexTypeUnavailable, match="FACEBANK_INDEX_TYPE=ivf runs on the CPU only"):
        make_index(DIM, device="cuda", index_type="ivf")
    message = index_type_refusal("ivf", "cuda")
    assert message is not None and "\n" not in message and "FACEBANK_DEVICE=cpu" in message
    assert index_type_refusal("ivf", "cpu") is None
    assert isinstance(make_index(DIM, device="auto", index_type="ivf"), FaissIvfIndex)


def test_serve_refuses_ivf_on_cuda_in_one_line_before_starting(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main as facebank

    monkeypatch.setenv("FACEBANK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("FACEBANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACEBANK_INDEX_TYPE", "ivf")
    monkeypatch.setenv("FACEBANK_DEVICE", "cuda")
    assert facebank(["serve", "--port", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: refusing to serve: FACEBANK_INDEX_TYPE=ivf runs on the CPU only")
    assert error.count("\n") == 1

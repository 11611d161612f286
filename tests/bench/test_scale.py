"""The scale section's recall measures and its targets (pure computations on small arrays)."""

from __future__ import annotations

import numpy as np

from bench.report import Comparison, Figure, Report
from bench.scale import FaceModel, faces_gallery, identity_recall, match_recall
from bench.targets import _ann_within


def _figure(figure_id: str, value: float) -> Figure:
    return Figure(figure_id, "scale", figure_id, value, "", "higher", Comparison("x", None, ""))


def test_identity_recall_ranks_identities_by_their_best_face() -> None:
    identity = np.array([0, 0, 1, 1, 2, 2])
    want = np.array([[0, 1, 2, 4]])  # identities 0, 1, 2
    assert identity_recall(np.array([[1, 3, 5, -1]]), want, identity) == 1.0  # other faces, same people
    assert identity_recall(np.array([[0, 1, -1, -1]]), want, identity) == 1 / 3


def test_match_recall_counts_only_exact_identities_above_the_threshold() -> None:
    identity = np.arange(4)
    want, scores = np.array([[0, 1, 2, 3]]), np.array([[0.9, 0.5, 0.2, 0.1]])
    recall, per_query = match_recall(np.array([[0, 2, 3, -1]]), want, scores, identity, 0.35)
    assert per_query == 2 and recall == 0.5  # 0 and 1 were matches; 1 was missed, 2 and 3 do not count


def test_the_synthetic_faces_follow_the_real_ones_they_were_fit_on() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 128)) + 2.0 * rng.normal(size=128)  # a shared offset, as real faces have
    real = np.repeat(centres, 10, axis=0) + rng.normal(size=(500, 128))
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    model = FaceModel.fit(real.astype(np.float32), np.repeat(np.arange(50), 10))
    gallery = faces_gallery(4000, model, None)
    same = np.einsum("ij,ij->i", gallery.vectors[0::4], gallery.vectors[1::4])
    other = np.einsum("ij,ij->i", gallery.vectors[0::4], np.roll(gallery.vectors[0::4], 1, axis=0))
    real_same = np.einsum("ij,ij->i", real[0::10], real[1::10])
    real_other = np.einsum("ij,ij->i", real[0::10], np.roll(real[0::10], 1, axis=0))
    assert abs(np.median(same) - np.median(real_same)) < 0.05
    assert abs(np.median(other) - np.median(real_other)) < 0.05
    assert gallery.identity.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_the_ann_target_takes_the_best_recall_within_the_latency() -> None:
    report = Report(environment={})
    for fid, value in {
        "scale.faces.1m.flat.exact.single_p50_ms": 20.0,
        "scale.faces.1m.flat.exact.synthetic.identity_recall_at_10": 1.0,
        "scale.faces.1m.hnsw.efSearch64.single_p50_ms": 0.5,
        "scale.faces.1m.hnsw.efSearch64.synthetic.identity_recall_at_10": 0.6,
        "scale.faces.1m.hnsw.efSearch512.single_p50_ms": 1.9,
        "scale.faces.1m.hnsw.efSearch512.synthetic.identity_recall_at_10": 0.95,
        "scale.faces.1m.hnsw.efSearch2048.single_p50_ms": 7.0,
        "scale.faces.1m.hnsw.efSearch2048.synthetic.identity_recall_at_10": 0.995,
    }.items():
        report.figures.append(_figure(fid, value))
    target = _ann_within(report, "t", "1m", 2, 0.99)
    assert target.status == "miss" and "efSearch512" in target.measured  # 2048 is too slow, flat excluded
    assert _ann_within(report, "t", "1m", 8, 0.99).status == "pass"
    assert _ann_within(report, "t", "10m", 10, 0.98).status == "not measured"


def test_the_milvus_row_ranks_the_same_identities_as_exact_search() -> None:
    """The milvus-lite row measures the service's store (grouping search) through the section's calls: on a
    small gallery it must find exact search's identities, and removed faces must leave its answers."""
    from tests._milvus import require_pymilvus

    require_pymilvus()
    from bench.scale import DEPTH, K, MilvusLiteFaces
    from service.index import FaissFlatIndex

    rng = np.random.default_rng(5)
    identity = np.repeat(np.arange(300), 4)
    vectors = rng.standard_normal((len(identity), 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[::40] + 0.05 * rng.standard_normal((30, 128)).astype(np.float32)
    keys = np.arange(len(identity), dtype=np.int64)
    exact = FaissFlatIndex(128)
    exact.add(keys, vectors)
    milvus = MilvusLiteFaces(identity)
    milvus.add(keys, vectors)
    assert len(milvus) == len(identity)
    got = milvus.search(queries, DEPTH)
    assert identity_recall(got.ids, exact.search(queries, DEPTH).ids, identity) == 1.0
    assert (got.ids[:, K:] == -1).all()  # one face per identity, K identities
    gone = np.flatnonzero(identity == identity[got.ids[0, 0]])  # every face of the first query's best person
    milvus.remove(gone)
    exact.remove(gone)
    after = milvus.search(queries[:1], DEPTH)
    assert identity[got.ids[0, 0]] not in {int(identity[key]) for key in after.ids[0] if key >= 0}
    assert identity_recall(after.ids, exact.search(queries[:1], DEPTH).ids, identity) == 1.0

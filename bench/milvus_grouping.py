"""Identity-level top-k in Milvus: the engine's grouping search (what service/index/milvus.py uses) against
over-fetching faces and grouping them here, both scored against the exact identity ranking, with the FAISS
flat gallery of one process as the baseline. Synthetic unit vectors, several faces per identity.

    PYTHONPATH=. python -m bench.milvus_grouping --faces 20000 --per-identity 10 --queries 200

Prints one line per (index, method): recall@k of the identity ranking vs exact, and one-query p50 in ms.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from service.index import make_index
from service.index.milvus import IDENTITY, SEARCH_PARAMS, VECTOR, MilvusStore


def _data(faces: int, per: int, queries: int, dim: int) -> tuple[np.ndarray, list[uuid.UUID], np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((faces // per, dim)).astype(np.float32)
    vectors = np.repeat(centres, per, axis=0) + 0.7 * rng.standard_normal((faces, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    people = [uuid.UUID(int=i + 1) for i in range(faces // per)]
    owners = [people[i // per] for i in range(faces)]
    chosen = rng.integers(0, len(centres), queries)
    probes = centres[chosen] + 0.9 * rng.standard_normal((queries, dim)).astype(np.float32)
    return vectors, owners, probes / np.linalg.norm(probes, axis=1, keepdims=True)


def _exact(vectors: np.ndarray, owners: list[uuid.UUID], probe: np.ndarray, k: int) -> list[uuid.UUID]:
    scores = vectors @ probe
    best: dict[uuid.UUID, float] = {}
    for row in np.argsort(-scores):
        best.setdefault(owners[row], float(scores[row]))
        if len(best) == k:
            break
    return list(best)


def _over_fetch(store: MilvusStore, probe: np.ndarray, k: int) -> list[uuid.UUID]:
    """What Gallery._rank_identities does for FAISS: 4k (at least 32) faces, deeper when too few people."""
    depth = max(4 * k, 32)
    while True:
        hits = store._client.search(  # the raw client: the store itself only offers grouping search
            store.name,
            data=[probe.tolist()],
            anns_field=VECTOR,
            limit=depth,
            output_fields=[IDENTITY],
            search_params={"metric_type": "IP", "params": SEARCH_PARAMS.get(store.target.index, {})},
        )[0]
        best: dict[uuid.UUID, float] = {}
        for hit in hits:
            best.setdefault(uuid.UUID(hit["entity"][IDENTITY]), float(hit["distance"]))
        if len(best) >= k or len(hits) < depth or depth >= 16384:
            return list(best)[:k]
        depth = min(16384, depth * 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=20_000)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--uri", help="a Milvus server; default: milvus-lite in a temporary folder")
    args = parser.parse_args()
    vectors, owners, probes = _data(args.faces, args.per_identity, args.queries, args.dim)
    exact = [_exact(vectors, owners, probe, args.k) for probe in probes]

    def report(label: str, ranked: list[list[uuid.UUID]], times: list[float]) -> None:
        hits = sum(len(set(got) & set(want)) for got, want in zip(ranked, exact, strict=True))
        recall = hits / (args.k * len(exact))
        print(f"{label:28} recall@{args.k} {recall:.4f}  p50 {1000 * float(np.median(times)):7.2f} ms")

    index = make_index(args.dim)
    index.add(np.arange(args.faces, dtype=np.int64), vectors)
    times, ranked = [], []
    for probe in probes:
        started = time.perf_counter()
        result = index.search(probe[None, :], max(4 * args.k, 32))
        best: dict[uuid.UUID, float] = {}
        for key in result.ids[0].tolist():
            best.setdefault(owners[key], 0.0)
        times.append(time.perf_counter() - started)
        ranked.append(list(best)[: args.k])
    report("faiss flat, over-fetch", ranked, times)

    with tempfile.TemporaryDirectory() as folder:
        uri = args.uri or str(Path(folder) / "bench.db")
        for kind in ("FLAT", "HNSW"):
            started = time.perf_counter()
            store = MilvusStore.connect(
                uri, model_tag=f"bench-{kind}@1", dim=args.dim, index=kind, prefix="bench"
            )
            store.drop()
            store.ensure_collection()
            store.upsert(np.arange(args.faces, dtype=np.int64), owners, vectors)
            store.flush()  # as the writer does after a re-sync
            print(f"milvus {kind}: created and filled in {time.perf_counter() - started:.1f} s")
            for method in ("grouping", "over-fetch"):
                times, ranked = [], []
                for probe in probes:
                    started = time.perf_counter()
                    if method == "grouping":
                        got = [owner for owner, _ in store.search_identities(probe[None, :], args.k)[0]]
                    else:
                        got = _over_fetch(store, probe, args.k)
                    times.append(time.perf_counter() - started)
                    ranked.append(got)
                report(f"milvus {kind}, {method}", ranked, times)
            store.drop()


if __name__ == "__main__":
    main()

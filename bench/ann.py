"""Section `ann` (opt-in): approximate search in-process (FAISS HNSW) beside the exact flat index.

Gallery: synthetic, 128-d, 4 faces per identity (face key // 4 is the identity): each identity a random unit
centre, each face the centre plus Gaussian noise of norm about 0.6, renormalised (two faces of one identity
score about 0.73, of two identities about 0). Queries: a new "photo" of a random enrolled identity (its centre
plus fresh noise). Pure random unit vectors, with no identity structure, are shown too at the smallest size:
they are HNSW's worst case.

Figures per gallery size: one-query p50 (one thread) for flat and HNSW, recall@10 of the face ranking and of
the identity ranking against exact search, build time, memory per million faces (RSS growth while
building). Identity ranking: the 40 best faces (an identity has at most 4, so the 10 best identities are
among them), each identity ranked by its best face; recall@10 = share of the exact top-10 identities HNSW also
ranks top 10. At the first size also the tombstone strategies (`service.index.hnsw`): 15 % of faces removed,
searched with the live-position filter inside HNSW vs searched deeper and filtered afterwards, and the
rebuild that drops them.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from bench.context import Context
from bench.report import Comparison, Figure
from bench.timing import BUILD_CHUNK as CHUNK
from bench.timing import ms, p50, timed_build
from service.index import FaissFlatIndex, FaissHnswIndex, HnswParams, SearchResult, SlotIndex

DIM = 128
K = 10
FACES_PER_IDENTITY = 4
IDENTITY_DEPTH = K * FACES_PER_IDENTITY
NOISE_NORM = 0.6
QUERIES = 200
EF_SWEEP = (64, 128, 200, 400, 800, 1600)


def sizes(ctx: Context) -> list[int]:
    return [10_000] if ctx.quick else list(ctx.ann_sizes)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def identity_chunks(n: int, *, seed: int = 2) -> Iterator[np.ndarray]:
    """`n` faces, 4 per identity in key order, in chunks (a multiple of 4 each)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        centres = _unit(rng.standard_normal((count // FACES_PER_IDENTITY, DIM), dtype=np.float32))
        faces = np.repeat(centres, FACES_PER_IDENTITY, axis=0)
        faces += rng.standard_normal(faces.shape, dtype=np.float32) * np.float32(NOISE_NORM / np.sqrt(DIM))
        yield _unit(faces)


def random_chunks(n: int, *, seed: int = 1) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        yield _unit(rng.standard_normal((min(CHUNK, n - start), DIM), dtype=np.float32))


def _collect(chunks: Iterator[np.ndarray], n: int) -> np.ndarray:
    out, at = np.empty((n, DIM), np.float32), 0
    for block in chunks:
        out[at : at + len(block)] = block
        at += len(block)
    return out


def _one_query_p50(search: Callable[[np.ndarray, int], SearchResult], queries: np.ndarray, k: int) -> float:
    for q in queries[:5]:
        search(q[None, :], k)
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return p50(times)


def _face_recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g[:K]) & set(w[:K])) / K for g, w in zip(got, want, strict=True)]))


def top_identities(ids: np.ndarray) -> list[list[int]]:
    """Per row, the first K distinct identities (key // 4) in ranking order."""
    out = []
    for row in ids:
        seen: list[int] = []
        for key in row.tolist():
            if key < 0:
                continue
            identity = key // FACES_PER_IDENTITY
            if identity not in seen:
                seen.append(identity)
                if len(seen) == K:
                    break
        out.append(seen)
    return out


def _identity_recall(got: np.ndarray, want: np.ndarray) -> float:
    pairs = zip(top_identities(got), top_identities(want), strict=True)
    return float(np.mean([len(set(g) & set(w)) / max(len(w), 1) for g, w in pairs]))


def _top_identity_agreement(got: np.ndarray, want: np.ndarray) -> float:
    """Share of queries whose best identity is the exact search's best identity."""
    pairs = zip(top_identities(got), top_identities(want), strict=True)
    return float(np.mean([g[:1] == w[:1] for g, w in pairs]))


def _queries(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    identities = rng.choice(n // FACES_PER_IDENTITY, QUERIES, replace=False)
    # The same centres identity_chunks drew: regenerate them chunk by chunk (cheap next to a build).
    centres = np.empty((n // FACES_PER_IDENTITY, DIM), np.float32)
    gen, at = np.random.default_rng(2), 0
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start) // FACES_PER_IDENTITY
        centres[at : at + count] = _unit(gen.standard_normal((count, DIM), dtype=np.float32))
        gen.standard_normal((count * FACES_PER_IDENTITY, DIM), dtype=np.float32)  # the faces' noise
        at += count
    picked = centres[identities].copy()
    picked += rng.standard_normal(picked.shape, dtype=np.float32) * np.float32(NOISE_NORM / np.sqrt(DIM))
    return _unit(picked)


def _name(n: int) -> str:
    return f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"


def _fig(
    ctx: Context, fid: str, label: str, value: float, unit: str, better: str, base: Comparison, note: str = ""
) -> None:
    ctx.add(
        Figure(
            id=fid,
            section="ann",
            label=label,
            value=value,
            unit=unit,
            better=better,  # type: ignore[arg-type]
            baseline=base,
            note=note,
        )
    )


def run(ctx: Context) -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # one-query latency with one thread, as the service searches
    params = HnswParams()
    for i, n in enumerate(sizes(ctx)):
        name = _name(n)
        ctx.log(f"ann {name}: flat build")
        flat = FaissFlatIndex(DIM, search_threads=1)
        gallery = _collect(identity_chunks(n), n)
        flat_s, flat_rss = timed_build(flat, gallery)
        ctx.log(f"ann {name}: hnsw build (M={params.m}, efConstruction={params.ef_construction})")
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use every core
        hnsw = FaissHnswIndex(DIM, params=params, search_threads=1)
        hnsw_s, hnsw_rss = timed_build(hnsw, gallery)
        del gallery
        faiss.omp_set_num_threads(1)
        queries = _queries(n)
        exact = flat.search(queries, IDENTITY_DEPTH).ids
        flat_p50 = _one_query_p50(flat.search, queries, K)
        base_p50 = Comparison("flat (exact) one query", ms(flat_p50), "ms")
        per_m = 1_000_000 / n / 2**20
        _fig(
            ctx,
            f"ann.{name}.flat.build_s",
            f"flat build, {name}",
            flat_s,
            "s",
            "lower",
            Comparison("hnsw build", hnsw_s, "s", compare=False),
        )
        _fig(
            ctx,
            f"ann.{name}.flat.mib_per_million",
            f"flat memory per million faces ({name})",
            flat_rss * per_m,
            "MiB",
            "lower",
            Comparison("raw vectors", DIM * 4 * 1_000_000 / 2**20, "MiB"),
        )
        _fig(
            ctx,
            f"ann.{name}.hnsw.build_s",
            f"hnsw build, {name} (2 cores)",
            hnsw_s,
            "s",
            "lower",
            Comparison("flat build", flat_s, "s"),
        )
        _fig(
            ctx,
            f"ann.{name}.hnsw.mib_per_million",
            f"hnsw memory per million faces ({name})",
            hnsw_rss * per_m,
            "MiB",
            "lower",
            Comparison("flat", flat_rss * per_m, "MiB"),
        )
        for ef in sorted({*EF_SWEEP, params.ef_search}):
            hnsw._storage.params = dataclasses.replace(params, ef_search=ef)  # bench only: sweep efSearch
            got = hnsw.search(queries, IDENTITY_DEPTH).ids
            p = _one_query_p50(hnsw.search, queries, K)
            tag = "" if ef == params.ef_search else f".ef{ef}"
            what = "default" if ef == params.ef_search else f"efSearch={ef}"
            _fig(
                ctx,
                f"ann.{name}.hnsw{tag}.single_p50_ms",
                f"hnsw one query p50, {name}, {what}",
                ms(p),
                "ms",
                "lower",
                base_p50,
            )
            _fig(
                ctx,
                f"ann.{name}.hnsw{tag}.identity_recall_at_10",
                f"hnsw identity recall@10 vs exact, {name}, {what}",
                _identity_recall(got, exact),
                "",
                "higher",
                Comparison("face recall@10", _face_recall(got, exact), "", compare=False),
            )
            ctx.report.figures[-1].also.append(
                Comparison(
                    "best identity same as exact", _top_identity_agreement(got, exact), "", compare=False
                )
            )
        hnsw._storage.params = params
        ctx.add(
            Figure(
                id=f"ann.{name}.flat.single_p50_ms",
                section="ann",
                label=f"flat one query p50, {name}",
                value=ms(flat_p50),
                unit="ms",
                better="lower",
                baseline=Comparison("hnsw default", None, "ms", missing="above"),
            )
        )
        if i == 0 and n <= 100_000:  # each costs another HNSW build: minutes more at 1M on two cores
            _tombstones(ctx, name, n, flat, hnsw, queries)
            _random_case(ctx, name, n, params)
        del flat, hnsw
        gc.collect()


def _tombstones(
    ctx: Context, name: str, n: int, flat: FaissFlatIndex, hnsw: FaissHnswIndex, queries: np.ndarray
) -> None:
    """15 % removed (under the 20 % rebuild threshold): filtered in HNSW vs searched deeper, then rebuilt."""
    removed = np.random.default_rng(11).choice(n, int(0.15 * n), replace=False)
    flat.remove(removed)
    hnsw.remove(removed)
    exact = flat.search(queries, IDENTITY_DEPTH).ids
    got = hnsw.search(queries, IDENTITY_DEPTH).ids
    assert not np.isin(got, removed).any()
    p = _one_query_p50(hnsw.search, queries, K)

    def deeper(q: np.ndarray, k: int) -> SearchResult:
        # SlotIndex's own strategy (search 2k+16, then k + tombstones, drop tombstones afterwards).
        with hnsw._lock.reading():
            return SlotIndex._search_live(hnsw, q, k)  # type: ignore[return-value]

    got_deep = deeper(queries, IDENTITY_DEPTH).ids
    p_deep = _one_query_p50(deeper, queries, K)
    _fig(
        ctx,
        f"ann.{name}.tombstones15.filtered_p50_ms",
        f"hnsw 15 % tombstones, filtered, {name}",
        ms(p),
        "ms",
        "lower",
        Comparison("searched deeper, filtered after", ms(p_deep), "ms"),
    )
    _fig(
        ctx,
        f"ann.{name}.tombstones15.filtered_identity_recall",
        f"recall@10, 15 % tombstones, {name}",
        _identity_recall(got, exact),
        "",
        "higher",
        Comparison("searched deeper, filtered after", _identity_recall(got_deep, exact), ""),
    )
    t = time.perf_counter()
    hnsw.compact()
    _fig(
        ctx,
        f"ann.{name}.tombstones15.rebuild_s",
        f"hnsw rebuild, 15 % tombstones, {name}",
        time.perf_counter() - t,
        "s",
        "lower",
        Comparison("hnsw build", None, "s", missing="above"),
        note="write lock held: searches wait",
    )


def _random_case(ctx: Context, name: str, n: int, params: HnswParams) -> None:
    """Pure random unit vectors (no identities): HNSW's worst case, face recall@10 only."""
    import faiss

    flat = FaissFlatIndex(DIM, search_threads=1)
    gallery = _collect(random_chunks(n), n)
    timed_build(flat, gallery)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    hnsw = FaissHnswIndex(DIM, params=params, search_threads=1)
    timed_build(hnsw, gallery)
    faiss.omp_set_num_threads(1)
    queries = _unit(np.random.default_rng(9).standard_normal((QUERIES, DIM), dtype=np.float32))
    exact = flat.search(queries, K).ids
    got = hnsw.search(queries, K).ids
    _fig(
        ctx,
        f"ann.{name}.random.hnsw.face_recall_at_10",
        f"hnsw face recall@10, random, {name}",
        _face_recall(got, exact),
        "",
        "higher",
        Comparison("target", 0.99, ""),
        note="no identity structure: HNSW's worst case",
    )
    _fig(
        ctx,
        f"ann.{name}.random.hnsw.single_p50_ms",
        f"hnsw one query p50, pure random vectors, {name}",
        ms(_one_query_p50(hnsw.search, queries, K)),
        "ms",
        "lower",
        Comparison("flat", ms(_one_query_p50(flat.search, queries, K)), "ms"),
    )

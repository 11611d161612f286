"""Section `scale` (opt-in): the stores at 1M and 10M faces (128-d, mobilefacenet's size), exact flat FAISS
as the baseline in the same run.

Gallery "faces": synthetic faces shaped like real ones, with real LFW faces mixed in. Real mobilefacenet
embeddings are not uniform on the sphere: on celeba-train (4,338 photos, 209 people) identity centres
spread over about 59 effective dimensions of 128 (participation ratio of their covariance) and one
person's photos score a median cosine of 0.58 with each other. So each synthetic identity is a centre drawn
from a Gaussian with celeba-train's mean and between-identity covariance, and each of its 4 faces that
centre plus noise with celeba-train's within-identity covariance, renormalised (`FaceModel`; the figures
print how its cosines compare with celeba-train's). LFW faces (at most 4 per person, `real_faces`) are
added last, so IVF never trains on them; a held-out photo of each LFW person with 2+ photos is a query.
LFW only measures here (recall of real queries), nothing is chosen on it.

Gallery "uniform": random unit vectors, one per identity: the worst case for ANN (every neighbour nearly
equally far), at the first size only.

Per store and setting: one-query p50 (one thread, as the service searches), q/s with 8 client threads,
recall@10 of the identity ranking against exact search (the 40 best faces, each identity ranked by its best
face: an identity has at most 4 faces, so its 10 best are among them), memory per million faces (RSS growth
while adding), build time (adding the gallery in chunks, as a rebuild from SQL does; IVF includes its
training), and the cost of removing 1,000 faces.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.context import Context
from bench.report import Comparison, Figure
from bench.timing import BUILD_CHUNK as CHUNK
from bench.timing import ms, p50, timed_build
from service.index import (
    FaissFlatIndex,
    FaissHnswIndex,
    FaissIvfIndex,
    HnswParams,
    IvfParams,
    SearchResult,
    VectorIndex,
)

# The faces are fit to this embedder's vectors, whatever the service's default (edgeface-xs-q, 512-d: 4× the
# memory and scan time); the figures in docs/benchmarks.md are mobilefacenet-shaped.
SCALE_EMBEDDER = "mobilefacenet"
DIM = 128  # its width
K = 10
FACES_PER_IDENTITY = 4
DEPTH = K * FACES_PER_IDENTITY
QUERIES = 200
LFW_QUERIES = 500
CLIENTS = 8
QPS_SECONDS = 5.0
REMOVED = 1000


# --- the gallery -----------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0, None))).astype(np.float32)


def _participation_ratio(cov: np.ndarray) -> float:
    values = np.linalg.eigvalsh(cov)
    return float(values.sum() ** 2 / (values**2).sum())


@dataclass(frozen=True)
class FaceModel:
    """Identity centres ~ N(mean, between), faces = centre + N(0, within) renormalised; fit on real faces."""

    mean: np.ndarray
    between: np.ndarray  # square root of the covariance (DIM, DIM)
    within: np.ndarray
    between_dims: float  # participation ratio of the between-identity covariance
    within_dims: float
    spreads: np.ndarray  # each real identity's RMS distance from its centre over the pooled RMS

    @classmethod
    def fit(cls, embeddings: np.ndarray, identities: np.ndarray) -> FaceModel:
        x = embeddings.astype(np.float64)
        names, index = np.unique(identities, return_inverse=True)
        means = np.stack([x[index == i].mean(axis=0) for i in range(len(names))])
        residuals = x - means[index]
        between, within = np.cov(means.T), np.cov(residuals.T)
        sq = (residuals**2).sum(axis=1)
        rms = np.sqrt(np.bincount(index, weights=sq) / np.bincount(index))
        return cls(
            means.mean(axis=0).astype(np.float32),
            _sqrt_psd(between),
            _sqrt_psd(within),
            _participation_ratio(between),
            _participation_ratio(within),
            (rms / np.sqrt(sq.mean())).astype(np.float32),
        )

    def centres(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, DIM), dtype=np.float32) @ self.between.T + self.mean

    def faces(self, rng: np.random.Generator, centres: np.ndarray, per_identity: int) -> np.ndarray:
        """`per_identity` faces of each centre, the noise scaled per identity as real identities' spreads."""
        spread = rng.choice(self.spreads, len(centres))
        noise = rng.standard_normal((len(centres) * per_identity, DIM), dtype=np.float32) @ self.within.T
        noise *= np.repeat(spread, per_identity)[:, None]
        return _unit(np.repeat(centres, per_identity, axis=0) + noise)


@dataclass
class Gallery:
    kind: str  # "faces" or "uniform"
    size: int  # as asked for (a "faces" gallery may hold up to 3 fewer: whole synthetic identities)
    vectors: np.ndarray  # (n, DIM) unit float32; row = face key
    identity: np.ndarray  # (n,) int64 identity of each face key
    queries: dict[str, np.ndarray]  # "synthetic" / "lfw" / "random": (q, DIM) unit float32


def _pairwise_cosines(x: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = x @ x.T
    upper = np.triu_indices(len(x), 1)
    same = (identities[:, None] == identities[None, :])[upper]
    return s[upper][same], s[upper][~same]


def faces_gallery(n: int, model: FaceModel, lfw: tuple[np.ndarray, np.ndarray] | None) -> Gallery:
    """`n` faces: synthetic identities of 4 faces, then (if given) LFW faces, at most 4 per person."""
    rng = np.random.default_rng(12)
    real_rows, real_ids, lfw_queries = np.empty((0, DIM), np.float32), np.empty(0, np.int64), None
    if lfw is not None:
        embeddings, people = lfw
        photos = np.bincount(people)
        seen: dict[int, int] = {}
        enrolled_of: dict[int, int] = {}
        enrolled, held_out = [], []
        for row, person in enumerate(people.tolist()):
            seen[person] = seen.get(person, 0) + 1
            if seen[person] == 1 and photos[person] >= 2:
                held_out.append(row)  # the query photo of a person with another photo enrolled
            elif enrolled_of.get(person, 0) < FACES_PER_IDENTITY:
                enrolled_of[person] = enrolled_of.get(person, 0) + 1
                enrolled.append(row)
        real_rows, real_ids = embeddings[enrolled], people[enrolled]
        pick = np.random.default_rng(13).choice(len(held_out), min(LFW_QUERIES, len(held_out)), replace=False)
        lfw_queries = np.ascontiguousarray(embeddings[np.asarray(held_out)[pick]])
    synthetic = (n - len(real_rows)) // FACES_PER_IDENTITY
    vectors = np.empty((synthetic * FACES_PER_IDENTITY + len(real_rows), DIM), np.float32)
    asked = np.sort(rng.choice(synthetic, QUERIES, replace=False))
    query_centres = np.empty((QUERIES, DIM), np.float32)
    per_chunk = CHUNK // FACES_PER_IDENTITY
    for start in range(0, synthetic, per_chunk):
        count = min(per_chunk, synthetic - start)
        centres = model.centres(rng, count)
        inside = asked[(asked >= start) & (asked < start + count)]
        query_centres[np.searchsorted(asked, inside)] = centres[inside - start]
        at = start * FACES_PER_IDENTITY
        vectors[at : at + count * FACES_PER_IDENTITY] = model.faces(rng, centres, FACES_PER_IDENTITY)
    vectors[synthetic * FACES_PER_IDENTITY :] = real_rows
    identity = np.concatenate(
        [
            np.arange(synthetic * FACES_PER_IDENTITY, dtype=np.int64) // FACES_PER_IDENTITY,
            synthetic + real_ids,
        ]
    )
    queries = {"synthetic": model.faces(np.random.default_rng(14), query_centres, 1)}
    if lfw_queries is not None:
        queries["lfw"] = lfw_queries
    return Gallery("faces", n, vectors, identity, queries)


def uniform_gallery(n: int) -> Gallery:
    rng = np.random.default_rng(21)
    vectors = np.empty((n, DIM), np.float32)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        vectors[start : start + count] = _unit(rng.standard_normal((count, DIM), dtype=np.float32))
    queries = {"random": _unit(rng.standard_normal((QUERIES, DIM), dtype=np.float32))}
    return Gallery("uniform", n, vectors, np.arange(n, dtype=np.int64), queries)


# --- the stores ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One store to measure: how to make it empty, the search-time settings to sweep, up to which size."""

    name: str
    make: Callable[[int, np.ndarray], VectorIndex]  # (gallery size, identity of each key) -> an empty store
    settings: Sequence[tuple[str, Callable[[VectorIndex], None]]]  # (label, apply it before searching)
    max_size: int
    skipped_because: str = ""


def _ef(ef: int) -> tuple[str, Callable[[VectorIndex], None]]:
    def apply(index: VectorIndex) -> None:
        assert isinstance(index, FaissHnswIndex)
        index._storage.params = dataclasses.replace(index.params, ef_search=ef)  # bench only: sweep

    return f"efSearch={ef}", apply


def _nprobe(nprobe: int) -> tuple[str, Callable[[VectorIndex], None]]:
    def apply(index: VectorIndex) -> None:
        assert isinstance(index, FaissIvfIndex)
        index.params = dataclasses.replace(index.params, nprobe=nprobe)

    return f"nprobe={nprobe}", apply


def _ivf(nlist_for: Callable[[int], int]) -> Callable[[int, np.ndarray], VectorIndex]:
    return lambda n, _: FaissIvfIndex(DIM, params=IvfParams(nlist=nlist_for(n)), search_threads=1)


class MilvusLiteFaces:
    """The service's Milvus store (service/index/milvus.py) in an embedded milvus-lite, seen through the
    `VectorIndex` calls this section makes. Searches are the service's: the engine's grouping search for the
    K best identities; each comes back as one face key of that identity (its first), so the identity
    ranking is compared with exact search's like every other store's."""

    def __init__(self, identity: np.ndarray) -> None:
        import tempfile
        import uuid

        from service.index.milvus import MilvusStore

        self._uuid = uuid.UUID
        self._folder = tempfile.TemporaryDirectory(prefix="facebank-scale-milvus-")
        self.store = MilvusStore.connect(
            str(Path(self._folder.name) / "scale.db"), model_tag="scale@1", dim=DIM, timeout_s=3600.0
        )
        self.dim = DIM
        self._identity = identity
        distinct, first = np.unique(identity, return_index=True)
        self._first_key = dict(zip(distinct.tolist(), first.tolist(), strict=True))

    def __len__(self) -> int:
        return self.store.count()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        owners = [self._uuid(int=int(self._identity[key]) + 1) for key in ids.tolist()]
        self.store.upsert(ids, owners, vectors)
        self.store.flush()  # milvus-lite searches unsealed rows without an index (service/index/milvus.py)

    def remove(self, ids: np.ndarray) -> int:
        self.store.delete(ids.tolist())
        return len(ids)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        ranked = self.store.search_identities(queries, min(k, K))
        ids = np.full((len(ranked), k), -1, np.int64)
        scores = np.zeros((len(ranked), k), np.float32)
        for row, people in enumerate(ranked):
            for col, (person, score) in enumerate(people):
                ids[row, col] = self._first_key[person.int - 1]
                scores[row, col] = score
        return SearchResult(scores=scores, ids=ids)

    def ids(self) -> np.ndarray:
        return self.store.keys()

    def reset(self) -> None:
        raise NotImplementedError("the bench makes a new store per gallery")

    def __del__(self) -> None:
        self.store.close()
        self._folder.cleanup()


STORES: list[Store] = [
    Store("flat", lambda n, _: FaissFlatIndex(DIM, search_threads=1), [("exact", lambda _: None)], 10**10),
    Store("ivf1024", _ivf(lambda n: 1024), [_nprobe(p) for p in (16, 32, 64, 128)], 1_000_000),
    Store("ivf4096", _ivf(lambda n: 4096), [_nprobe(p) for p in (32, 64, 128, 256, 512)], 10**10),
    Store(
        "hnsw",
        lambda n, _: FaissHnswIndex(DIM, params=HnswParams(), search_threads=1),
        [_ef(ef) for ef in (64, 128, 256, 512, 1024, 2048)],
        1_000_000,
        "HNSW at 10M would take about 1.5 h to build on these 2 cores (10× the 1M build): not run",
    ),
    # FLAT: milvus-lite is a development engine (docs/deployment.md); a Milvus server's indexes are what
    # the sizing section of docs/deployment.md covers.
    Store(
        "milvus-lite",
        lambda n, identity: MilvusLiteFaces(identity),
        [("FLAT, grouping search", lambda _: None)],
        1_000_000,
        "milvus-lite is a single-process development engine; 10M is a Milvus server's size",
    ),
]

# Stores left out of the uniform (worst-case) gallery, and why.
UNIFORM_SKIPS = {
    "hnsw": "another HNSW build (about 10 min on 2 cores); section `ann` measures HNSW on random vectors",
}


# --- measuring -------------------------------------------------------------------------------------------


def _one_query_p50(index: VectorIndex, queries: np.ndarray) -> float:
    for q in queries[:5]:
        index.search(q[None, :], K)
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], K)
        times.append(time.perf_counter() - t)
    return p50(times)


def _qps(index: VectorIndex, queries: np.ndarray) -> float:
    """Queries per second from `CLIENTS` threads, each searching one query at a time."""
    done = [0] * CLIENTS
    stop = threading.Event()

    def client(i: int) -> None:
        at = i
        while not stop.is_set():
            index.search(queries[at % len(queries)][None, :], K)
            done[i] += 1
            at += CLIENTS

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(QPS_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def top_identities(ids: np.ndarray, identity: np.ndarray) -> list[list[int]]:
    """Per row, the first K distinct identities in ranking order (faces ranked best first)."""
    out = []
    for row in ids:
        seen: list[int] = []
        for key in row.tolist():
            if key >= 0 and (who := int(identity[key])) not in seen:
                seen.append(who)
                if len(seen) == K:
                    break
        out.append(seen)
    return out


def identity_recall(got: np.ndarray, want: np.ndarray, identity: np.ndarray) -> float:
    pairs = zip(top_identities(got, identity), top_identities(want, identity), strict=True)
    return float(np.mean([len(set(g) & set(w)) / max(len(w), 1) for g, w in pairs]))


def match_recall(
    got: np.ndarray, want: np.ndarray, want_scores: np.ndarray, identity: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Recall of the exact top-10 identities that score at least `threshold` (the embedder's match
    threshold: the ones identify would report as a match), and how many such identities a query has."""
    found, wanted = 0, 0
    for row in range(len(want)):
        above = {
            int(identity[key])
            for key, score in zip(want[row], want_scores[row], strict=True)
            if key >= 0 and score >= threshold
        }
        exact = set(top_identities(want[row : row + 1], identity)[0]) & above
        found += len(exact & set(top_identities(got[row : row + 1], identity)[0]))
        wanted += len(exact)
    return (found / wanted if wanted else 1.0), wanted / len(want)


def _name(n: int) -> str:
    return f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"


class _Figures:
    def __init__(self, ctx: Context, prefix: str, what: str) -> None:
        self.ctx, self.prefix, self.what = ctx, prefix, what

    def add(
        self, key: str, label: str, value: float, unit: str, better: str, base: Comparison, note: str = ""
    ) -> None:
        self.ctx.add(
            Figure(
                id=f"{self.prefix}.{key}",
                section="scale",
                label=f"{label}, {self.what}",
                value=value,
                unit=unit,
                better=better,  # type: ignore[arg-type]
                baseline=base,
                note=note,
            )
        )


def _measure(ctx: Context, gallery: Gallery, stores: Sequence[Store]) -> None:
    import faiss

    n = len(gallery.vectors)
    size = _name(gallery.size)
    exact: dict[str, np.ndarray] = {}
    exact_scores: dict[str, np.ndarray] = {}
    threshold = _match_threshold(ctx)
    flat_p50 = flat_qps = flat_build = flat_mib = flat_remove = None
    for store in stores:
        fig = _Figures(
            ctx, f"scale.{gallery.kind}.{size}.{store.name}", f"{store.name}, {gallery.kind} {size}"
        )
        if gallery.size > store.max_size or (gallery.kind == "uniform" and store.name in UNIFORM_SKIPS):
            why = store.skipped_because if gallery.size > store.max_size else UNIFORM_SKIPS[store.name]
            ctx.log(f"scale {gallery.kind} {size}: {store.name} skipped: {why}")
            continue
        ctx.log(f"scale {gallery.kind} {size}: {store.name} build")
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use every core
        index = store.make(n, gallery.identity)
        build_s, grown = timed_build(index, gallery.vectors)
        faiss.omp_set_num_threads(1)  # searches: one thread each, as the service's request pool
        mib = grown / n * 1_000_000 / 2**20
        if store.name == "flat":
            flat_build, flat_mib = build_s, mib
            for name, queries in gallery.queries.items():
                found = index.search(queries, DEPTH)
                exact[name], exact_scores[name] = found.ids, found.scores
        fig.add("build_s", "build (2 cores)", build_s, "s", "lower", Comparison("flat", flat_build, "s"))
        fig.add(
            "mib_per_million",
            "memory per million faces",
            mib,
            "MiB",
            "lower",
            Comparison("flat", flat_mib, "MiB"),
        )
        main = next(iter(gallery.queries))
        for label, apply in store.settings:
            apply(index)
            tag = label.replace("=", "").replace(" ", "")
            p = ms(_one_query_p50(index, gallery.queries[main]))
            qps = _qps(index, gallery.queries[main])
            if store.name == "flat":
                flat_p50, flat_qps = p, qps
            fig.add(
                f"{tag}.single_p50_ms",
                f"one query p50, {label}",
                p,
                "ms",
                "lower",
                Comparison("flat", flat_p50, "ms"),
            )
            fig.add(
                f"{tag}.qps_8_clients",
                f"q/s, 8 clients, {label}",
                qps,
                "q/s",
                "higher",
                Comparison("flat", flat_qps, "q/s"),
            )
            for name, queries in gallery.queries.items():
                got = index.search(queries, DEPTH).ids
                recall = identity_recall(got, exact[name], gallery.identity)
                fig.add(
                    f"{tag}.{name}.identity_recall_at_10",
                    f"identity recall@10 vs exact, {name} queries, {label}",
                    recall,
                    "",
                    "higher",
                    Comparison("target", 0.99 if gallery.size <= 1_000_000 else 0.98, ""),
                )
                matches, per_query = match_recall(
                    got, exact[name], exact_scores[name], gallery.identity, threshold
                )
                fig.add(
                    f"{tag}.{name}.match_recall",
                    f"recall of the exact top-10 identities scoring ≥ {threshold:g}, {name} queries, {label}",
                    matches,
                    "",
                    "higher",
                    Comparison("such identities per query", per_query, "", compare=False),
                )
        removed = np.random.default_rng(31).choice(n, REMOVED, replace=False)
        t = time.perf_counter()
        index.remove(removed)
        took = ms(time.perf_counter() - t)
        if store.name == "flat":
            flat_remove = took
        fig.add(
            "remove_1000_ms", "remove 1,000 faces", took, "ms", "lower", Comparison("flat", flat_remove, "ms")
        )
        del index
        gc.collect()


def _match_threshold(ctx: Context) -> float:
    """SCALE_EMBEDDER's match threshold, from the prepared manifest."""
    from service.runtime.models import embedder_config, prepared_entry

    return embedder_config(prepared_entry(ctx.settings.model_dir, SCALE_EMBEDDER)).threshold


def _real_faces(ctx: Context, cache: Path) -> tuple[FaceModel, tuple[np.ndarray, np.ndarray] | None]:
    from bench.real_faces import embed_folder

    model_dir = ctx.settings.model_dir
    celeba = embed_folder(
        ctx.shared / "data" / "celeba-train",
        cache / "celeba-train-emb.npz",
        embedder=SCALE_EMBEDDER,
        model_dir=model_dir,
    )
    model = FaceModel.fit(*celeba)
    within, between = _pairwise_cosines(*celeba)
    sample = faces_gallery(4 * 1000, model, None)
    s_within, s_between = _pairwise_cosines(sample.vectors, sample.identity)
    ctx.log(
        "face model from celeba-train: within-identity cosine p25/p50/p75 "
        f"{np.percentile(within, [25, 50, 75]).round(2).tolist()} (synthetic "
        f"{np.percentile(s_within, [25, 50, 75]).round(2).tolist()}), between p50/p99 "
        f"{np.percentile(between, [50, 99]).round(2).tolist()} (synthetic "
        f"{np.percentile(s_between, [50, 99]).round(2).tolist()}); effective dims between "
        f"{model.between_dims:.0f}, within {model.within_dims:.0f} of {DIM}"
    )
    lfw_dir = ctx.lfw
    lfw = (
        embed_folder(lfw_dir, cache / "lfw-emb.npz", embedder=SCALE_EMBEDDER, model_dir=model_dir)
        if lfw_dir.is_dir()
        else None
    )
    return model, lfw


def run(ctx: Context) -> None:
    sizes = [20_000] if ctx.quick else list(ctx.scale_sizes)
    stores = [s for s in STORES if not ctx.scale_stores or s.name in ctx.scale_stores]
    model, lfw = _real_faces(ctx, ctx.embedding_cache)
    for i, n in enumerate(sizes):
        ctx.log(f"scale: generating {_name(n)} faces")
        gallery = faces_gallery(n, model, lfw)
        _measure(ctx, gallery, stores)
        del gallery
        gc.collect()
        if i == 0 and ctx.scale_uniform:
            gallery = uniform_gallery(n)
            _measure(ctx, gallery, stores)
            del gallery
            gc.collect()

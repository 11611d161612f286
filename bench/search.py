"""Section `search`: our index beside stock FAISS flat, a plain matmul + top-k, and the memory floor.

Synthetic unit vectors (d=128) fill the gallery. For each gallery size: p50 latency of one query and
throughput at 1024 queries per call; on the CPU also FAISS OpenMP threads 1 vs all cores (the service's
`search_threads`, default 1) and concurrent single-query searchers (our searches share a readers-writer
lock).

With `--device cuda`, "ours" is the service's GPU index (`FaissGpuFlatIndex`, fp16 per `index_fp16`) and,
from 1M up, `_gpu_variants` measures what could close the gap to the memory floor (docs/benchmarks.md,
"GPU search"): the gallery split over shards searched at once, FAISS's cuVS flat path, the cost of
tombstones (removed faces still stored), and an IVF index with its recall@10 against the exact result.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from bench.context import Context
from bench.data import unit_vector_chunks
from bench.report import Comparison, Figure
from bench.timing import ms, p50, samples

DIM = 128
K = 10
BATCH = 1024


def _size_name(n: int) -> str:
    return f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"


def gallery_sizes(ctx: Context) -> list[int]:
    if ctx.quick:
        return [10_000]
    if ctx.device == "cuda":
        return [10_000, 1_000_000, 10_000_000]
    return [10_000, 100_000, 1_000_000]


def fill(n: int, add: Callable[[np.ndarray, np.ndarray], None]) -> None:
    start = 0
    for block in unit_vector_chunks(n, DIM, seed=1):
        add(np.arange(start, start + len(block), dtype=np.int64), block)
        start += len(block)


# --- baselines --------------------------------------------------------------------------------------------


def read_floor_s(gallery: np.ndarray, repeat: int) -> tuple[float, float, str]:
    """Fastest time to read every byte of `gallery` once: (seconds, GB/s, how).

    The fastest of numpy's max and sum reductions (max has no pairwise summation, so it runs at the
    load rate in cache), on one core and split over all cores.
    """
    flat = gallery.reshape(-1)
    cores = os.cpu_count() or 1
    best, how = float("inf"), ""
    chunks = np.array_split(flat, cores)
    for kernel in (np.max, np.sum):
        seconds = min(samples(partial(kernel, flat), repeat=repeat, warmup=1))
        if seconds < best:
            best, how = seconds, f"numpy {kernel.__name__}, 1 core"
        if cores > 1 and len(flat) >= 1_000_000:
            with ThreadPoolExecutor(cores) as pool:  # numpy releases the GIL in large reductions

                def read_all(k: Callable[[np.ndarray], Any] = kernel) -> None:
                    list(pool.map(k, chunks))

                seconds = min(samples(read_all, repeat=repeat, warmup=1))
            if seconds < best:
                best, how = seconds, f"numpy {kernel.__name__}, {cores} threads"
    return best, gallery.nbytes / best / 1e9, how


def numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Exact top-k ids by inner product: matrix product per gallery block, argpartition, merge."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(gallery), block):
        scores = queries @ gallery[start : start + block].T
        if scores.shape[1] > k:
            part = np.argpartition(scores, -k, axis=1)[:, -k:]
            scores = np.take_along_axis(scores, part, axis=1)
            ids = part + start
        else:
            ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids], axis=1)
        if best_scores.shape[1] > k:
            part = np.argpartition(best_scores, -k, axis=1)[:, -k:]
            best_scores = np.take_along_axis(best_scores, part, axis=1)
            best_ids = np.take_along_axis(best_ids, part, axis=1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_ids, order, axis=1)


def concurrent_qps(
    search: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    workers: int,
    seconds: float,
    omp_threads: int | None = None,
) -> float:
    """Single-query searches per second from `workers` Python threads searching at once.

    FAISS's OpenMP thread count is per calling thread (libgomp keeps it per thread): a new thread starts at
    the process default (all cores) whatever the main thread set, unless `omp_threads` sets it in each worker.
    """
    import faiss

    counts = [0] * workers
    barrier = threading.Barrier(workers + 1)

    def worker(i: int) -> None:
        if omp_threads is not None:
            faiss.omp_set_num_threads(omp_threads)
        barrier.wait()
        j = i
        while time.perf_counter() < stop:
            search(queries[j % len(queries)][None])
            counts[i] += 1
            j += workers

    with ThreadPoolExecutor(workers) as pool:
        stop = float("inf")
        futures = [pool.submit(worker, i) for i in range(workers)]
        start = time.perf_counter()
        stop = start + seconds
        barrier.wait()
        for future in futures:
            future.result()
    return sum(counts) / (time.perf_counter() - start)


# --- the section ----------------------------------------------------------------------------------------


class _Cycle:
    """One query at a time, a different one each call."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.i = 0

    def __call__(self) -> np.ndarray:
        self.i += 1
        return self.queries[self.i % len(self.queries)][None]


def _search_one(index: Any, q: _Cycle) -> Any:
    return index.search(q(), K)


def _repeats(ctx: Context, n: int) -> tuple[int, int]:
    """(single-query repeats, batch repeats) for a gallery of n."""
    if ctx.quick:
        return 20, 2
    if n <= 10_000:
        return 300, 5
    if n <= 100_000:
        return 60, 3
    return 15, 2


def run(ctx: Context) -> None:
    import faiss

    threads = ctx.settings.search_threads or faiss.omp_get_max_threads()
    queries = next(unit_vector_chunks(BATCH, DIM, seed=2))
    gpu = _GpuBaselines.create() if ctx.device == "cuda" else None
    for n in gallery_sizes(ctx):
        _one_gallery(ctx, n, queries, gpu, threads)
        faiss.omp_set_num_threads(threads)
        if gpu is not None:
            gpu.release()
    if ctx.device != "cuda":
        ctx.add(
            Figure(
                id="search.10m.single_p50_ms",
                section="search",
                label=f"gallery 10,000,000×{DIM}",
                value=None,
                unit="ms",
                better="lower",
                missing="GPU only (run with --device cuda); not measured on this CPU",
                baseline=Comparison("stock faiss GPU flat", None, "ms", missing="GPU only"),
            )
        )


def _one_gallery(ctx: Context, n: int, queries: np.ndarray, gpu: _GpuBaselines | None, threads: int) -> None:
    import faiss

    from service.index import make_index

    name = _size_name(n)
    ctx.log(f"search: gallery {n:,} × {DIM}")
    gallery = np.empty((n, DIM), np.float32)

    def keep(ids: np.ndarray, block: np.ndarray) -> None:
        gallery[ids[0] : ids[0] + len(ids)] = block

    fill(n, keep)
    ours = make_index(
        DIM, device=ctx.device, search_threads=ctx.settings.search_threads, fp16=ctx.settings.index_fp16
    )
    started = time.perf_counter()
    ours.add(np.arange(n, dtype=np.int64), gallery)
    ours_add_s = time.perf_counter() - started
    stock: Any = faiss.IndexFlatIP(DIM) if gpu is None else gpu.flat(fp16=False)
    stock.add(gallery)
    single_repeats, batch_repeats = _repeats(ctx, n)
    faiss.omp_set_num_threads(threads)
    where = "GPU" if gpu is not None else f"CPU, FAISS threads {threads} (service setting)"
    ours_label = f"service.index {type(ours).__name__} ({where})"
    stock_label = (
        "stock faiss.IndexFlatIP" if gpu is None else "stock faiss.GpuIndexFlatIP fp32"
    ) + " (same threads)"

    # One query.
    q = _Cycle(queries)
    ours_single = samples(lambda: ours.search(q(), K), repeat=single_repeats, warmup=2)
    stock_single = samples(lambda: stock.search(q(), K), repeat=single_repeats, warmup=2)
    if gpu is None:
        floor_s, bandwidth, how = read_floor_s(gallery, repeat=max(5, min(single_repeats, 20)))
        floor = Comparison(
            f"memory floor: {gallery.nbytes / 1e6:.0f} MB read at {bandwidth:.1f} GB/s "
            f"(fastest read of these bytes: {how})",
            ms(floor_s),
            "ms",
        )
        plain = Comparison(
            "numpy matmul + argpartition (OpenBLAS threads: all cores)",
            ms(p50(samples(lambda: numpy_topk(gallery, q(), K), repeat=single_repeats, warmup=1))),
            "ms",
        )
        also = [floor, plain]
    else:
        also = gpu.single_query_comparisons(gallery, queries, K, single_repeats)
    ctx.add(
        Figure(
            id=f"search.{name}.single_p50_ms",
            section="search",
            label=f"{ours_label}: 1 query, k={K}, gallery {n:,}×{DIM}, p50",
            value=ms(p50(ours_single)),
            unit="ms",
            better="lower",
            baseline=Comparison(stock_label, ms(p50(stock_single)), "ms"),
            also=also,
            note=f"p50 of {len(ours_single)} searches; our index took {n:,} vectors in {ours_add_s:.2f} s",
        )
    )

    # 1024 queries per call.
    ours_batch = samples(lambda: ours.search(queries, K), repeat=batch_repeats, warmup=1)
    stock_batch = samples(lambda: stock.search(queries, K), repeat=batch_repeats, warmup=1)
    if gpu is None:
        plain_batch = samples(lambda: numpy_topk(gallery, queries, K), repeat=1, warmup=0)
        label = "numpy matmul + argpartition (OpenBLAS threads: all cores)"
        batch_also = [Comparison(label, BATCH / p50(plain_batch), "q/s")]
    else:
        batch_also = gpu.batch_comparisons(gallery, queries, K, batch_repeats)
    ctx.add(
        Figure(
            id=f"search.{name}.batch{BATCH}_qps",
            section="search",
            label=f"{ours_label}: {BATCH} queries per call, k={K}, gallery {n:,}×{DIM}",
            value=BATCH / p50(ours_batch),
            unit="q/s",
            better="higher",
            baseline=Comparison(stock_label, BATCH / p50(stock_batch), "q/s"),
            also=batch_also,
            note=f"p50 of {len(ours_batch)} calls",
        )
    )

    if gpu is not None and n >= 1_000_000:
        del stock
        _gpu_variants(ctx, name, n, gallery, queries, ours, gpu, single_repeats, batch_repeats)
    if gpu is None and (n >= 100_000 or ctx.quick):
        _small_batches(ctx, name, n, ours, queries, single_repeats, threads)
        _threads(ctx, name, n, gallery, queries, single_repeats, batch_repeats, threads)
        _worker_thread(ctx, name, n, ours, queries, single_repeats, threads)
        _concurrency(ctx, name, n, ours, stock, queries, threads)


def _threads(
    ctx: Context,
    name: str,
    n: int,
    gallery: np.ndarray,
    queries: np.ndarray,
    single_repeats: int,
    batch_repeats: int,
    setting: int,
) -> None:
    """Our index made with search_threads = 1 beside = all cores, searched from a new thread each time."""
    import faiss

    from service.index import make_index

    cores = os.cpu_count() or 1
    results: dict[int, tuple[list[float], list[float]]] = {}
    for threads in sorted({1, cores}):
        index = make_index(DIM, device=ctx.device, search_threads=threads)
        index.add(np.arange(n, dtype=np.int64), gallery)
        q = _Cycle(queries)
        single = _in_worker_thread(
            partial(samples, partial(_search_one, index, q), repeat=single_repeats, warmup=2)
        )
        batch = _in_worker_thread(
            partial(samples, partial(index.search, queries, K), repeat=batch_repeats, warmup=1)
        )
        results[threads] = (single, batch)
        del index
    faiss.omp_set_num_threads(setting)
    one, every = results[1], results[cores]
    baseline = "same with search_threads = 1 (the service default)"
    ctx.add(
        Figure(
            id=f"search.{name}.threads_all.single_p50_ms",
            section="search",
            label=f"our index, search_threads = {cores} (all cores): 1 query, gallery {n:,}, p50",
            value=ms(p50(every[0])),
            unit="ms",
            better="lower",
            baseline=Comparison(baseline, ms(p50(one[0])), "ms"),
        )
    )
    ctx.add(
        Figure(
            id=f"search.{name}.threads_all.batch{BATCH}_qps",
            section="search",
            label=f"our index, search_threads = {cores} (all cores): {BATCH} queries per call, gallery {n:,}",
            value=BATCH / p50(every[1]),
            unit="q/s",
            better="higher",
            baseline=Comparison(baseline, BATCH / p50(one[1]), "q/s"),
        )
    )


def _small_batches(
    ctx: Context, name: str, n: int, ours: Any, queries: np.ndarray, single_repeats: int, setting: int
) -> None:
    """Queries per second when concurrent requests' faces are searched together in one call."""
    single = samples(partial(_search_one, ours, _Cycle(queries)), repeat=single_repeats, warmup=2)
    for size in (8, 32):
        batch = queries[:size]
        times = samples(partial(ours.search, batch, K), repeat=max(3, single_repeats // 2), warmup=1)
        ctx.add(
            Figure(
                id=f"search.{name}.batch{size}_qps",
                section="search",
                label=f"our index: {size} queries per call, gallery {n:,} (micro-batching)",
                value=size / p50(times),
                unit="q/s",
                better="higher",
                baseline=Comparison("one query per call", 1 / p50(single), "q/s"),
                note=f"p50 of {len(times)} calls; FAISS threads {setting}",
            )
        )


def _in_worker_thread(call: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def _worker_thread(
    ctx: Context, name: str, n: int, ours: Any, queries: np.ndarray, single_repeats: int, setting: int
) -> None:
    """One query from a fresh thread, as request threads search, beside the thread that set the threads."""
    import faiss

    faiss.omp_set_num_threads(setting)
    q = _Cycle(queries)
    here = samples(partial(_search_one, ours, q), repeat=single_repeats, warmup=2)
    elsewhere = _in_worker_thread(
        lambda: samples(partial(_search_one, ours, q), repeat=single_repeats, warmup=2)
    )

    def search_then_read() -> int:
        ours.search(queries[:1], K)
        return int(faiss.omp_get_max_threads())

    seen = _in_worker_thread(search_then_read)
    ctx.add(
        Figure(
            id=f"search.{name}.worker_thread.single_p50_ms",
            section="search",
            label=f"our index searched from a new thread (as in a request): 1 query, gallery {n:,}, p50",
            value=ms(p50(elsewhere)),
            unit="ms",
            better="lower",
            baseline=Comparison(
                f"from the thread that called make_index(search_threads={setting})", ms(p50(here)), "ms"
            ),
            note=(
                f"FAISS threads in the new thread after a search: {seen} (setting {setting}); OpenMP's "
                "thread count belongs to each thread (libgomp), so the index must set it where it searches"
            ),
        )
    )


def _concurrency(
    ctx: Context, name: str, n: int, ours: Any, stock: Any, queries: np.ndarray, setting: int
) -> None:
    """Single queries from one thread per core at once: our index (shared read lock) beside stock FAISS."""
    workers = max(2, os.cpu_count() or 1)
    seconds = 1.0 if ctx.quick else 4.0

    def qps(index: Any, *, clients: int = workers) -> float:
        return concurrent_qps(lambda x: index.search(x, K), queries, clients, seconds, omp_threads=setting)

    ctx.add(
        Figure(
            id=f"search.{name}.concurrent{workers}.single_qps",
            section="search",
            label=f"our index: {workers} threads searching 1 query each at once, gallery {n:,}",
            value=qps(ours),
            unit="q/s",
            better="higher",
            baseline=Comparison(f"stock faiss.IndexFlatIP, {workers} threads, no lock", qps(stock), "q/s"),
            also=[
                Comparison("our index, one thread searching", qps(ours, clients=1), "q/s"),
            ],
            note=f"FAISS threads set to {setting} in each searching thread; {seconds:.0f} s each",
        )
    )


def _gpu_variants(
    ctx: Context,
    name: str,
    n: int,
    gallery: np.ndarray,
    queries: np.ndarray,
    ours: Any,
    gpu: _GpuBaselines,
    single_repeats: int,
    batch_repeats: int,
) -> None:
    """GPU only: the candidate ways to close the gap to the floor, each beside our index as it runs."""
    import gc

    from service.index import FaissGpuFlatIndex

    fp16 = ctx.settings.index_fp16
    q = _Cycle(queries)
    ours_single = ms(p50(samples(lambda: ours.search(q(), K), repeat=single_repeats, warmup=2)))
    ours_label = f"our GPU index, 1 shard ({'fp16' if fp16 else 'fp32'})"

    def single(label_id: str, label: str, index: Any, note: str = "") -> None:
        value = ms(p50(samples(lambda: index.search(q(), K), repeat=single_repeats, warmup=3)))
        batch = BATCH / p50(samples(lambda: index.search(queries, K), repeat=batch_repeats, warmup=1))
        ctx.add(
            Figure(
                id=f"search.{name}.gpu.{label_id}.single_p50_ms",
                section="search",
                label=f"{label}: 1 query, k={K}, gallery {n:,}×{DIM}, p50",
                value=value,
                unit="ms",
                better="lower",
                baseline=Comparison(ours_label, ours_single, "ms"),
                also=[Comparison(f"same, {BATCH} queries per call", batch, "q/s", compare=False)],
                note=note,
            )
        )

    # 1. Shards: FAISS k-selects each query on one thread block; shards select on several SMs at once.
    for shards in (4, 16):
        index = FaissGpuFlatIndex(DIM, fp16=fp16, shards=shards)
        index.add(np.arange(n, dtype=np.int64), gallery)
        single(f"shards{shards}", f"our GPU index, {shards} shards searched at once", index)
        del index
        gc.collect()

    # 2. FAISS's cuVS brute-force path (one multi-block k-selection), where this faiss build has it.
    cuvs_missing = None
    try:
        config = gpu.faiss.GpuIndexFlatConfig()
        config.useFloat16 = fp16
        if not hasattr(config, "use_cuvs"):
            raise RuntimeError("GpuIndexFlatConfig has no use_cuvs in this faiss")
        config.use_cuvs = True
        cuvs = gpu.faiss.GpuIndexFlatIP(gpu.resources, DIM, config)
        cuvs.add(gallery)
        single("cuvs", "stock faiss.GpuIndexFlatIP with use_cuvs=True", cuvs)
        del cuvs
    except RuntimeError as exc:
        cuvs_missing = f"not measured: {exc}"
    if cuvs_missing is not None:
        ctx.add(
            Figure(
                id=f"search.{name}.gpu.cuvs.single_p50_ms",
                section="search",
                label=f"stock faiss.GpuIndexFlatIP with use_cuvs=True: 1 query, gallery {n:,}",
                value=None,
                unit="ms",
                better="lower",
                baseline=Comparison(ours_label, ours_single, "ms"),
                missing=cuvs_missing,
            )
        )

    # 3. Tombstones: removed faces stay on the device until compaction, and each one deepens the search.
    rng = np.random.default_rng(3)
    for removed in (100, 1000):
        index = FaissGpuFlatIndex(DIM, fp16=fp16)
        index.add(np.arange(n, dtype=np.int64), gallery)
        index.remove(rng.choice(n, size=removed, replace=False))
        probe = FaissGpuFlatIndex(DIM, fp16=fp16)  # compaction cost, measured on a copy of the same size
        probe.add(np.arange(n, dtype=np.int64), gallery)
        probe.remove(np.arange(removed))
        started = time.perf_counter()
        probe.compact()
        compact_s = time.perf_counter() - started
        del probe
        single(
            f"tombstones{removed}",
            f"our GPU index with {removed:,} removed faces not yet compacted (search depth k+{removed})",
            index,
            note=f"compacting {n:,} vectors with {removed:,} removed took {compact_s:.2f} s",
        )
        del index
        gc.collect()

    # 4. IVF: approximate, so its recall@10 against the exact top 10 goes with its time.
    exact = gpu.flat(fp16=False)
    exact.add(gallery)
    truth = exact.search(queries[:200], K)[1]
    del exact
    nlist = 4096 if n <= 1_000_000 else 16384
    config = gpu.faiss.GpuIndexIVFFlatConfig()
    ivf = gpu.faiss.GpuIndexIVFFlat(gpu.resources, DIM, nlist, gpu.faiss.METRIC_INNER_PRODUCT, config)
    train = gallery[np.random.default_rng(4).choice(n, size=min(n, 64 * nlist), replace=False)]
    started = time.perf_counter()
    ivf.train(train)
    ivf.add(gallery)
    build_s = time.perf_counter() - started
    for nprobe in (32, 256):
        ivf.nprobe = nprobe
        found = ivf.search(queries[:200], K)[1]
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))
        single(
            f"ivf{nlist}_nprobe{nprobe}",
            f"faiss.GpuIndexIVFFlat nlist={nlist}, nprobe={nprobe} (fp32, approximate)",
            ivf,
            note=(
                f"recall@{K} vs exact on 200 queries: {recall:.3f} (random vectors have no clusters, the "
                f"worst case for IVF; real faces cluster); train + add {build_s:.1f} s"
            ),
        )
    del ivf
    gc.collect()


class _GpuBaselines:
    """GPU counterparts: FAISS GpuIndexFlatIP, torch fp16 matmul + topk, device-memory floor (torch)."""

    def __init__(self, faiss: Any, resources: Any, torch: Any | None) -> None:
        self.faiss = faiss
        self.resources = resources
        self.torch = torch

    @classmethod
    def create(cls) -> _GpuBaselines:
        import faiss

        module: Any = None
        try:
            import torch

            module = torch if torch.cuda.is_available() else None
        except ImportError:
            pass
        return cls(faiss, faiss.StandardGpuResources(), module)

    def release(self) -> None:
        """Give cached device memory back between galleries."""
        if self.torch is not None:
            self.torch.cuda.empty_cache()

    def flat(self, *, fp16: bool) -> Any:
        config = self.faiss.GpuIndexFlatConfig()
        config.useFloat16 = fp16
        return self.faiss.GpuIndexFlatIP(self.resources, DIM, config)

    def _torch_missing(self, label: str, unit: str) -> Comparison:
        return Comparison(label, None, unit, missing="torch with CUDA not importable")

    def single_query_comparisons(
        self, gallery: np.ndarray, queries: np.ndarray, k: int, repeat: int
    ) -> list[Comparison]:
        fp16 = self.flat(fp16=True)
        fp16.add(gallery)
        q = _Cycle(queries)
        out = [
            Comparison(
                "stock faiss.GpuIndexFlatIP fp16",
                ms(p50(samples(lambda: fp16.search(q(), k), repeat=repeat))),
                "ms",
            )
        ]
        floor_label = "device-memory floor (fp16 gallery bytes / measured read bandwidth)"
        matmul_label = "torch fp16 matmul + topk (host arrays in and out)"
        if self.torch is None:
            return [*out, self._torch_missing(floor_label, "ms"), self._torch_missing(matmul_label, "ms")]
        torch = self.torch
        device_gallery = torch.from_numpy(gallery).to("cuda", torch.float16)

        def read() -> None:
            device_gallery.sum()
            torch.cuda.synchronize()

        floor_s = min(samples(read, repeat=20, warmup=3))
        bandwidth = device_gallery.numel() * 2 / floor_s / 1e9

        def topk() -> None:
            query = torch.from_numpy(q()).to("cuda", torch.float16)
            torch.topk(query @ device_gallery.T, k).indices.cpu()

        out.append(Comparison(f"{floor_label}: {bandwidth:.0f} GB/s", ms(floor_s), "ms"))
        out.append(Comparison(matmul_label, ms(p50(samples(topk, repeat=repeat, warmup=3))), "ms"))
        return out

    def batch_comparisons(
        self, gallery: np.ndarray, queries: np.ndarray, k: int, repeat: int
    ) -> list[Comparison]:
        fp16 = self.flat(fp16=True)
        fp16.add(gallery)
        out = [
            Comparison(
                "stock faiss.GpuIndexFlatIP fp16",
                BATCH / p50(samples(lambda: fp16.search(queries, k), repeat=repeat)),
                "q/s",
            )
        ]
        label = "torch fp16 matmul + topk (host arrays in and out)"
        if self.torch is None:
            return [*out, self._torch_missing(label, "q/s")]
        torch = self.torch
        device_gallery = torch.from_numpy(gallery).to("cuda", torch.float16)

        def topk() -> None:
            batch = torch.from_numpy(queries).to("cuda", torch.float16)
            torch.topk(batch @ device_gallery.T, k).indices.cpu()

        out.append(Comparison(label, BATCH / p50(samples(topk, repeat=repeat, warmup=1)), "q/s"))
        return out

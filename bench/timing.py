"""Wall-clock timing: repeat a call, keep every sample, read percentiles."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from service.index import VectorIndex


def samples(
    call: Callable[[], object], *, repeat: int, warmup: int = 1, budget_s: float | None = None
) -> list[float]:
    """Seconds per call for `repeat` calls after `warmup` untimed ones; stops early past `budget_s`."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if budget_s is not None and time.perf_counter() - started > budget_s and len(times) >= 3:
            break
    return times


T = TypeVar("T")


def timed(call: Callable[..., T], *args: object) -> tuple[float, T]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - start, result


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def p50(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float) -> float:
    return seconds * 1000.0


# Gallery vectors added per call when building an index, as a rebuild from SQL adds them.
BUILD_CHUNK = 262_144


def rss_bytes() -> int:
    """Resident memory of this process and its children (milvus-lite's engine runs in a child)."""
    me = os.getpid()
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if int(entry.name) == me or parent == me:
                total += int((entry / "statm").read_text().split()[1]) * 4096
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total


def timed_build(index: VectorIndex, vectors: np.ndarray) -> tuple[float, int]:
    """(seconds, RSS growth in bytes) to add `vectors` under keys 0..n-1 in chunks of `BUILD_CHUNK`.

    The vectors exist beforehand, so the growth is the index's own memory.
    """
    import gc

    gc.collect()
    before, took = rss_bytes(), 0.0
    for start in range(0, len(vectors), BUILD_CHUNK):
        block = vectors[start : start + BUILD_CHUNK]
        t = time.perf_counter()
        index.add(np.arange(start, start + len(block), dtype=np.int64), block)
        took += time.perf_counter() - t
    return took, rss_bytes() - before

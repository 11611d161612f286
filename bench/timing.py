"""Wall-clock timing: repeat a call, keep every sample, read percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np


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

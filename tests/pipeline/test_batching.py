"""MicroBatcher's gathering logic, with a tiny batch function (the logic is under test, not a model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from service.pipeline import StageTimes
from service.pipeline.batching import BatcherClosed, BatchFailed, ItemFailed, MicroBatcher
from tests._threads import start, watch_waits

# Long enough never to expire in a test that relies on a full batch starting at once.
FOREVER_S = 60.0


class Doubler:
    """Doubles each item; records every batch it saw; `gate` (when given) holds each batch until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.running = threading.Event()

    def __call__(self, items: list[int], times: StageTimes) -> Sequence[int | Exception]:
        self.batches.append(list(items))
        self.running.set()
        with times.stage("work"):
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
        return [2 * item for item in items]


def _submit_all(batcher: MicroBatcher[int, int], items: Sequence[int]) -> list[Future[int]]:
    pool = ThreadPoolExecutor(max_workers=len(items))
    futures = [pool.submit(batcher.submit, item) for item in items]
    pool.shutdown(wait=False)
    return futures


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_concurrent_submits_run_as_one_batch_once_max_size_items_are_queued() -> None:
    run = Doubler()
    batcher = MicroBatcher(run, max_size=5, max_wait_s=FOREVER_S)
    futures = _submit_all(batcher, [1, 2, 3, 4, 5])
    assert [f.result(timeout=10) for f in futures] == [2, 4, 6, 8, 10]
    assert len(run.batches) == 1 and sorted(run.batches[0]) == [1, 2, 3, 4, 5]
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.largest, dict(stats.sizes)) == (1, 5, 5, {5: 1})


def test_a_lone_item_runs_after_the_wait_window_and_reports_its_queue_time() -> None:
    batcher = MicroBatcher(Doubler(), max_size=8, max_wait_s=0.05)
    times = StageTimes()
    start = time.perf_counter()
    assert batcher.submit(21, times) == 42
    assert 0.045 <= time.perf_counter() - start < 5.0
    assert times.seconds["queue"] >= 0.045
    assert "work" in times.seconds, "the batch's own stages reach every caller"


def test_batches_never_exceed_max_size_and_every_item_gets_its_own_answer() -> None:
    run = Doubler()
    batcher = MicroBatcher(run, max_size=3, max_wait_s=0.02)
    items = list(range(10))
    futures = _submit_all(batcher, items)
    assert [f.result(timeout=10) for f in futures] == [2 * i for i in items]
    assert all(len(batch) <= 3 for batch in run.batches)
    assert sorted(i for batch in run.batches for i in batch) == items


def test_items_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    gate = threading.Event()
    run = Doubler(gate)
    batcher = MicroBatcher(run, max_size=8, max_wait_s=0.0)
    (first,) = _submit_all(batcher, [100])
    assert run.running.wait(10)
    later = _submit_all(batcher, [1, 2, 3, 4])
    _wait_until(lambda: batcher.queued() == 4)
    gate.set()
    assert first.result(timeout=10) == 200
    assert [f.result(timeout=10) for f in later] == [2, 4, 6, 8]
    assert [sorted(batch) for batch in run.batches] == [[100], [1, 2, 3, 4]]


def test_an_error_returned_for_one_item_fails_only_that_caller() -> None:
    def odd_refused(items: list[int], times: StageTimes) -> list[int | Exception]:
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    batcher = MicroBatcher(odd_refused, max_size=4, max_wait_s=FOREVER_S)
    futures = _submit_all(batcher, [1, 2, 3, 4])
    assert futures[1].result(timeout=10) == 2 and futures[3].result(timeout=10) == 4
    for refused, item in ((futures[0], 1), (futures[2], 3)):
        with pytest.raises(ValueError, match=f"odd {item}"):
            refused.result(timeout=10)
    assert batcher.stats().failed_batches == 0


class CrashesOnZero:
    """10 // item for each item; a zero anywhere in a batch crashes the whole call. Records every call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int], times: StageTimes) -> list[int | Exception]:
        self.calls.append(list(items))
        with times.stage("work"):
            if 0 in items:
                raise ZeroDivisionError("boom")
            return [10 // i for i in items]


def test_a_crash_is_retried_one_item_at_a_time_so_only_its_culprit_fails() -> None:
    run = CrashesOnZero()
    batcher = MicroBatcher(run, max_size=3, max_wait_s=FOREVER_S)
    times = [StageTimes() for _ in range(3)]
    pool = ThreadPoolExecutor(max_workers=3)
    futures = [pool.submit(batcher.submit, item, t) for item, t in zip([0, 1, 2], times, strict=True)]
    pool.shutdown(wait=False)
    with pytest.raises(ItemFailed) as failure:
        futures[0].result(timeout=10)
    assert isinstance(failure.value, BatchFailed)  # callers that catch BatchFailed still catch it
    assert isinstance(failure.value.__cause__, ZeroDivisionError)
    assert [futures[1].result(timeout=10), futures[2].result(timeout=10)] == [10, 5]
    # One whole-batch call, then each item alone, once.
    assert sorted(map(sorted, run.calls)) == [[0], [0, 1, 2], [1], [2]]
    assert all(t.seconds["work"] > 0 and "queue" in t.seconds for t in times)
    assert [f.result(timeout=10) for f in _submit_all(batcher, [1, 2, 5])] == [10, 5, 2]
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.failed_batches, stats.failed_alone) == (2, 6, 1, 1)


def test_a_batch_of_one_that_crashes_fails_without_a_retry() -> None:
    run = CrashesOnZero()
    batcher = MicroBatcher(run, max_size=3, max_wait_s=0.0)
    with pytest.raises(ItemFailed, match="boom"):
        batcher.submit(0)
    assert run.calls == [[0]]
    assert (batcher.stats().failed_batches, batcher.stats().failed_alone) == (1, 1)


def test_an_error_returned_for_an_item_retried_alone_fails_only_that_caller() -> None:
    def crashes_on_zero_refuses_odd(items: list[int], times: StageTimes) -> list[int | Exception]:
        if 0 in items:
            raise ZeroDivisionError("boom")
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    batcher = MicroBatcher(crashes_on_zero_refuses_odd, max_size=3, max_wait_s=FOREVER_S)
    futures = _submit_all(batcher, [0, 1, 2])
    with pytest.raises(ItemFailed):
        futures[0].result(timeout=10)
    with pytest.raises(ValueError, match="odd 1"):
        futures[1].result(timeout=10)
    assert futures[2].result(timeout=10) == 2
    assert batcher.stats().failed_alone == 1  # a returned error is the item's answer, not a failure


def test_every_item_crashing_alone_fails_every_caller_cleanly() -> None:
    def always_crashes(items: list[int], times: StageTimes) -> list[int | Exception]:
        raise RuntimeError("model lost")

    batcher = MicroBatcher(always_crashes, max_size=3, max_wait_s=FOREVER_S)
    for future in _submit_all(batcher, [1, 2, 3]):
        with pytest.raises(ItemFailed, match="model lost"):
            future.result(timeout=10)
    assert (batcher.stats().failed_batches, batcher.stats().failed_alone) == (1, 3)


def test_a_batch_function_returning_the_wrong_number_of_results_fails_the_batch_cleanly() -> None:
    def drops_the_last(items: list[int], times: StageTimes) -> list[int | Exception]:
        return list(items[:-1])

    batcher = MicroBatcher(drops_the_last, max_size=2, max_wait_s=FOREVER_S)
    for future in _submit_all(batcher, [1, 2]):
        with pytest.raises(BatchFailed, match="0 results for 1 items"):  # as each did when retried alone
            future.result(timeout=10)


def test_close_runs_what_is_queued_refuses_new_items_and_leaves_no_thread() -> None:
    threads_before = set(threading.enumerate())
    gate = threading.Event()
    run = Doubler(gate)
    batcher = MicroBatcher(run, max_size=2, max_wait_s=FOREVER_S)
    waits = watch_waits(batcher, "_cond")
    queued = _submit_all(batcher, [1, 2, 3, 4, 5])
    assert run.running.wait(10)
    _wait_until(lambda: batcher.queued() == 3)
    closed: list[bool] = []
    closing = start(lambda: closed.append(batcher.close(10.0)))
    # Seen waiting on the batcher, not merely not finished yet after a fixed sleep.
    assert waits.holds_back(closing, got_through=lambda: bool(closed)), "close waits for the queued items"
    gate.set()
    closing.join(10)
    assert closed == [True]
    # The last item had no company and would have waited FOREVER_S; closing ran it at once.
    assert sorted(f.result(timeout=1) for f in queued) == [2, 4, 6, 8, 10]
    with pytest.raises(BatcherClosed):
        batcher.submit(6)
    _wait_until(lambda: set(threading.enumerate()) <= threads_before)


def test_close_gives_up_after_its_timeout_when_a_batch_hangs() -> None:
    gate = threading.Event()
    run = Doubler(gate)
    batcher = MicroBatcher(run, max_size=1, max_wait_s=0.0)
    (stuck,) = _submit_all(batcher, [1])
    assert run.running.wait(10)
    assert batcher.close(0.05) is False
    gate.set()
    assert stuck.result(timeout=10) == 2
    assert batcher.close(1.0) is True


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Doubler(), max_size=0, max_wait_s=0.0)
    with pytest.raises(ValueError):
        MicroBatcher(Doubler(), max_size=1, max_wait_s=-1.0)

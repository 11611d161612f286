"""Dynamic micro-batching: items from concurrent callers gathered into one call of a batch function.

There is no worker thread to start or stop. The first caller to find the batcher idle leads: it waits up to
`max_wait_s` after the oldest queued item for company (or until `max_size` items are queued), runs the batch
in its own thread, then hands the lead to the oldest item still queued and goes back to its own caller. Items
that arrive while a batch runs are queued and form the next batch, so batches grow with the load.

A batch whose call raises is run again one item at a time, so one bad item fails only its own caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.pipeline import StageTimes

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# Takes the batch's items and a StageTimes for the batch; returns one result per item, in order. An
# exception instance in a slot fails only that item's caller. When it raises, each item is run again alone
# (so it must be safe to repeat), and only the items that raise alone fail, with ItemFailed.
BatchFunction = Callable[[list[In], StageTimes], Sequence[Out | Exception]]


class BatcherClosed(RuntimeError):
    """The batcher no longer takes items (the service is shutting down)."""


class BatchFailed(RuntimeError):
    """The batch function raised; every item of that batch gets this error, with the cause chained."""


class ItemFailed(BatchFailed):
    """The batch function raised for this item run alone: its own failure, not its batch's."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    failed_batches: int = 0  # whole-batch calls that raised (their items were then retried one at a time)
    failed_alone: int = 0  # items that raised when run alone: each one's caller got ItemFailed
    sizes: Counter[int] = field(default_factory=Counter)  # batch size → how many batches had it

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)


class _Waiting(Generic[In, Out]):
    """One caller's item, its result once known, and the event its caller sleeps on."""

    __slots__ = ("done", "error", "item", "queued_at", "result", "times", "wake")

    def __init__(self, item: In, times: StageTimes | None) -> None:
        self.item = item
        self.times = times
        self.queued_at = time.perf_counter()
        # Set when the result is in, or when this caller is handed the lead.
        self.wake = threading.Event()
        self.done = False
        self.result: Out | None = None
        self.error: BaseException | None = None

    def finish(self, result: Out | None, error: BaseException | None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wake.set()


class MicroBatcher(Generic[In, Out]):
    """Gather concurrent `submit` calls into batches of at most `max_size` for `run_batch`."""

    def __init__(self, run_batch: BatchFunction[In, Out], *, max_size: int, max_wait_s: float) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be at least 1 and max_wait_s not negative")
        self._run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._queue: deque[_Waiting[In, Out]] = deque()
        self._leading = False  # a caller is gathering or running a batch
        self._closed = False
        self._stats = BatchStats()

    def submit(self, item: In, times: StageTimes | None = None) -> Out:
        """Run `item` in the next batch and return its result; `times` gets a `queue` stage (the wait
        before the batch started) and the batch's own stages."""
        waiting: _Waiting[In, Out] = _Waiting(item, times)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            self._queue.append(waiting)
            leads = not self._leading
            if leads:
                self._leading = True
            elif len(self._queue) >= self.max_size:
                self._cond.notify_all()  # a full batch need not wait out the window
        if leads:
            self._lead()
        while True:
            waiting.wake.wait()
            if waiting.done:
                break
            # Handed the lead while still queued: this item heads the next batch.
            waiting.wake.clear()
            self._lead()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result  # type: ignore[return-value]

    def close(self, timeout: float | None = None) -> bool:
        """Take no more items; queued ones still run. True once idle, False if `timeout` passed first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # a gathering leader runs what it has now
            return self._cond.wait_for(lambda: not self._leading, timeout)

    def queued(self) -> int:
        """Items waiting for a batch (not counting a batch being run)."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> BatchStats:
        with self._cond:
            stats = self._stats
            return BatchStats(
                stats.batches, stats.items, stats.failed_batches, stats.failed_alone, Counter(stats.sizes)
            )

    def _lead(self) -> None:
        with self._cond:
            deadline = self._queue[0].queued_at + self.max_wait_s
            while len(self._queue) < self.max_size and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_size, len(self._queue)))]
        try:
            self._run(batch)
        finally:
            with self._cond:
                if self._queue:
                    self._queue[0].wake.set()
                else:
                    self._leading = False
                    self._cond.notify_all()  # close() waits for this

    def _run(self, batch: list[_Waiting[In, Out]]) -> None:
        started = time.perf_counter()
        for waiting in batch:
            if waiting.times is not None:
                waiting.times.seconds["queue"] = started - waiting.queued_at
        times = StageTimes()
        # Until every outcome is known, every caller's outcome is a failure, so that no error, of whatever
        # kind, leaves a caller asleep.
        cause: BaseException | None = None
        outcomes: list[tuple[Out | None, BaseException | None]] = []
        alone_times = [StageTimes() for _ in batch]  # stays empty unless the items are run one by one
        try:
            try:
                outcomes = self._call([w.item for w in batch], times)
            except Exception as exc:
                log.exception("a batch of %d failed", len(batch))
                cause = exc
                if len(batch) == 1:
                    outcomes = [(None, _item_failed(exc))]
                else:
                    # One bad item (a photo the aligner or the detector chokes on) must not fail the others:
                    # run each alone, once, so that only its culprit gets an error.
                    outcomes = [self._run_alone(w.item, t) for w, t in zip(batch, alone_times, strict=True)]
        finally:
            if len(outcomes) != len(batch):  # one error object per caller: each raises it in its own thread
                outcomes = [(None, _batch_failed(len(batch), cause)) for _ in batch]
            with self._cond:
                self._stats.batches += 1
                self._stats.items += len(batch)
                self._stats.sizes[len(batch)] += 1
                self._stats.failed_batches += cause is not None
                self._stats.failed_alone += sum(isinstance(error, ItemFailed) for _, error in outcomes)
            for waiting, (result, error), own in zip(batch, outcomes, alone_times, strict=True):
                if waiting.times is not None:
                    for spent in (times, own):
                        for stage, seconds in spent.seconds.items():
                            waiting.times.seconds[stage] = waiting.times.seconds.get(stage, 0.0) + seconds
                waiting.finish(result, error)

    def _call(self, items: list[In], times: StageTimes) -> list[tuple[Out | None, BaseException | None]]:
        """(result, None) or (None, its returned error) per item; raises what the batch function raises."""
        results = self._run_batch(items, times)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return [(None, r) if isinstance(r, Exception) else (r, None) for r in results]

    def _run_alone(self, item: In, times: StageTimes) -> tuple[Out | None, BaseException | None]:
        try:
            return self._call([item], times)[0]
        except Exception as exc:
            log.exception("an item failed alone after its batch failed")
            return None, _item_failed(exc)


def _batch_failed(size: int, cause: BaseException | None) -> BatchFailed:
    error = BatchFailed(f"the batch of {size} requests this one was in failed: {cause!r}")
    error.__cause__ = cause
    return error


def _item_failed(cause: Exception) -> ItemFailed:
    error = ItemFailed(f"processing this request failed: {cause!r}")
    error.__cause__ = cause
    return error

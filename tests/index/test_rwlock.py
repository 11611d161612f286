"""ReadWriteLock: shared reads, exclusive writes, writers first, no deadlock, released on errors."""

from __future__ import annotations

import random
import threading
import time

import pytest

from service.index.rwlock import ReadWriteLock
from tests._threads import WAIT_S, start, then, watch_waits


def test_two_readers_hold_the_lock_at_the_same_time() -> None:
    lock = ReadWriteLock()
    both_inside = threading.Barrier(2, timeout=WAIT_S)  # broken if the second reader cannot enter

    def read() -> None:
        with lock.reading():
            both_inside.wait()

    threads = [start(read) for _ in range(2)]
    for thread in threads:
        thread.join(WAIT_S)
    assert not both_inside.broken
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("second", ["reading", "writing"])
def test_a_writer_keeps_readers_and_writers_out_until_it_leaves(second: str) -> None:
    lock = ReadWriteLock()
    waits = watch_waits(lock)
    entered = threading.Event()
    with lock.writing():
        thread = start(lambda: then(getattr(lock, second)().__enter__, entered))
        # Not "has it entered after 0.2 s?" (an unscheduled thread has not either), but which comes first.
        assert waits.holds_back(thread, got_through=entered.is_set)
    assert entered.wait(WAIT_S)
    thread.join(WAIT_S)


def test_a_writer_waits_for_the_readers_inside() -> None:
    lock = ReadWriteLock()
    waits = watch_waits(lock)
    wrote = threading.Event()

    def write() -> None:
        with lock.writing():
            wrote.set()

    with lock.reading():
        thread = start(write)
        assert waits.holds_back(thread, got_through=wrote.is_set)
    assert wrote.wait(WAIT_S)
    thread.join(WAIT_S)


def test_a_waiting_writer_goes_before_readers_that_come_after_it() -> None:
    lock = ReadWriteLock()
    order: list[str] = []

    def write() -> None:
        with lock.writing():
            order.append("writer")

    def read() -> None:
        with lock.reading():
            order.append("late reader")

    waits = watch_waits(lock)
    with lock.reading():
        writer = start(write)
        assert waits.holds_back(writer, got_through=lambda: bool(order))
        late_reader = start(read)
        # The late reader waits although only a reader holds the lock.
        assert waits.holds_back(late_reader, got_through=lambda: bool(order))
    writer.join(WAIT_S)
    late_reader.join(WAIT_S)
    assert order == ["writer", "late reader"]


@pytest.mark.parametrize("side", ["reading", "writing"])
def test_an_exception_inside_releases_the_lock(side: str) -> None:
    lock = ReadWriteLock()
    with pytest.raises(KeyError), getattr(lock, side)():
        raise KeyError("boom")
    wrote = threading.Event()
    thread = start(lambda: then(lock.writing().__enter__, wrote))
    assert wrote.wait(WAIT_S)
    thread.join(WAIT_S)


@pytest.mark.parametrize("first", ["reading", "writing"])
@pytest.mark.parametrize("second", ["reading", "writing"])
def test_taking_it_twice_in_one_thread_raises_instead_of_deadlocking(first: str, second: str) -> None:
    lock = ReadWriteLock()
    with getattr(lock, first)(), pytest.raises(RuntimeError, match="not re-entrant"):
        getattr(lock, second)().__enter__()
    with lock.writing():  # and the refused attempt left nothing behind
        pass


def test_random_readers_and_writers_never_overlap_wrongly_and_all_finish() -> None:
    lock = ReadWriteLock()
    guard = threading.Lock()
    inside = {"readers": 0, "writers": 0}
    violations: list[str] = []
    done = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            writing = rng.random() < 0.2
            with lock.writing() if writing else lock.reading():
                with guard:
                    inside["writers" if writing else "readers"] += 1
                    if inside["writers"] > 1 or (inside["writers"] and inside["readers"]):
                        violations.append(str(inside))
                if rng.random() < 0.1:
                    time.sleep(0.0005)
                with guard:
                    inside["writers" if writing else "readers"] -= 1
        with guard:
            done[0] += 1

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert done[0] == 8, "a thread is stuck: deadlock"
    assert violations == []

"""Telling "this thread is blocked by the lock" from "it has not run yet", without fixed sleeps.

A test that holds a lock, starts a thread and then checks after `sleep(0.2)` that the thread has not got
through proves nothing on a loaded machine: the thread may simply not have been scheduled yet, so the test
passes with the lock removed. Instead, watch the lock's condition variable and wait for one of two positive
signals: the thread is parked in the condition's `wait()` (the lock held it back), or it got through (the
lock is broken). Which one came first decides, however slow the machine.

    lock = ReadWriteLock()
    waits = watch_waits(lock)                   # before any thread uses the lock
    with lock.writing():
        thread = start(lambda: then(lock.reading().__enter__, entered))
        assert waits.holds_back(thread, got_through=entered.is_set)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

WAIT_S = 30.0  # a bound for a signal that a correct lock always gives; never part of the verdict


class _Parking:
    """Which threads are parked (blocked by the lock) right now, and a verdict from it."""

    def __init__(self) -> None:
        self._parked: set[int] = set()
        self._parked_guard = threading.Lock()

    @contextmanager
    def _parking(self) -> Iterator[None]:
        ident = threading.get_ident()
        with self._parked_guard:
            self._parked.add(ident)
        try:
            yield
        finally:
            with self._parked_guard:
                self._parked.discard(ident)

    def is_parked(self, thread: threading.Thread) -> bool:
        with self._parked_guard:
            return thread.ident in self._parked

    def holds_back(self, thread: threading.Thread, *, got_through: Callable[[], bool]) -> bool:
        """Wait until `thread` is parked here (True), or `got_through()` says it passed the lock, or it ended
        without ever waiting (False)."""
        passed = first_of(
            got_through=lambda: got_through() or not thread.is_alive(),
            held_back=lambda: self.is_parked(thread),
        )
        return passed == "held_back"


class WatchedCondition(threading.Condition, _Parking):
    """A `threading.Condition` that knows which threads are parked in its `wait()` right now (a lock built
    on it calls `wait()` only when it decided the thread must wait)."""

    def __init__(self, lock: Any = None) -> None:
        threading.Condition.__init__(self, lock)
        _Parking.__init__(self)

    def wait(self, timeout: float | None = None) -> bool:
        with self._parking():
            return super().wait(timeout)


class WatchedLock(_Parking):
    """A stand-in for a `threading.Lock` that knows which threads are blocked acquiring it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True  # free: the thread was not held back, so it is never seen as parked
        if not blocking:
            return False
        with self._parking():
            return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def watch_waits(owner: object, attribute: str = "_state") -> WatchedCondition:
    """Swap `owner`'s condition variable (service/index's locks keep theirs in `_state`) for a watched one.
    Call it before any thread uses `owner`."""
    current = getattr(owner, attribute)
    assert isinstance(current, threading.Condition), f"{type(owner).__name__}.{attribute} is not a Condition"
    watched = WatchedCondition(current._lock)  # type: ignore[attr-defined]  # same kind of lock (Lock/RLock)
    setattr(owner, attribute, watched)
    return watched


def first_of(timeout: float = WAIT_S, **signals: Callable[[], bool]) -> str:
    """Wait until one of the `signals` is true and return its name (the first listed, if several are)."""
    deadline = time.monotonic() + timeout
    while True:
        for name, signal in signals.items():
            if signal():
                return name
        assert time.monotonic() < deadline, f"none of {sorted(signals)} within {timeout} s"
        time.sleep(0.001)  # polling only sets how soon we notice, not what we conclude


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def then(action: Callable[[], object], done: threading.Event) -> None:
    action()
    done.set()

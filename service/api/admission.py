"""How many requests may hold an image (decoding it, running the networks) and how many may wait for one.

Beyond the waiting places a request is refused at once (503 `busy`, `Retry-After`): a waiting request holds a
worker thread, and a queue without a bound lets one client tie up every thread the API has.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.api.errors import APIError

# How long a queued request waits for its turn before it is told to come back later (503).
QUEUE_WAIT_S = 30.0
# What a refused client is told to wait, in seconds: about one image's work on a CPU.
BUSY_RETRY_AFTER_S = 2


def busy(why: str = "too many images are being processed") -> APIError:
    return APIError(
        503, "busy", f"{why}; try again shortly", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}
    )


class Admission:
    """`capacity` holders at once, up to `queue` more waiting at most `wait_s` each; the rest refused."""

    def __init__(self, capacity: int, *, queue: int, wait_s: float = QUEUE_WAIT_S) -> None:
        self.capacity = capacity
        self.queue = queue
        self.wait_s = wait_s
        self._active = 0
        self._waiting = 0
        self._changed = threading.Condition()

    @contextmanager
    def held(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify()

    def _enter(self) -> None:
        with self._changed:
            if self._active < self.capacity and self._waiting == 0:
                self._active += 1
                return
            if self._waiting >= self.queue:
                raise busy()
            self._waiting += 1
            try:
                free = self._changed.wait_for(lambda: self._active < self.capacity, timeout=self.wait_s)
            finally:
                self._waiting -= 1
            if not free:
                raise busy()
            self._active += 1

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

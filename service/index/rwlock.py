"""A readers–writer lock: many searches at once, adds and removals alone.

Writer-preferring: once a writer waits, new readers wait behind it, so a steady stream of searches cannot
starve an enrollment (writes are rare and short; searches are the traffic). Not re-entrant: the indexes never
take it twice in one thread, and a thread that tries gets a RuntimeError instead of a silent deadlock (with a
waiting writer, a reader asking again would wait for the writer, which waits for that reader).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # the writing thread's ident
        self._writers_waiting = 0
        self._held_here = threading.local()  # this thread's reads, to refuse re-entry

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Shared: other readers may hold it at the same time, writers may not."""
        self._refuse_reentry()
        with self._state:
            while self._writer is not None or self._writers_waiting:
                self._state.wait()
            self._readers += 1
        self._held_here.reads = 1
        try:
            yield
        finally:
            self._held_here.reads = 0
            with self._state:
                self._readers -= 1
                if self._readers == 0:
                    self._state.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive: waits for the readers inside to leave; new readers wait from the moment it asks."""
        self._refuse_reentry()
        with self._state:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._state.wait()
            except BaseException:  # interrupted while waiting: readers held back by it may go on
                self._writers_waiting -= 1
                self._state.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = threading.get_ident()
        try:
            yield
        finally:
            with self._state:
                self._writer = None
                self._state.notify_all()

    def _refuse_reentry(self) -> None:
        if getattr(self._held_here, "reads", 0) or self._writer == threading.get_ident():
            raise RuntimeError("ReadWriteLock is not re-entrant: this thread already holds it")

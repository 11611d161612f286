"""A progress bar with rate and ETA, and a stop flag raised by Ctrl-C (or SIGTERM) instead of a traceback."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from service.ingest.report import Outcome, Status, Tally


class StopFlag:
    """Set by the first SIGINT/SIGTERM: the run stops taking new photos and finishes what is in flight.

    A second signal raises KeyboardInterrupt. Committed photos stay committed either way, and each photo's
    face commits atomically, so even a hard stop leaves nothing half-written.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    @contextmanager
    def installed(self, console: Console) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            # Why: signal handlers can only be installed from the main thread (tests may run us elsewhere).
            yield self
            return

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._event.is_set():
                raise KeyboardInterrupt
            self._event.set()
            console.print(
                f"[yellow]{signal.Signals(signum).name}: stopping after the photos in flight "
                "(again to abort now)[/yellow]"
            )

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


class _CountsColumn(ProgressColumn):
    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self._tally = tally

    def render(self, task: Task) -> Text:
        t = self._tally.by_status
        return Text(
            f"ok {t[Status.INGESTED]} skip {t[Status.SKIPPED]} reject {t[Status.REJECTED]} "
            f"err {t[Status.ERROR]}"
        )


def make_console() -> Console:
    # Why soft_wrap: off a terminal rich wraps at 80 columns, which splits paths in logs.
    return Console(stderr=True, soft_wrap=True)


@contextmanager
def progress_bar(console: Console, tally: Tally, total: int) -> Iterator[Any]:
    """Advances on every outcome the tally counts; draws only on a terminal (logs get the summary line)."""
    progress = Progress(
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        _CountsColumn(tally),
        console=console,
        disable=not console.is_terminal,
        # Why: the default samples 30 s; a shorter window reacts to a resumed run's skips giving way.
        speed_estimate_period=15.0,
    )
    task = progress.add_task("ingest", total=total)

    def advance(_outcome: Outcome) -> None:
        progress.advance(task)

    tally.on_add = advance
    try:
        with progress:
            yield progress
    finally:
        tally.on_add = None
        sys.stderr.flush()

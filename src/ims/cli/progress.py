"""Transfer progress on the terminal: one rich bar per file (bytes, rate, ETA); nothing when stderr is piped."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

from ims.client.transfer import Advance, NoProgress, Progress


class BarProgress:
    def __init__(self, console: Console) -> None:
        self._bars = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def start(self, label: str, total: int | None) -> Advance:
        with self._lock:
            task = self._bars.add_task(label, total=total)
            self._tasks[label] = task

        def advance(size: int) -> None:
            self._bars.advance(task, size)

        return advance

    def finish(self, label: str) -> None:
        with self._lock:
            found = self._tasks.pop(label, None)
        if found is not None:
            self._bars.stop_task(found)

    def note(self, message: str) -> None:
        self._bars.console.print(message, markup=False, highlight=False)

    def __enter__(self) -> BarProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()


@contextmanager
def transfer_progress(enabled: bool | None = None) -> Iterator[Progress]:
    """Bars on stderr when it is a terminal (or `enabled` says so); otherwise silent."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield NoProgress()
        return
    with BarProgress(Console(stderr=True)) as bars:
        yield bars

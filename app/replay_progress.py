"""Progress of a replay: records of the target processed, with rate and ETA.

On a terminal a rich progress bar; otherwise (CI, a log file) a plain line every
:data:`PLAIN_EVERY_S` seconds and one at the end. Both estimate the rate (and so the ETA)
over the last :data:`RATE_WINDOW_S` seconds, like rich does.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from datetime import timedelta
from typing import Any, TextIO

PLAIN_EVERY_S = 5.0
RATE_WINDOW_S = 30.0


def _eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


class ReplayProgress:
    """``with ReplayProgress(total) as progress: progress.update(done)``."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.out = out or sys.stdout
        self.done = 0
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque([(self._started, 0)])
        self._next_line = self._started + PLAIN_EVERY_S
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ReplayProgress:
        if self.out.isatty():
            self._bar = _rich_bar(self.out)
            self._bar.start()
            self._task = self._bar.add_task("replay", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line()

    @property
    def rate(self) -> float:
        """Records per second since the start."""
        return self.done / max(time.monotonic() - self._started, 1e-6)

    @property
    def recent_rate(self) -> float:
        """Records per second over the last :data:`RATE_WINDOW_S` seconds."""
        since, done = self._samples[0]
        return (self.done - done) / max(time.monotonic() - since, 1e-6)

    def update(self, done: int) -> None:
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + PLAIN_EVERY_S
            self._line()

    def _line(self) -> None:
        rate = self.recent_rate
        left = self.total - self.done
        eta = left / rate if rate > 0 else None if left else 0.0
        share = 100 * self.done / self.total if self.total else 100.0
        print(f"replay: {self.done:,}/{self.total:,} records ({share:.1f} %), "
              f"{rate:,.0f} records/s, ETA {_eta(eta)}", file=self.out, flush=True)


def _rich_bar(out: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:,.0f} records/s")

    return Progress(
        TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        RateColumn(), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
        console=Console(file=out),
    )

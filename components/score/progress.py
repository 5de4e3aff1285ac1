"""Progress of a scoring run on stderr: a rich bar with rows/s and ETA on a terminal, a line every
``interval_s`` elsewhere (a log file, a KFP pod)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


def _eta(rows_left: float, rate: float) -> str:
    if rate <= 0:
        return "?"
    seconds = int(rows_left / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ScoreProgress:
    """``with ScoreProgress(total) as p: p.advance(rows)``; ``enabled=False`` shows nothing."""

    def __init__(self, total: int | None, enabled: bool = True, interval_s: float = 10.0, stream: Any = None) -> None:
        self.total = total
        self.done = 0  # rows scored now or found done (resumed)
        self.scored = 0  # rows scored in this run (the rate)
        self._enabled = enabled
        self._interval_s = interval_s
        self._stream = stream or sys.stderr
        self._bar: Any = None
        self._task: Any = None
        self._started = time.monotonic()
        self._last_line = self._started

    def __enter__(self) -> ScoreProgress:
        if not self._enabled:
            return self
        from rich.console import Console

        console = Console(file=self._stream)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                console=console,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("score", total=self.total, rate="")
        return self

    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.scored / elapsed if elapsed > 0 else 0.0

    def advance(self, rows: int, scored: bool = True) -> None:
        self.done += rows
        self.scored += rows if scored else 0
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rate=f"{self.rate():,.0f} rows/s")
        elif self._enabled and time.monotonic() - self._last_line >= self._interval_s:
            self._last_line = time.monotonic()
            print(self.line(), file=self._stream, flush=True)

    def line(self) -> str:
        rate = self.rate()
        if self.total:
            left = max(self.total - self.done, 0)
            return f"scored {self.done:,}/{self.total:,} rows, {rate:,.0f} rows/s, ETA {_eta(left, rate)}"
        return f"scored {self.done:,} rows, {rate:,.0f} rows/s"

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

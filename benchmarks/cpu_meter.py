"""How many of the machine's cores were busy over a stretch of time (``/proc/stat``, every process).

``score_bench`` uses it to bound what a batch job can get next to real-time traffic: the cores the real-time
client and server leave idle, each computing rows at the in-process limit (docs/scoring.md, "Session 16").
Linux only; elsewhere the meter reads nothing and ``cores`` returns None.
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

Reading = tuple[float, int, int]  # (monotonic seconds, busy jiffies, all jiffies) summed over every CPU


def read_stat(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies of the ``cpu`` line: idle and iowait are not busy; guest time is already in user."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(readings: list[Reading], start: float, end: float, cpus: int) -> float | None:
    """Busy cores between the first reading at or after ``start`` and the last at or before ``end``."""
    inside = [r for r in readings if start <= r[0] <= end]
    if len(inside) < 2 or inside[-1][2] <= inside[0][2]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2]) * cpus


class MachineCPU:
    """A context manager that reads ``/proc/stat`` every ``interval`` seconds while it is open."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.readings: list[Reading] = []
        self.cpus = os.cpu_count() or 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def _read(self) -> None:
        stat = read_stat()
        if stat is not None:
            self.readings.append((time.monotonic(), *stat))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self) -> MachineCPU:
        self.started = time.monotonic()
        self._read()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        self.ended = time.monotonic()

    def cores(self, skip_start: float = 0.0, skip_end: float = 0.0) -> float | None:
        """Busy cores from ``skip_start`` s after the meter opened to ``skip_end`` s before it closed."""
        return busy_cores(self.readings, self.started + skip_start, self.ended - skip_end, self.cpus)

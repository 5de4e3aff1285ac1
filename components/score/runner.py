"""Send a data set's parts through a target with bounded in-flight requests; write each part when done.

Public: ``Settings``, ``Stats``, ``async run_parts(dataset, target, store, settings, done, progress) -> Stats``,
``backoff_delays(first_s, cap_s)``.

One producer reads the input part by part (in a worker thread) and cuts each part into requests of
``batch_size`` rows; a semaphore keeps at most ``max_inflight`` requests in flight across parts, so the
server always has the next request while a part is being written. A part is written once all of its
requests answered. ``Retryable`` answers are sent again after an exponential backoff with jitter; a
request that keeps being refused for ``patience_s`` fails the run (parts written so far stay: a rerun
resumes).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.components.score.errors import Retryable, ScoreError
from shipyard.components.score.features import ROW_KEY, keys_of, model_inputs, plan_inputs, predictions_table
from shipyard.components.score.output import OutputStore
from shipyard.components.score.targets import Target


@dataclass(frozen=True)
class Settings:
    batch_size: int
    max_inflight: int
    part_rows: int
    priority: int
    key: str | None = None
    patience_s: float = 300.0
    backoff_first_s: float = 0.02
    backoff_cap_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_inflight", "part_rows"):
            if getattr(self, name) <= 0:
                raise ScoreError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.priority < 0:
            raise ScoreError(f"--priority must be 0 (the model's default) or a level >= 1, got {self.priority}")


@dataclass
class Stats:
    rows_scored: int = 0  # scored and written in this run
    rows_resumed: int = 0  # found done in the output (an earlier run)
    parts_written: int = 0
    requests: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def backoff_delays(first_s: float, cap_s: float) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform in ``[d/2, d]`` with ``d`` doubling up to ``cap_s``."""
    delay = first_s
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, cap_s)


async def _send(target: Target, inputs: dict[str, np.ndarray], settings: Settings, stats: Stats) -> dict[str, Any]:
    """One request, retried while the server says ``Retryable``."""
    delays = backoff_delays(settings.backoff_first_s, settings.backoff_cap_s)
    first_refusal: float | None = None
    while True:
        try:
            result = await target.infer(inputs, settings.priority)
            stats.requests += 1
            return result
        except Retryable as exc:
            now = time.monotonic()
            first_refusal = first_refusal or now
            if now - first_refusal > settings.patience_s:
                raise ScoreError(
                    f"the server kept refusing a batch for {settings.patience_s:g} s (last: {exc}); the parts "
                    "written so far are kept: run the same command again to resume"
                ) from None
            stats.retries += 1
            await asyncio.sleep(next(delays))


async def _score_part(
    index: int, keys: Any, requests: list[asyncio.Future[dict[str, Any]]], key_name: str, target: Target,
    store: OutputStore, stats: Stats,
) -> None:  # fmt: skip
    results = await asyncio.gather(*requests)
    outputs = {t.name: np.concatenate([r[t.name] for r in results]) for t in target.info.outputs}
    table = predictions_table(keys, key_name, outputs, target.info)
    await asyncio.to_thread(store.write_part, index, table)
    stats.rows_scored += len(keys)
    stats.parts_written += 1


async def run_parts(
    dataset: Any, target: Target, store: OutputStore, settings: Settings, done: set[int],
    progress: Callable[[int, bool], None] = lambda rows, scored: None,
) -> Stats:  # fmt: skip
    """Score every part of ``dataset`` not in ``done``; ``progress(rows, scored)`` is called as requests
    answer (``scored`` True) and for parts found done (False).

    Raises: ScoreError (input that does not fit the model, a refused request, an unwritable output).
    """
    stats = Stats()
    slots = asyncio.Semaphore(settings.max_inflight)
    parts: list[asyncio.Task[None]] = []
    failures: list[BaseException] = []
    plan: dict[str, str | None] | None = None
    key_name = settings.key or ROW_KEY

    def release(future: asyncio.Future[Any]) -> None:
        slots.release()
        if not future.cancelled() and future.exception() is None:
            progress(len(next(iter(future.result().values()))) if future.result() else 0, True)

    def record(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    reader = dataset.parts(settings.part_rows)
    try:
        while not failures:
            item = await asyncio.to_thread(next, reader, None)
            if item is None:
                break
            index, table = item
            if index in done:
                stats.rows_resumed += table.num_rows
                progress(table.num_rows, False)
                continue
            if plan is None:
                plan = plan_inputs(target.info, table.column_names, settings.key)
            keys = keys_of(table, settings.key, index * settings.part_rows)
            inputs = model_inputs(table, target.info, plan, settings.key)
            requests: list[asyncio.Future[dict[str, Any]]] = []
            for start in range(0, table.num_rows, settings.batch_size):
                await slots.acquire()
                if failures:
                    slots.release()
                    break
                chunk = {name: array[start : start + settings.batch_size] for name, array in inputs.items()}
                request = asyncio.ensure_future(_send(target, chunk, settings, stats))
                request.add_done_callback(release)
                requests.append(request)
            part = asyncio.create_task(_score_part(index, keys, requests, key_name, target, store, stats))
            part.add_done_callback(record)
            parts.append(part)
        if parts:
            await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)  # a failure stops the rest at once
    finally:
        for part in parts:
            part.cancel()
        await asyncio.gather(*parts, return_exceptions=True)
    if failures:
        raise failures[0]
    return stats

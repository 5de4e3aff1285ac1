"""Latency/throughput over batch sizes and a dynamic-batching recommendation for a latency budget.

The idea of Triton's Model Analyzer, built in: time the model alone at batch 1, 2, 4, ... max, then choose

- ``max_batch_size``: the largest profiled batch whose p95 latency fits the budget;
- ``preferred_batch_size``: the smallest batch within the budget reaching 90% of the best throughput there;
- ``max_queue_delay_microseconds``: twice the p95 time of a preferred batch (requests gather while the
  instance is busy anyway), but never more than half the budget left after executing a ``max_batch_size``
  batch (p95), so queue wait plus execution stays inside the budget; capped at 100 ms;
- ``background_rows`` (batch scoring next to real-time traffic, docs/scoring.md): the largest profiled batch
  whose p50 is within ``BACKGROUND_COST_FACTOR`` (1.25x) of the smallest batch's, at most ``max_batch_size``.
  The publish step sizes the background level's slices and co-batching fill with it, so a real-time batch
  topped up with batch-job rows, or waiting behind one slice of them, costs at most 1.25x its own call. Where
  a call costs about the same for 1 row as for many (a GPU, a weight-bound CPU model) that is many rows;
  where each row adds its own compute (a compute-bound CPU model) it is a few.

Public: ``ProfileRow``, ``BatchingRecommendation``, ``batch_sizes_up_to(max_batch) -> list[int]``,
``profile_runner(runner, sample, *, batch_sizes, warmup=3, min_iterations=5, max_seconds_per_batch=0.5)
-> list[ProfileRow]``, ``recommend_batching(rows, latency_budget_ms) -> BatchingRecommendation``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shipyard.components.errors import ComponentError
from shipyard.components.validate.runners import Runner

PREFERRED_FRACTION = 0.9
MAX_QUEUE_DELAY_US = 100_000
BACKGROUND_COST_FACTOR = 1.25  # a batch topped up with batch-job rows costs at most this much more


@dataclass(frozen=True)
class ProfileRow:
    batch_size: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # inferences (samples) per second at p50

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchingRecommendation:
    max_batch_size: int
    preferred_batch_size: int
    max_queue_delay_microseconds: int
    latency_budget_ms: float
    reason: str
    background_rows: int = 0  # 0: not measured (validation.json files written before it); the publish step's defaults

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_sizes_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch`` (``max_batch`` itself included)."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return sizes


def _tile(array: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // array.shape[0])
    return np.ascontiguousarray(np.concatenate([array] * reps, axis=0)[:batch])


def profile_runner(
    runner: Runner,
    sample: Mapping[str, np.ndarray],
    *,
    batch_sizes: Sequence[int],
    warmup: int = 3,
    min_iterations: int = 5,
    max_seconds_per_batch: float = 0.5,
) -> list[ProfileRow]:
    """Time ``runner`` at each batch size (inputs tiled from ``sample``); bounded by time per batch size.

    Raises: ComponentError for an empty sample or batch size list.
    """
    if not batch_sizes or not sample:
        raise ComponentError("profiling needs at least one batch size and one input sample")
    rows: list[ProfileRow] = []
    for batch in batch_sizes:
        feeds = {name: _tile(value, batch) for name, value in sample.items()}
        for _ in range(warmup):
            runner.run(feeds)
        latencies: list[float] = []
        deadline = time.perf_counter() + max_seconds_per_batch
        while len(latencies) < min_iterations or (time.perf_counter() < deadline and len(latencies) < 1000):
            start = time.perf_counter()
            runner.run(feeds)
            latencies.append((time.perf_counter() - start) * 1000.0)
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        rows.append(ProfileRow(batch, len(latencies), p50, p95, p99, batch / (p50 / 1000.0) if p50 > 0 else 0.0))
    return rows


def recommend_batching(rows: Sequence[ProfileRow], latency_budget_ms: float) -> BatchingRecommendation:
    """Batching settings for ``latency_budget_ms`` from profile ``rows`` (see the module docstring).

    Raises: ComponentError for no rows or a non-positive budget.
    """
    if not rows:
        raise ComponentError("no profile rows to recommend batching from")
    if latency_budget_ms <= 0:
        raise ComponentError(f"latency budget {latency_budget_ms} ms: must be > 0")
    ordered = sorted(rows, key=lambda r: r.batch_size)
    feasible = [r for r in ordered if r.p95_ms <= latency_budget_ms]
    if not feasible:
        first = ordered[0]
        return BatchingRecommendation(
            first.batch_size, first.batch_size, 0, latency_budget_ms,
            f"even batch {first.batch_size} takes {first.p95_ms:.2f} ms (p95) > budget {latency_budget_ms} ms: "
            "no batching; raise the budget or use a faster target",
        )  # fmt: skip
    best = max(r.throughput for r in feasible)
    preferred = next(r for r in feasible if r.throughput >= PREFERRED_FRACTION * best)
    largest = feasible[-1]
    background = background_rows(ordered, largest.batch_size)
    slack_ms = max(0.0, latency_budget_ms - largest.p95_ms)
    delay_us = int(min(slack_ms * 500.0, preferred.p95_ms * 2000.0, MAX_QUEUE_DELAY_US))
    reason = (
        f"batch {largest.batch_size} is the largest within {latency_budget_ms:g} ms (p95 {largest.p95_ms:.2f} ms); "
        f"batch {preferred.batch_size} reaches {preferred.throughput:.0f}/s, >= {PREFERRED_FRACTION:.0%} of the best "
        f"{best:.0f}/s; queue delay = min(2 x p95 of the preferred batch, half the remaining {slack_ms:.2f} ms); "
        f"batch-job rows per real-time batch or slice: {background} (the largest batch within "
        f"{BACKGROUND_COST_FACTOR:g}x of batch {ordered[0].batch_size}'s p50)"
    )
    return BatchingRecommendation(
        largest.batch_size, preferred.batch_size, delay_us, latency_budget_ms, reason, background
    )


def background_rows(rows: Sequence[ProfileRow], max_batch_size: int) -> int:
    """The largest profiled batch, at most ``max_batch_size``, whose p50 is within ``BACKGROUND_COST_FACTOR``
    of the smallest profiled batch's p50 (see the module docstring); at least 1."""
    ordered = sorted(rows, key=lambda r: r.batch_size)
    if not ordered:
        return 1
    bound = BACKGROUND_COST_FACTOR * ordered[0].p50_ms
    within = [r.batch_size for r in ordered if r.p50_ms <= bound and r.batch_size <= max_batch_size]
    return max(within, default=1)

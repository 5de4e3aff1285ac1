"""Per model-version statistics in the shape of Triton's statistics extension.

Counters are updated on the event loop thread only (the scheduler records after awaiting the
worker thread), so plain integers suffice.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

# Request latency buckets (upper bounds, ns): 0.5 ms .. 10 s.
LATENCY_BUCKETS_NS: tuple[int, ...] = tuple(
    int(s * 1e9) for s in (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
)
# Batch size buckets (upper bounds, items).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Cumulative-at-read histogram with fixed upper bounds (``+Inf`` implied)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[int]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[int | None, int]]:
        """(upper bound or None for +Inf, observations <= bound) pairs, Prometheus style."""
        out: list[tuple[int | None, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, None), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """What ``GET /v2/models/{m}/stats`` reports for one version."""

    name: str
    version: int
    inference_count: int = 0  # items (a batch of 8 counts 8)
    execution_count: int = 0  # backend executions (a batch counts 1)
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    # batch size -> (executions, compute ns)
    batch_stats: dict[int, _Duration] = field(default_factory=dict)
    # Requests accepted and not yet answered (queued or executing); the scheduler keeps it.
    pending: int = 0
    # Successful requests' end-to-end time in the server (ns), and executed batch sizes.
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_NS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    # Response cache (cache.py): lookups answered from it, and lookups that missed (+ insert).
    cache_enabled: bool = False
    cache_hit: _Duration = field(default_factory=_Duration)
    cache_miss: _Duration = field(default_factory=_Duration)

    def record_success(self, batch_size: int, total_ns: int, queue_ns: int, compute_ns: int) -> None:
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        self.success.add(total_ns)
        self.latency.observe(total_ns)
        self.queue.add(queue_ns)
        self.compute_infer.add(compute_ns)

    def record_group_success(
        self, items: int, end_ns: int, dispatch_ns: int, compute_ns: int, arrivals_ns: Sequence[int]
    ) -> None:
        """A group of requests that ran as one (the native gRPC fast path): each counts as a
        successful request, timed from its own arrival (monotonic ns)."""
        self.inference_count += items
        self.last_inference_ms = int(time.time() * 1000)
        count = len(arrivals_ns)
        arrived = sum(arrivals_ns)
        self.success.add(count * end_ns - arrived, count)
        self.queue.add(count * dispatch_ns - arrived, count)
        self.compute_infer.add(count * compute_ns, count)
        observe = self.latency.observe
        for arrival in arrivals_ns:
            observe(end_ns - arrival)

    def record_group_failure(self, reason: str, end_ns: int, arrivals_ns: Sequence[int]) -> None:
        """A group of requests (see ``record_group_success``) that failed together."""
        count = len(arrivals_ns)
        self.fail.add(count * end_ns - sum(arrivals_ns), count)
        self.failures_by_reason[reason] += count

    def record_cache_hit(self, total_ns: int) -> None:
        """A request answered from the response cache: a success, but no inference or execution."""
        self.last_inference_ms = int(time.time() * 1000)
        self.success.add(total_ns)
        self.latency.observe(total_ns)
        self.cache_hit.add(total_ns)

    def record_cache_miss(self, cache_ns: int) -> None:
        """A lookup that missed; ``cache_ns`` is the lookup's and the insert's time."""
        self.cache_miss.add(cache_ns)

    def record_failure(self, reason: str, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.failures_by_reason[reason] += 1

    def record_execution(self, batch_size: int, compute_ns: int) -> None:
        self.execution_count += 1
        self.batch_size.observe(batch_size)
        self.batch_stats.setdefault(batch_size, _Duration()).add(compute_ns)

    def as_triton_dict(self) -> dict[str, object]:
        """The ``model_stats`` entry of Triton's statistics response (JSON form)."""
        return {
            "name": self.name,
            "version": str(self.version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": {"count": self.compute_infer.count, "ns": 0},
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": {"count": self.compute_infer.count, "ns": 0},
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "response_stats": {},  # Triton's per-response statistics (decoupled models): none kept
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
        }

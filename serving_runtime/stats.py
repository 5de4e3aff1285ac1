"""Per model-version statistics in the shape of Triton's statistics extension.

Counters are updated on the event loop thread only (the scheduler records after awaiting the
worker thread), so plain integers suffice.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


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

    def record_success(self, batch_size: int, total_ns: int, queue_ns: int, compute_ns: int) -> None:
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_infer.add(compute_ns)

    def record_failure(self, reason: str, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.failures_by_reason[reason] += 1

    def record_execution(self, batch_size: int, compute_ns: int) -> None:
        self.execution_count += 1
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
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batch_stats.items())
            ],
        }

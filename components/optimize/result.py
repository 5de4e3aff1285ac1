"""The result of an optimization step. Public: ``OptimizeResult`` (with ``lineage_tags()``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OptimizeResult:
    """The optimized artifact and how it was made.

    ``path``: ``model.onnx`` (onnxruntime) or ``model.plan`` (tensorrt); ``runtime``: what the artifact is tied
    to (ONNX Runtime version on CPU, or TensorRT version and GPU); ``reason``: why this target was chosen.
    """

    path: Path
    target: str
    precision: str
    sha256: str
    runtime: str
    reason: str
    max_batch_size: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def platform(self) -> str:
        """The Triton platform name for config.pbtxt."""
        return "tensorrt_plan" if self.target == "tensorrt" else "onnxruntime_onnx"

    def lineage_tags(self) -> dict[str, Any]:
        from shipyard.registry import lineage as L

        return {
            L.ENGINE_SHA256: self.sha256,
            L.ENGINE_TARGET: self.target,
            L.ENGINE_PRECISION: self.precision,
            L.ENGINE_RUNTIME: self.runtime,
        }

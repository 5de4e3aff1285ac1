"""Validate an optimized model: accuracy parity gate, latency/throughput profile, batching recommendation.

- ``validate(reference, candidate, inputs, labels=None, *, precision="fp32", tolerances=None, profile=True,
  max_batch_size=64, batch_sizes=None, latency_budget_ms=20.0, max_seconds_per_batch=0.3, report_dir=None,
  raise_on_failure=True, intra_op_threads=1) -> ValidationReport`` (raises ValidationFailed with a readable
  markdown report when the gate fails)
- ``check_parity(...) -> ParityReport``; ``Tolerances``; ``DEFAULT_TOLERANCES``; ``tolerances_for(precision)``
- ``profile_runner(...) -> list[ProfileRow]``; ``recommend_batching(rows, latency_budget_ms)
  -> BatchingRecommendation``; ``batch_sizes_up_to(max_batch)``
- ``load_runner(path) -> Runner`` (.onnx via ONNX Runtime, .plan via TensorRT)
- ``render_markdown(report)``, ``write_report(report, out_dir)``, ``load_recommendation(validation_json)``
"""

from shipyard.components.validate.api import ValidationReport, load_recommendation, validate
from shipyard.components.validate.parity import (
    DEFAULT_TOLERANCES,
    OutputParity,
    ParityReport,
    Tolerances,
    check_parity,
    tolerances_for,
)
from shipyard.components.validate.profile import (
    BatchingRecommendation,
    ProfileRow,
    batch_sizes_up_to,
    profile_runner,
    recommend_batching,
)
from shipyard.components.validate.report import render_markdown, write_report
from shipyard.components.validate.runners import Runner, load_runner

__all__ = [
    "DEFAULT_TOLERANCES",
    "BatchingRecommendation",
    "OutputParity",
    "ParityReport",
    "ProfileRow",
    "Runner",
    "Tolerances",
    "ValidationReport",
    "batch_sizes_up_to",
    "check_parity",
    "load_recommendation",
    "load_runner",
    "profile_runner",
    "recommend_batching",
    "render_markdown",
    "tolerances_for",
    "validate",
    "write_report",
]

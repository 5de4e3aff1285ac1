"""``validate``: the parity gate plus the profile, report and lineage tags (see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.components.errors import ComponentError, ValidationFailed
from shipyard.components.validate.parity import ParityReport, Tolerances, check_parity
from shipyard.components.validate.profile import (
    BatchingRecommendation,
    ProfileRow,
    batch_sizes_up_to,
    profile_runner,
    recommend_batching,
)
from shipyard.components.validate.runners import load_runner
from shipyard.registry.digest import sha256_file


@dataclass
class ValidationReport:
    reference_name: str
    candidate_name: str
    candidate_sha256: str
    parity: ParityReport
    profile: list[ProfileRow] = field(default_factory=list)
    recommendation: BatchingRecommendation | None = None
    load_error: str | None = None
    report_md: Path | None = None
    plot_png: Path | None = None

    @property
    def failures(self) -> list[str]:
        return ([self.load_error] if self.load_error else []) + list(self.parity.failures)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line: verdict, top-1 agreement, accuracy and delta, first failures."""
        p = self.parity
        parts = [("passed" if self.passed else "FAILED") + f" ({p.precision}, {p.samples} samples)"]
        if p.top1_agreement is not None:
            parts.append(f"top-1 agreement {p.top1_agreement:.4f}")
        if p.accuracy_candidate is not None and p.accuracy_delta is not None:
            parts.append(f"accuracy {p.accuracy_candidate:.4f} (delta {p.accuracy_delta:+.4f})")
        if self.failures:
            parts.append("; ".join(self.failures[:3]))
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        p = self.parity
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "reference": self.reference_name,
            "candidate": self.candidate_name,
            "candidate_sha256": self.candidate_sha256,
            "precision": p.precision,
            "samples": p.samples,
            "tolerances": dataclasses.asdict(p.tolerances),
            "outputs": [dataclasses.asdict(o) for o in p.outputs],
            "accuracy_reference": p.accuracy_reference,
            "accuracy_candidate": p.accuracy_candidate,
            "accuracy_delta": p.accuracy_delta,
            "failures": self.failures,
            "profile": [r.as_dict() for r in self.profile],
            "recommendation": None if self.recommendation is None else self.recommendation.as_dict(),
        }

    def lineage_tags(self) -> dict[str, Any]:
        from shipyard.registry import lineage as L

        tags: dict[str, Any] = {
            L.VALIDATION_PASSED: self.passed,
            L.VALIDATION_ENGINE_SHA256: self.candidate_sha256,
            L.VALIDATION_SUMMARY: self.summary(),
        }
        if self.parity.accuracy_candidate is not None:
            tags[L.VALIDATION_ACCURACY] = f"{self.parity.accuracy_candidate:.4f}"
        if self.parity.accuracy_delta is not None:
            tags[L.VALIDATION_ACCURACY_DELTA] = f"{self.parity.accuracy_delta:+.4f}"
        if self.profile:
            tags[L.PROFILE_SUMMARY] = {
                str(r.batch_size): {"p95_ms": round(r.p95_ms, 3), "per_s": round(r.throughput, 1)} for r in self.profile
            }
        if self.recommendation is not None:
            rec = self.recommendation
            tags[L.BATCHING] = {
                "max_batch_size": rec.max_batch_size,
                "preferred_batch_size": rec.preferred_batch_size,
                "max_queue_delay_microseconds": rec.max_queue_delay_microseconds,
                "background_rows": rec.background_rows,
                "latency_budget_ms": rec.latency_budget_ms,
            }
        return tags


def load_recommendation(path: str | Path) -> BatchingRecommendation:
    """The recommendation stored in a ``validation.json`` (for ``shipyard publish --batching-from``).

    Raises: ComponentError when the file has none.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rec = data.get("recommendation")
    if not rec:
        raise ComponentError(f"{path} has no batching recommendation (validate with profiling enabled)")
    return BatchingRecommendation(**rec)


def validate(
    reference: str | Path,
    candidate: str | Path,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    precision: str = "fp32",
    tolerances: Tolerances | None = None,
    profile: bool = True,
    max_batch_size: int = 64,
    batch_sizes: Sequence[int] | None = None,
    latency_budget_ms: float = 20.0,
    max_seconds_per_batch: float = 0.3,
    report_dir: str | Path | None = None,
    raise_on_failure: bool = True,
    intra_op_threads: int = 1,
) -> ValidationReport:
    """Gate ``candidate`` against ``reference`` on held-out ``inputs`` (and ``labels``), profile it, report.

    A candidate that cannot be loaded fails the gate (it is reported, not raised as a crash). Profiling runs
    only when the gate passes. The report (markdown, JSON, PNG) is written to ``report_dir`` when given.
    Raises: ValidationFailed (``raise_on_failure`` and the gate failed; ``.text`` is the markdown report,
    ``.report`` the ValidationReport), ComponentError (missing reference, bad data).
    """
    from shipyard.components.validate.parity import tolerances_for
    from shipyard.components.validate.report import render_markdown, write_report

    tol = tolerances or tolerances_for(precision)
    reference_runner = load_runner(reference, intra_op_threads=intra_op_threads)
    candidate_path = Path(candidate)
    digest = sha256_file(candidate_path) if candidate_path.is_file() else ""
    report: ValidationReport
    try:
        candidate_runner = load_runner(candidate_path, intra_op_threads=intra_op_threads)
    except ComponentError as exc:
        parity = ParityReport(samples=0, precision=precision, tolerances=tol, outputs=[])
        report = ValidationReport(str(reference), str(candidate), digest, parity, load_error=str(exc))
    else:
        parity = check_parity(reference_runner, candidate_runner, inputs, labels, precision=precision, tolerances=tol)
        report = ValidationReport(str(reference), str(candidate), digest, parity)
        if profile and report.passed:
            sample = {n: inputs[n][: max(1, min(8, max_batch_size))] for n in candidate_runner.input_names}
            sizes = list(batch_sizes or batch_sizes_up_to(max_batch_size))
            report.profile = profile_runner(
                candidate_runner, sample, batch_sizes=sizes, max_seconds_per_batch=max_seconds_per_batch
            )
            report.recommendation = recommend_batching(report.profile, latency_budget_ms)
        candidate_runner.close()
    reference_runner.close()
    if report_dir is not None:
        report.report_md, report.plot_png = write_report(report, report_dir)
    if raise_on_failure and not report.passed:
        raise ValidationFailed(render_markdown(report), report)
    return report

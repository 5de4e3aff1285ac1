"""Markdown report and PNG plot for a validation.

Public: ``render_markdown(report) -> str``, ``write_plot(rows, recommendation, path) -> Path``,
``write_report(report, out_dir) -> tuple[Path, Path | None]`` (``validation.md``, ``profile.png``,
and ``validation.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.components.validate.profile import BatchingRecommendation, ProfileRow

if TYPE_CHECKING:
    from shipyard.components.validate.api import ValidationReport


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: ValidationReport) -> str:
    """The whole report as markdown: verdict, failures, parity per output, accuracy, profile, batching."""
    p = report.parity
    tol = p.tolerances
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Validation: {report.candidate_name} vs {report.reference_name}",
        "",
        f"**Gate: {verdict}** ({p.precision}, {p.samples} held-out samples)",
        "",
    ]
    if report.failures:
        lines += ["Failed checks:", ""] + [f"- {f}" for f in report.failures] + [""]
    lines += [
        f"Tolerances: max abs {_fmt(tol.max_abs)}, max rel {_fmt(tol.max_rel)}, "
        f"min top-1 agreement {_fmt(tol.min_top1_agreement)}, max accuracy drop {_fmt(tol.max_accuracy_drop)}",
        "",
        "| output | max abs error | max rel error | top-1 agreement |",
        "|---|---|---|---|",
    ]
    lines += [f"| {o.name} | {o.max_abs:.4g} | {o.max_rel:.4g} | {_fmt(o.top1_agreement)} |" for o in p.outputs]
    if p.accuracy_reference is not None:
        lines += [
            "",
            f"Task accuracy: reference {p.accuracy_reference:.4f}, candidate {_fmt(p.accuracy_candidate, '.4f')}, "
            f"delta {_fmt(p.accuracy_delta, '+.4f')}",
        ]
    if report.profile:
        lines += ["", "## Latency and throughput (candidate alone)", "",
                  "| batch | p50 ms | p95 ms | p99 ms | inferences/s |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r.batch_size} | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.p99_ms:.3f} | {r.throughput:.0f} |"
            for r in report.profile
        ]
    rec = report.recommendation
    if rec is not None:
        lines += [
            "",
            f"## Recommended dynamic batching (latency budget {rec.latency_budget_ms:g} ms)",
            "",
            f"- max_batch_size: {rec.max_batch_size}",
            f"- preferred_batch_size: {rec.preferred_batch_size}",
            f"- max_queue_delay_microseconds: {rec.max_queue_delay_microseconds}",
            f"- why: {rec.reason}",
        ]
    return "\n".join(lines) + "\n"


def write_plot(rows: Sequence[ProfileRow], recommendation: BatchingRecommendation | None, path: Path) -> Path:
    """Latency (p50/p95) and throughput against batch size, budget and preferred batch marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax_lat, ax_thr = fig.subplots(1, 2)
    batches = [r.batch_size for r in rows]
    ax_lat.plot(batches, [r.p50_ms for r in rows], "o-", label="p50")
    ax_lat.plot(batches, [r.p95_ms for r in rows], "s--", label="p95")
    ax_thr.plot(batches, [r.throughput for r in rows], "o-", color="tab:green")
    if recommendation is not None:
        ax_lat.axhline(recommendation.latency_budget_ms, color="tab:red", linestyle=":", label="budget")
        ax_thr.axvline(recommendation.preferred_batch_size, color="tab:purple", linestyle=":", label="preferred")
        ax_thr.legend()
    for ax, title, ylabel in ((ax_lat, "latency", "ms"), (ax_thr, "throughput", "inferences/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")  # sub-millisecond latencies stay readable beside a budget of tens of ms
    ax_lat.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=100)
    return path


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``validation.md``, ``validation.json`` and (when profiled) ``profile.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "validation.md"
    md.write_text(render_markdown(report), encoding="utf-8")
    (out / "validation.json").write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    png = write_plot(report.profile, report.recommendation, out / "profile.png") if report.profile else None
    return md, png

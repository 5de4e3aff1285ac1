"""Issue 21's part of the report: shipyard against the real Triton server and the C++ echo floor.

- ``vs_triton``: shipyard / Triton for every cell both measured (each protocol, model, concurrency):
  throughput ratio (higher is better) and p50 ratio (lower is better);
- ``checks``: issue 21's targets (gRPC, single-item requests): shipyard >= 1.3x Triton at c=16 and
  c=64 on the trivial model (add_sub) and the wide MLP, p50 at c=1 no worse than Triton's,
  >= 0.7x the C++ echo floor on the trivial model at c=64, REST binary >= 0.9x gRPC at c=64.

:mod:`benchmarks.report` calls these; they read the same results dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.report import TOP_C, _check, _field, _ratio, find_cell, fmt

ISSUE = 21
TRITON_TARGET, ECHO_FLOOR_TARGET, REST_TARGET = 1.3, 0.7, 0.9
MODELS = ("add_sub", "wide_mlp")  # the trivial model and the wide MLP


def vs_triton(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per shipyard cell that Triton also measured (same protocol, model, concurrency)."""
    rows = []
    for cell in results.get("cells", []):
        if cell["target"] != "shipyard":
            continue
        triton = find_cell(results, "triton", cell["protocol"], cell["model"], cell["concurrency"])
        if triton is None:
            continue
        ok = cell.get("completed") and triton.get("completed")
        rows.append(
            {
                "model": cell["model"],
                "protocol": cell["protocol"],
                "concurrency": cell["concurrency"],
                "shipyard": cell["throughput"],
                "triton": triton["throughput"],
                "throughput_ratio": _ratio(cell["throughput"], triton["throughput"]) if ok else None,
                "p50_ratio": _ratio(_field(cell, "p50_ms"), _field(triton, "p50_ms")) if ok else None,
            }
        )
    return rows


def _throughput(results: dict[str, Any], target: str, protocol: str, model: str, c: int) -> float | None:
    cell = find_cell(results, target, protocol, model, c)
    return None if cell is None or not cell.get("completed") else float(cell["throughput"])


def checks(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Issue 21's targets, each with ``issue: 21`` (None values: not measured in this run)."""
    measured = {c["model"] for c in results.get("cells", [])}
    for model in (m for m in MODELS if m in measured):
        for c in (16, TOP_C):
            ship, triton = (_throughput(results, t, "grpc", model, c) for t in ("shipyard", "triton"))
            yield _check(f"{model}: shipyard / Triton (gRPC, c={c})", _ratio(ship, triton), TRITON_TARGET, unit="x")
        ship_cell, triton_cell = (find_cell(results, t, "grpc", model, 1) for t in ("shipyard", "triton"))
        p50 = _ratio(_field(ship_cell, "p50_ms"), _field(triton_cell, "p50_ms"))
        yield _check(f"{model}: c=1 p50 shipyard / Triton (gRPC)", p50, 1.0, higher_is_better=False, unit="x")
    if "add_sub" in measured:
        ship, floor = (_throughput(results, t, "grpc", "add_sub", TOP_C) for t in ("shipyard", "echo-cpp"))
        name = f"add_sub: shipyard / C++ echo floor (gRPC, c={TOP_C})"
        yield _check(name, _ratio(ship, floor), ECHO_FLOOR_TARGET, unit="x")
    for model in (m for m in MODELS if m in measured):
        rest, grpc = (_throughput(results, "shipyard", p, model, TOP_C) for p in ("rest", "grpc"))
        yield _check(f"{model}: shipyard REST binary / gRPC (c={TOP_C})", _ratio(rest, grpc), REST_TARGET, unit="x")


def tag(checks_: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**c, "issue": ISSUE} for c in checks_]


def lines(results: dict[str, Any]) -> list[str]:
    """The every-cell shipyard / Triton table (markdown lines; none when Triton was not measured)."""
    rows = results.get("vs_triton") or []
    if not rows:
        return []
    out = [
        "",
        "## shipyard / Triton (every cell)",
        "",
        "Triton 2.51 with its Python backend running the same ONNX Runtime session (benchmarks/reference_targets.py); "
        "throughput ratio > 1 and p50 ratio < 1 favour shipyard.",
        "",
        "| model | protocol | c | shipyard inf/s | Triton inf/s | shipyard / Triton | p50 shipyard / Triton |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['protocol']} | {r['concurrency']} | {fmt(float(r['shipyard']))} "
            f"| {fmt(float(r['triton']))} | {fmt(r['throughput_ratio'], 3)} | {fmt(r['p50_ratio'], 3)} |"
        )
    return out

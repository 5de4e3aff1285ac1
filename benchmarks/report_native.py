"""Issue 21's part of the report: shipyard against the real Triton server and the C++ echo floor.

- ``vs_triton``: shipyard / Triton for every cell both measured (each protocol, model, concurrency):
  throughput ratio (higher is better) and p50 ratio (lower is better);
- ``round_cells``: shipyard / Triton per interleaved round at each concurrency the rounds measured
  (throughput and p50 ratios, each from two cells seconds to minutes apart) and their medians;
- ``checks``: issue 21's targets (gRPC, single-item requests): shipyard >= 1.3x Triton at c=16 and
  c=64 on the trivial model (add_sub) and the wide MLP, p50 at c=1 no worse than Triton's,
  >= 0.7x the C++ echo floor on the trivial model at c=64, REST binary >= 0.9x gRPC at c=64. The
  gRPC ones are decided on the medians of the interleaved rounds where the rounds measured them (one
  sweep cell swings by 30% or more between runs on this machine: wide_mlp gRPC c=16 2,052 inf/s in
  one sweep, 3,042 in a run minutes later), else on the sweep's cells.

:mod:`benchmarks.report` calls these; they read the same results dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.report import TOP_C, _check, _field, _median, _ratio, find_cell, fmt, round_concurrency

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


def round_cells(results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (model, concurrency) the interleaved rounds measured on both shipyard and Triton: per round
    ``throughput`` (shipyard / Triton) and ``p50`` (shipyard / Triton) ratios, and their medians."""
    by_round: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    for row in results.get("rounds") or []:
        if row.get("completed"):
            by_round[(row["model"], round_concurrency(row), row["target"], row["round"])] = row
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for model, c, target, number in sorted(by_round):
        triton = by_round.get((model, c, "triton", number))
        if target != "shipyard" or triton is None:
            continue
        ship = by_round[(model, c, target, number)]
        entry = out.setdefault((model, c), {"throughput": [], "p50": []})
        if (value := _ratio(float(ship["throughput"]), float(triton["throughput"]))) is not None:
            entry["throughput"].append(value)
        if (value := _ratio(_field(ship, "p50_ms"), _field(triton, "p50_ms"))) is not None:
            entry["p50"].append(value)
    for entry in out.values():
        for key in ("throughput", "p50"):
            entry[f"{key}_median"] = _median(entry[key]) if entry[key] else None
    return out


def _rounds_name(count: int) -> str:
    return f"median of {count} interleaved round{'' if count == 1 else 's'}"


def checks(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Issue 21's targets, each with ``issue: 21`` (None values: not measured in this run). The c=64
    throughput ratios' round medians are ``report.ROUND_RATIOS`` checks; they replace the sweep's
    cells here when the rounds measured them."""
    measured = {c["model"] for c in results.get("cells", [])}
    rounds = round_cells(results)
    at_top = {key for key, entry in (results.get("round_ratios") or {}).items() if entry.get("values")}
    for model in (m for m in MODELS if m in measured):
        for c in (16, TOP_C):
            entry = rounds.get((model, c))
            if c == TOP_C and f"{model}: shipyard / Triton" in at_top:
                continue  # report.ROUND_RATIOS' median check
            if entry and entry["throughput"]:
                name = f"{model}: shipyard / Triton, {_rounds_name(len(entry['throughput']))} (gRPC, c={c})"
                yield _check(name, entry["throughput_median"], TRITON_TARGET, unit="x")
                continue
            ship, triton = (_throughput(results, t, "grpc", model, c) for t in ("shipyard", "triton"))
            yield _check(f"{model}: shipyard / Triton (gRPC, c={c})", _ratio(ship, triton), TRITON_TARGET, unit="x")
        entry = rounds.get((model, 1))
        if entry and entry["p50"]:
            name = f"{model}: c=1 p50 shipyard / Triton, {_rounds_name(len(entry['p50']))} (gRPC)"
            yield _check(name, entry["p50_median"], 1.0, higher_is_better=False, unit="x")
        else:
            ship_cell, triton_cell = (find_cell(results, t, "grpc", model, 1) for t in ("shipyard", "triton"))
            p50 = _ratio(_field(ship_cell, "p50_ms"), _field(triton_cell, "p50_ms"))
            yield _check(f"{model}: c=1 p50 shipyard / Triton (gRPC)", p50, 1.0, higher_is_better=False, unit="x")
    if "add_sub" in measured and "add_sub: shipyard / C++ echo floor" not in at_top:
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


def round_lines(results: dict[str, Any], count: int) -> list[str]:
    """Markdown: shipyard / Triton per interleaved round at every concurrency (none without Triton)."""
    rounds = round_cells(results)
    if not rounds:
        return []
    out = [
        "| shipyard / Triton (gRPC) | c | " + " | ".join(f"round {i + 1}" for i in range(count)) + " | median |",
        "| --- | ---: |" + " ---: |" * (count + 1),
    ]
    for (model, c), entry in sorted(rounds.items()):
        for key in ("throughput", "p50"):
            values = [fmt(v, 3) for v in entry[key]] + ["—"] * (count - len(entry[key]))
            median = fmt(entry[f"{key}_median"], 3)
            out.append(f"| {model} {key} | {c} | " + " | ".join(values) + f" | {median} |")
    return [*out, ""]

"""Reporting: ratios and the issue's targets computed from a results dict, written as JSON, markdown, PNG.

The results dict (what :mod:`benchmarks.run` builds and ``latest.json`` holds)::

    {"meta": {...}, "inprocess": {model: {"batch1", "best", "best_batch", "sweep"}},
     "targets": {name: {"status": "ok"|"failed"|"unavailable", "description", "message"}},
     "cells": [{"target", "protocol", "model", "concurrency", "throughput", "p50_ms", "p99_ms", "errors", ...}],
     "overload": {...}}

Ratios and checks are derived here (``derive``), so a saved JSON can be re-rendered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.loadgen import REJECTION_KINDS

TOP_C = 64


def find_cell(
    results: dict[str, Any], target: str, protocol: str, model: str, concurrency: int
) -> dict[str, Any] | None:
    """The measurement for one (target, protocol, model, concurrency), or None."""
    for cell in results.get("cells", []):
        if (cell["target"], cell["protocol"], cell["model"], cell["concurrency"]) == (
            target,
            protocol,
            model,
            concurrency,
        ):
            return dict(cell)
    return None


def _throughput(results: dict[str, Any], target: str, protocol: str, model: str, c: int) -> float | None:
    cell = find_cell(results, target, protocol, model, c)
    return None if cell is None or not cell.get("completed") else float(cell["throughput"])


def _field(cell: dict[str, Any] | None, key: str) -> float | None:
    value = None if cell is None else cell.get(key)
    return None if value is None else float(value)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Add ``ratios`` (per model, gRPC, c=64) and ``checks`` (the issue's targets) to ``results``; returns it."""
    models = sorted({c["model"] for c in results.get("cells", [])} | set(results.get("inprocess", {})))
    ratios: dict[str, dict[str, float | None]] = {}
    for model in models:
        ship = _throughput(results, "shipyard", "grpc", model, TOP_C)
        inproc = results.get("inprocess", {}).get(model, {})
        ratios[model] = {
            "shipyard_vs_mlserver": _ratio(ship, _throughput(results, "mlserver", "grpc", model, TOP_C)),
            "shipyard_vs_kserve": _ratio(ship, _throughput(results, "kserve", "grpc", model, TOP_C)),
            "shipyard_vs_transport_floor": _ratio(ship, _throughput(results, "echo", "grpc", model, TOP_C)),
            "shipyard_vs_inprocess_best": _ratio(ship, inproc.get("best")),
            "shipyard_vs_inprocess_batch1": _ratio(ship, inproc.get("batch1")),
            "shipyard_rest_vs_grpc": _ratio(_throughput(results, "shipyard", "rest", model, TOP_C), ship),
        }
    results["ratios"] = ratios
    results["round_ratios"] = _round_ratios(results.get("rounds", []))
    from benchmarks import report_native, report_rounds  # issue 21's references (report_native imports this module)

    results["vs_triton"] = report_native.vs_triton(results)
    results["pip_vs_source"] = report_rounds.pip_vs_source(results.get("rounds", []))
    checks = [*report_native.checks(results), *report_rounds.checks(results)]
    results["checks"] = list(_checks(results)) + report_native.tag(checks)
    return results


# The issue's throughput-ratio targets (gRPC, c=64), checked on the sweep and on the rounds' medians.
MLSERVER_TARGET, FLOOR_TARGET, KSERVE_TARGET = 3.0, 0.6, 1.5
# The throughput ratios the interleaved rounds measure: key -> (model, reference target, the issue's target).
ROUND_RATIOS = {
    "wide_mlp: shipyard / MLServer": ("wide_mlp", "mlserver", MLSERVER_TARGET),
    "wide_mlp: shipyard / transport floor": ("wide_mlp", "echo", FLOOR_TARGET),
    "add_sub: shipyard / stock KServe": ("add_sub", "kserve", KSERVE_TARGET),
    # issue 21 (benchmarks/report_native.py)
    "add_sub: shipyard / Triton": ("add_sub", "triton", 1.3),
    "wide_mlp: shipyard / Triton": ("wide_mlp", "triton", 1.3),
    "add_sub: shipyard / C++ echo floor": ("add_sub", "echo-cpp", 0.7),
}
ROUND_RATIOS_ISSUE_21 = {key for key, (_, reference, _) in ROUND_RATIOS.items() if reference in ("triton", "echo-cpp")}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def round_concurrency(row: dict[str, Any]) -> int:
    """The concurrency of one row of the interleaved rounds (rows of runs before ``--round-concurrency``
    were all at c=64)."""
    return int(row.get("concurrency", TOP_C))


def _round_ratios(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ``ROUND_RATIOS`` key: shipyard's throughput over the reference's at c=64, one value per
    round in which both were measured (the two ran minutes apart at most), and their median."""
    out: dict[str, dict[str, Any]] = {}
    by_round: dict[tuple[int, str, str], float] = {}
    for row in rounds:
        if row.get("completed") and round_concurrency(row) == TOP_C:
            by_round[(row["round"], row["model"], row["target"])] = float(row["throughput"])
    round_ids = sorted({r for r, _, _ in by_round})
    for key, (model, reference, _target) in ROUND_RATIOS.items():
        values = [
            ship / ref
            for r in round_ids
            if (ship := by_round.get((r, model, "shipyard"))) is not None
            and (ref := by_round.get((r, model, reference)))
        ]
        if values:
            out[key] = {"values": values, "median": _median(values), "min": min(values), "max": max(values)}
    return out


def _check(
    name: str, value: float | None, threshold: float, higher_is_better: bool = True, unit: str = ""
) -> dict[str, Any]:
    passed = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    return {
        "name": name,
        "value": value,
        "threshold": threshold,
        "op": ">=" if higher_is_better else "<=",
        "unit": unit,
        "pass": passed,
    }


def _checks(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    r = results["ratios"]
    if "wide_mlp" in r:
        yield _check(
            "wide_mlp: shipyard / MLServer adaptive (gRPC, c=64)",
            r["wide_mlp"]["shipyard_vs_mlserver"],
            MLSERVER_TARGET,
            unit="x",
        )
        yield _check(
            "wide_mlp: shipyard / transport floor (gRPC, c=64)",
            r["wide_mlp"]["shipyard_vs_transport_floor"],
            FLOOR_TARGET,
            unit="x",
        )
        cell = find_cell(results, "shipyard", "grpc", "wide_mlp", TOP_C)
        yield _check(
            "wide_mlp: shipyard p99 (gRPC, c=64)", _field(cell, "p99_ms"), 50.0, higher_is_better=False, unit="ms"
        )
        yield _check(
            "wide_mlp: shipyard REST binary / gRPC (c=64)", r["wide_mlp"]["shipyard_rest_vs_grpc"], 0.7, unit="x"
        )
    if "add_sub" in r:
        yield _check(
            "add_sub: shipyard / stock KServe (gRPC, c=64)", r["add_sub"]["shipyard_vs_kserve"], KSERVE_TARGET, unit="x"
        )
    for key, entry in results.get("round_ratios", {}).items():
        count = len(entry["values"])
        name = f"{key}, median of {count} interleaved round{'' if count == 1 else 's'} (gRPC, c=64)"
        check = _check(name, entry["median"], ROUND_RATIOS[key][2], unit="x")
        yield {**check, "issue": 21} if key in ROUND_RATIOS_ISSUE_21 else check
    for model in r:
        ship = find_cell(results, "shipyard", "grpc", model, 1)
        kserve = find_cell(results, "kserve", "grpc", model, 1)
        value = _ratio(_field(ship, "p50_ms"), _field(kserve, "p50_ms"))
        yield _check(f"{model}: c=1 p50 shipyard / stock KServe (gRPC)", value, 1.0, higher_is_better=False, unit="x")
    for key, label, _heading in OVERLOAD_SCENARIOS:
        overload = results.get(key) or {}
        if overload.get("status") == "ok":
            yield from _overload_checks(label, overload)


# Where the server makes each refusal the probe sees (report lines; docs/serving.md, "Overload").
REFUSED_WHERE = {
    "RESOURCE_EXHAUSTED": "grpc++ threads, past --grpc-max-concurrent-rpcs, no Python",
    "UNAVAILABLE": "the model's queue, through the event loop",
    "CANCELLED": "grpc core's pending-call limit",
}

# The overload scenarios in the results: key, the label that starts their checks' names, heading.
OVERLOAD_SCENARIOS = (
    ("overload", "overload", "Overload (shipyard, bounded queue)"),
    ("overload_many", "overload, many connections", "Overload (shipyard, bounded queue, many connections)"),
)


def _overload_checks(label: str, overload: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield _check(f"{label}: lost accepted requests", float(overload["lost"]), 0.0, higher_is_better=False)
    probe = overload.get("probe") or {}
    # None ("not measured") when the light client was never refused: its answers are in the report
    yield _check(
        f"{label}: refusal p99 seen by a light client during the burst",
        (probe.get("refused_latency") or {}).get("p99_ms"),
        100.0,
        higher_is_better=False,
        unit="ms",
    )
    yield _check(
        f"{label}: RSS growth during burst", overload["rss_growth_mb"], 64.0, higher_is_better=False, unit="MB"
    )
    yield _check(
        f"{label}: RSS after burst - before",
        _diff(overload["rss_after_mb"], overload["rss_before_mb"]),
        16.0,
        higher_is_better=False,
        unit="MB",
    )
    yield _check(f"{label}: throughput after burst / before", overload["recovery_ratio"], 0.8, unit="x")


# ---------------------------------------------------------------------------------------------- markdown


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def client_us_per_request(cell: dict[str, Any]) -> float | None:
    """The load generator's CPU time per completed request in the window (µs), when it was measured."""
    cpu_s = cell.get("client_cpu_s")
    if cpu_s is None or not cell.get("completed"):
        return None
    return float(cpu_s) / cell["completed"] * 1e6


def _client_words(meta: dict[str, Any]) -> str:
    procs = meta.get("client_procs", "?")
    if meta.get("client") == "native" and meta.get("rest_client") == "native":
        return (
            f"gRPC: the C++ client, one process with {procs} connections at most; REST: the C++ HTTP client, one "
            "process with one keep-alive connection per request in flight"
        )
    if meta.get("client") == "native":
        return f"gRPC: the C++ client, one process with {procs} connections at most; REST: {procs} Python processes"
    return f"gRPC and REST: {procs} Python processes"


def render_markdown(results: dict[str, Any]) -> str:
    """The report as markdown: meta, checks, ratios, one table per model, overload."""
    lines = _header_lines(results.get("meta", {}))
    lines += _targets_lines(results)
    checks = results.get("checks", [])
    lines += _checks_lines([c for c in checks if c.get("issue", 4) == 4])
    lines += _checks_lines([c for c in checks if c.get("issue") == 21], "Issue 21 targets")
    lines += _ratios_lines(results.get("ratios", {}))
    from benchmarks import report_native

    lines += report_native.lines(results)
    lines += _rounds_lines(results)
    models = sorted({c["model"] for c in results.get("cells", [])} | set(results.get("inprocess", {})))
    for model in models:
        lines += _model_lines(results, model)
    for key, _label, heading in OVERLOAD_SCENARIOS:
        overload = results.get(key)
        if not overload:
            continue
        lines += ["", f"## {heading}", ""]
        if overload.get("status") != "ok":
            lines.append(f"Not measured: {overload.get('message', '')}")
        else:
            lines += _overload_lines(overload)
    if results.get("errors"):
        lines += ["", "## Errors during the run", ""] + [f"- {e}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def _header_lines(meta: dict[str, Any]) -> list[str]:
    lines = [
        "# shipyard serving benchmark",
        "",
        f"Run {meta.get('finished', '?')} on {meta.get('cpus', '?')} CPUs ({meta.get('machine', '?')}), "
        f"commit `{meta.get('commit', '?')}`; command `{meta.get('command', '?')}`.",
        f"Single-item requests (batch 1), closed-loop clients in their own processes ({_client_words(meta)}); "
        f"warm-up {meta.get('warmup_s', '?')} s, window {meta.get('window_s', '?')} s per cell. ONNX Runtime with "
        "one intra-op thread everywhere.",
    ]
    if meta.get("rounds_pause_others"):
        lines.append(
            "Interleaved rounds: the targets not being measured were stopped (SIGSTOP to their process groups) "
            "during each cell, every target alike."
        )
    if meta.get("note"):
        lines += ["", f"**Note:** {meta['note']}"]
    return lines


def _targets_lines(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets", "", "| target | status | what |", "| --- | --- | --- |"]
    for name, info in results.get("targets", {}).items():
        message = info.get("message") or ""
        status = info["status"] + (f": {message.splitlines()[0][:140]}" if message and info["status"] != "ok" else "")
        lines.append(f"| {name} | {status} | {info.get('description', '')} |")
    return lines


def _checks_lines(checks: list[dict[str, Any]], heading: str = "Issue 4 targets") -> list[str]:
    if not checks:
        return []
    lines = ["", f"## {heading}", "", "| check | value | target | result |", "| --- | --- | --- | --- |"]
    for c in checks:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[c["pass"]]
        digits = 3 if c["unit"] == "x" else 2  # 1.497x, not a "1.50x" that fails ">= 1.5x"
        lines.append(
            f"| {c['name']} | {fmt(c['value'], digits)}{c['unit'] if c['value'] is not None else ''} "
            f"| {c['op']} {c['threshold']}{c['unit']} | {verdict} |"
        )
    return lines


_RATIO_COLUMNS = (
    ("shipyard_vs_mlserver", "vs MLServer"),
    ("shipyard_vs_kserve", "vs stock KServe"),
    ("shipyard_vs_transport_floor", "vs transport floor"),
    ("shipyard_vs_inprocess_best", "vs in-process best"),
    ("shipyard_vs_inprocess_batch1", "vs in-process batch 1"),
    ("shipyard_rest_vs_grpc", "REST / gRPC"),
)


def _ratios_lines(ratios: dict[str, Any]) -> list[str]:
    if not ratios:
        return []
    heads = [head for _, head in _RATIO_COLUMNS]
    lines = [
        "",
        f"## Ratios (shipyard throughput, gRPC, c={TOP_C})",
        "",
        "| model | " + " | ".join(heads) + " |",
        "| --- |" + " --- |" * len(heads),
    ]
    for model, row in ratios.items():
        lines.append(f"| {model} | " + " | ".join(fmt(row.get(k), 2) for k, _ in _RATIO_COLUMNS) + " |")
    return lines


def _model_lines(results: dict[str, Any], model: str) -> list[str]:
    lines = [
        "",
        f"## {model}",
        "",
        "| target | protocol | c | inf/s | p50 ms | p99 ms | errors | client CPU µs/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    inproc = results.get("inprocess", {}).get(model)
    if inproc:
        lines.append(f"| in-process limit | batch 1 | — | {fmt(inproc.get('batch1'))} | | | | |")
        lines.append(
            f"| in-process limit | batch {inproc.get('best_batch')} (best) | — | {fmt(inproc.get('best'))} | | | | |"
        )
    for cell in results.get("cells", []):
        if cell["model"] != model:
            continue
        lines.append(
            f"| {cell['target']} | {cell['protocol']} | {cell['concurrency']} | {fmt(cell['throughput'])} "
            f"| {fmt(cell.get('p50_ms'), 2)} | {fmt(cell.get('p99_ms'), 2)} | {cell['errors']} "
            f"| {fmt(client_us_per_request(cell), 0)} |"
        )
    return lines


def _overload_lines(o: dict[str, Any]) -> list[str]:
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(o["outcomes"].items()))
    server = o.get("server_counts", {})
    lines = [
        f"Model `{o['model']}` with `max_queue_size: {o['max_queue_size']}`; capacity measured at "
        f"{fmt(o['capacity'])} inf/s (gRPC, c={TOP_C}); burst target {fmt(o['target_rate'])} req/s "
        f"(10x) for {o['duration_s']} s over {o.get('connections', 2)} gRPC connections, offered "
        f"{fmt(o['offered_rate'])} req/s open-loop ({o.get('burst_client', 'two Python client processes')}, as fast "
        f"as it could send on this machine; {o['skipped_client_cap']} not offered because {o['max_inflight']} were "
        "already in flight).",
        "",
        f"- sent {o['sent']}: {outcomes}",
        f"- answered OK: {o['accepted']}; rejected at once: {o['rejected']} (by the queue policy, UNAVAILABLE: "
        f"{o.get('rejected_queue', o['rejected'])}; by the server's concurrent-call limit, RESOURCE_EXHAUSTED: "
        f"{o.get('rejected_limit', 0)}); "
        f"**lost accepted requests: {o['lost']}**",
    ]
    if server.get("available"):
        lines.append(
            f"- server statistics for the burst: {server['success']} succeeded, {server['fail']} failed "
            f"(answers lost on the way: {server['answers_lost']}; accepted then failed: "
            f"{server['accepted_then_failed']}); mean time in the server of a rejected request "
            f"{fmt(server.get('fail_mean_us'), 2)} µs, of an answered one {fmt(server.get('success_mean_us'), 0)} µs"
        )
    if o.get("not_accepted_other"):
        lines.append(
            f"- {o['not_accepted_other']} requests were refused before the model saw them with another status "
            "(see `error_samples` in latest.json; gRPC core cancels calls beyond its pending-call limit, "
            "shipyard's `--grpc-max-pending-rpcs`, default 128)"
        )
    lines += [
        f"- answered latency p50 {fmt(o['ok_latency']['p50_ms'], 1)} ms, p99 {fmt(o['ok_latency']['p99_ms'], 1)} ms; "
        f"rejection latency p50 {fmt(o['rejected_latency']['p50_ms'], 2)} ms, "
        f"p99 {fmt(o['rejected_latency']['p99_ms'], 2)} ms",
    ]
    for kind, pct in o.get("error_latency", {}).items():
        if kind not in REJECTION_KINDS:
            lines.append(f"- {kind} latency p50 {fmt(pct['p50_ms'], 2)} ms, p99 {fmt(pct['p99_ms'], 2)} ms")
    probe = o.get("probe")
    if probe:
        p_outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(probe["outcomes"].items()))
        refused, answered = probe["refused_latency"], probe["ok_latency"]
        lines.append(
            f"- probe (one more client at {fmt(probe['rate'])} req/s during the burst, not itself saturated; the "
            f"burst's latencies above include its own clients' backlog): {p_outcomes}; refused p50 "
            f"{fmt(refused['p50_ms'], 2)} ms, **p99 {fmt(refused['p99_ms'], 2)} ms**; answered p50 "
            f"{fmt(answered['p50_ms'], 1)} ms, p99 {fmt(answered['p99_ms'], 1)} ms"
        )
        by_kind = [
            f"{kind} ({REFUSED_WHERE.get(kind, 'elsewhere')}) p50 {fmt(pct['p50_ms'], 1)} ms, "
            f"p99 {fmt(pct['p99_ms'], 1)} ms"
            for kind, pct in sorted((probe.get("error_latency") or {}).items())
        ]
        if by_kind:
            lines.append("- the probe's refusals by where they were made: " + "; ".join(by_kind))
    if o.get("server_cores_burst") is not None:
        lines.append(
            f"- CPU during the burst: the server {fmt(o['server_cores_burst'], 2)} cores, the whole machine "
            f"{fmt(o['machine_cores_burst'], 2)} of {o.get('machine_cores')} (the rest: the burst's client, the "
            "probe, anything else running)"
        )
    lines += [
        f"- server RSS: before {fmt(o['rss_before_mb'], 1)} MB, peak during burst {fmt(o['rss_peak_mb'], 1)} MB, "
        f"after {fmt(o['rss_after_mb'], 1)} MB (growth {fmt(o['rss_growth_mb'], 1)} MB)",
        f"- after the burst: {fmt(o['after']['throughput'])} inf/s at c=16 with {o['after']['errors']} errors "
        f"(before: {fmt(o['before']['throughput'])} inf/s; ratio {fmt(o['recovery_ratio'], 2)})",
    ]
    return lines


# ---------------------------------------------------------------------------------------------- plot


def render_plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against concurrency, per target and protocol, one row per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c["model"] for c in results.get("cells", [])})
    if not models:
        return
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        ax_t, ax_p = axes[row]
        series: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for cell in results["cells"]:
            if cell["model"] == model and cell.get("completed"):
                series.setdefault((cell["target"], cell["protocol"]), []).append(cell)
        for (target, protocol), cells in sorted(series.items()):
            cells.sort(key=lambda c: c["concurrency"])
            xs = [c["concurrency"] for c in cells]
            style = "-" if protocol == "grpc" else "--"
            ax_t.plot(xs, [c["throughput"] for c in cells], style, marker="o", label=f"{target} {protocol}")
            ax_p.plot(xs, [c["p99_ms"] for c in cells], style, marker="o", label=f"{target} {protocol}")
        inproc = results.get("inprocess", {}).get(model)
        measured_max = max((c["throughput"] for cells in series.values() for c in cells), default=0.0)
        off_scale = []
        if inproc:
            for key, color, label in (
                ("best", "grey", f"in-process b{inproc['best_batch']}"),
                ("batch1", "black", "in-process b1"),
            ):
                if inproc[key] <= 3 * measured_max:
                    ax_t.axhline(inproc[key], color=color, linestyle=":", label=label)
                else:  # a trivial model's in-process limit would flatten every server's line
                    off_scale.append(f"{label} {inproc[key]:,.0f}")
        concurrencies = sorted({c["concurrency"] for cells in series.values() for c in cells})
        for ax, title in ((ax_t, "throughput (inf/s)"), (ax_p, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.set_xlabel("concurrency")
            ax.set_title(f"{model}: {title}")
            ax.grid(True, alpha=0.3)
        if off_scale:
            ax_t.set_title(f"{model}: throughput (inf/s); off scale: {'; '.join(off_scale)}", fontsize=9)
        ax_p.set_yscale("log")
        ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_reports(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Derive ratios/checks and write ``latest.json``, ``latest.md`` and ``latest.png`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    derive(results)
    paths = {"json": out_dir / "latest.json", "md": out_dir / "latest.md", "png": out_dir / "latest.png"}
    _atomic_text(paths["json"], json.dumps(results, indent=2, default=_jsonable) + "\n")
    _atomic_text(paths["md"], render_markdown(results))
    tmp_png = out_dir / "latest.png.tmp"
    render_plot(results, tmp_png)
    if tmp_png.exists():
        os.replace(tmp_png, paths["png"])
    return paths


README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"


def update_readme(readme: Path, markdown: str, markers: tuple[str, str] = (README_START, README_END)) -> bool:
    """Put ``markdown`` (the report, headings demoted one level) between the README's ``markers``.

    Returns False (and leaves the file alone) when the markers are missing.
    """
    text = readme.read_text()
    opening, closing = markers
    start, end = text.find(opening), text.find(closing)
    if start < 0 or end < start:
        return False
    body = [line for line in markdown.splitlines() if not line.startswith("# ")]
    body = ["#" + line if line.startswith("## ") else line for line in body]
    new = text[: start + len(opening)] + "\n" + "\n".join(body).strip() + "\n" + text[end:]
    _atomic_text(readme, new)
    return True


_SUMMARY_SECTIONS = (
    "## Targets",
    "## Issue 4 targets",
    "## Issue 21 targets",
    "## Ratios",
    "## shipyard / Triton",
    "## Interleaved rounds",
)


ROUNDS_TARGET_TABLE = "| model | target | c | "  # the header's start of the rounds' per-target table


def _rounds_lines(results: dict[str, Any]) -> list[str]:
    """The interleaved rounds: each ratio per round and its median, then each target's throughput."""
    rounds = results.get("rounds") or []
    round_ratios = results.get("round_ratios") or {}
    if not rounds:
        return []
    round_ids = sorted({row["round"] for row in rounds})
    count = len(round_ids)
    levels = sorted({round_concurrency(row) for row in rounds})
    lines = [
        "",
        f"## Interleaved rounds (gRPC, c={', '.join(map(str, levels))})",
        "",
        f"Every target up at once; {count} rounds, each measuring every target and model once at each "
        "concurrency, the targets in a rotated order, so that a ratio compares measurements seconds to minutes "
        "apart, not a sweep apart. The issue targets are decided on the medians of these rounds.",
        "",
    ]
    if round_ratios:
        lines += [
            f"| ratio (c={TOP_C}) | " + " | ".join(f"round {i + 1}" for i in range(count)) + " | median |",
            "| --- |" + " ---: |" * (count + 1),
        ]
        for key, entry in round_ratios.items():
            values = [fmt(v, 3) for v in entry["values"]] + ["—"] * (count - len(entry["values"]))
            lines.append(f"| {key} | " + " | ".join(values) + f" | {fmt(entry['median'], 3)} |")
        lines.append("")
    from benchmarks import report_native

    lines += report_native.round_lines(results, count)
    lines += [ROUNDS_TARGET_TABLE + " | ".join(f"round {i + 1} inf/s" for i in range(count)) + " |"]
    lines.append("| --- | --- | ---: |" + " ---: |" * count)
    table: dict[tuple[str, str, int], dict[int, str]] = {}
    for row in sorted(rounds, key=round_concurrency):
        value = fmt(float(row["throughput"])) if row.get("completed") else f"errors {row.get('errors', '?')}"
        table.setdefault((row["model"], row["target"], round_concurrency(row)), {})[row["round"]] = value
    for (model, target, c), per_round in table.items():
        lines.append(f"| {model} | {target} | {c} | " + " | ".join(per_round.get(r, "—") for r in round_ids) + " |")
    from benchmarks import report_rounds

    return lines + report_rounds.lines(results)


def summary_markdown(markdown: str) -> str:
    """The report's opening paragraph and its Targets, checks and Ratios sections (for the top-level README)."""
    kept: list[str] = []
    keep = True
    per_target = False  # the rounds' per-target throughput table: in benchmarks/README.md only
    for line in markdown.splitlines():
        if line.startswith("## "):
            keep = line.startswith(_SUMMARY_SECTIONS)
        per_target = line.startswith(ROUNDS_TARGET_TABLE) or (per_target and line.startswith("|"))
        if keep and not per_target:
            kept.append(line)
    kept += [
        "",
        "Per-model tables (p50, p99, errors at every concurrency), the overload scenario and the plot: "
        "[`benchmarks/README.md`](benchmarks/README.md), `benchmarks/results/latest.{md,json,png}`.",
    ]
    return "\n".join(kept) + "\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

"""The interleaved rounds' fairness and pip figures (issue 21), beside :mod:`benchmarks.report`:

- ``pip_vs_source``: the pip-installed server (target ``shipyard-pip``, ``--shipyard-python``) over the
  source tree's (``shipyard``) per round and model, and whether their median is within the rounds'
  noise: ``|median - 1| <= noise``, the noise being the larger of the two targets' round-to-round
  spread (the largest ``|x / median - 1|`` of each one's own rounds). So "the same figures within
  noise" is decided by the run's data, from measurements seconds apart on the same machine;
- ``others_cpu``: the CPU the targets not being measured used during each cell of the rounds (read
  from /proc/PID/stat of every process in their groups; ~0 when they were paused, ``--pause-others``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.report import TOP_C, round_concurrency

PIP_TARGET = "shipyard-pip"
SOURCE_TARGET = "shipyard"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _spread(values: list[float]) -> float:
    """The largest relative distance of one value from the values' median (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    middle = _median(values)
    return max(abs(v / middle - 1) for v in values) if middle > 0 else 0.0


def pip_vs_source(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model measured by both: ``values`` (pip / source per round), ``median``, ``noise`` and
    ``within_noise``; empty when the rounds had no ``shipyard-pip``."""
    by_round: dict[tuple[str, str], dict[int, float]] = {}
    for row in rounds:
        if row.get("completed") and row["target"] in (PIP_TARGET, SOURCE_TARGET) and round_concurrency(row) == TOP_C:
            by_round.setdefault((row["model"], row["target"]), {})[row["round"]] = float(row["throughput"])
    out: dict[str, dict[str, Any]] = {}
    for model in sorted({m for m, _ in by_round}):
        pip, source = by_round.get((model, PIP_TARGET), {}), by_round.get((model, SOURCE_TARGET), {})
        both = sorted(set(pip) & set(source))
        values = [pip[r] / source[r] for r in both if source[r] > 0]
        if not values:
            continue
        noise = max(_spread(list(pip.values())), _spread(list(source.values())))
        median = _median(values)
        out[model] = {"values": values, "median": median, "noise": noise, "within_noise": abs(median - 1) <= noise}
    return out


def checks(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """One check per model of ``pip_vs_source`` (issue 21: the pip-installed server reaches the same
    figures within noise)."""
    for model, entry in (results.get("pip_vs_source") or {}).items():
        count = len(entry["values"])
        yield {
            "name": f"{model}: {PIP_TARGET} / {SOURCE_TARGET}, median of {count} interleaved rounds (gRPC, c=64)",
            "value": entry["median"],
            "threshold": round(entry["noise"], 3),
            "op": "within 1 ±",
            "unit": "x",
            "pass": entry["within_noise"],
        }


def lines(results: dict[str, Any]) -> list[str]:
    """Markdown: the pip / source table and the other targets' CPU during the rounds' cells."""
    out: list[str] = []
    pip = results.get("pip_vs_source") or {}
    if pip:
        count = max(len(e["values"]) for e in pip.values())
        out += [
            "",
            f"{PIP_TARGET} (the server installed by pip from the sdist, run by `--shipyard-python`) / {SOURCE_TARGET} "
            "(the source tree) per round; noise: the larger of the two targets' round-to-round spread.",
            "",
            "| model | " + " | ".join(f"round {i + 1}" for i in range(count)) + " | median | noise | within noise |",
            "| --- |" + " ---: |" * (count + 2) + " --- |",
        ]
        for model, e in pip.items():
            values = [f"{v:.3f}" for v in e["values"]] + ["—"] * (count - len(e["values"]))
            verdict = "yes" if e["within_noise"] else "no"
            out.append(f"| {model} | " + " | ".join(values) + f" | {e['median']:.3f} | ±{e['noise']:.3f} | {verdict} |")
    out += _others_cpu_lines(results)
    return out


def _others_cpu_lines(results: dict[str, Any]) -> list[str]:
    shares = [
        (share, other, row["target"], row["model"])
        for row in results.get("rounds") or []
        for other, share in (row.get("others_cpu") or {}).items()
    ]
    if not shares:
        return []
    top = max(shares)
    paused = (results.get("meta") or {}).get("rounds_pause_others")
    how = (
        "stopped (SIGSTOP to their process groups) during each cell, continued after"
        if paused
        else "left running (`--pause-others` stops them)"
    )
    return [
        "",
        f"The targets not being measured were {how}. CPU they used during a cell (warm-up + window, "
        "/proc/PID/stat of every process in their groups, Triton's Python-backend stubs included), as a share of "
        f"one core: median {_median([s for s, *_ in shares]):.1%}, at most {top[0]:.1%} ({top[1]} during "
        f"{top[2]}'s {top[3]} cell).",
    ]

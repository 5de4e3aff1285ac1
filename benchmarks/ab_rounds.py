"""Two shipyard builds side by side, interleaved, over both protocols: REST / gRPC per build and round.

    python -m benchmarks.ab_rounds --shipyard-python /ABS/other/.venv/bin/python
        [--models add_sub,wide_mlp] [--protocols grpc,rest] [--concurrency 16,64] [--rounds 3]
        [--warmup 1] [--window 3] [--shipyard-args "..."] [--json FILE]

Starts the source tree's server (``shipyard``, this interpreter) and the other build's
(``shipyard-pip``: ``--shipyard-python``, e.g. a detached worktree of main with its own venv)
at once, as ``make bench`` starts them, and then ``--rounds`` times measures every (model,
protocol, concurrency) cell on each, the two builds in alternating order, so that a ratio compares
measurements seconds apart on a shared machine. Each cell also reads the server's CPU (every
process of its group, ``/proc``) and the load generator's: CPU per request of each, so a cell where
the client or another process took the CPU shows as such. Prints one line per cell, then the
medians per build and the ratios REST / gRPC (per build) and this tree / the other (per cell).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common, targets
from benchmarks.loadgen import CLIENTS, run_closed_loop

SOURCE, OTHER = "shipyard", "shipyard-pip"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_rounds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shipyard-python", required=True, help="the other build's interpreter (absolute path)")
    parser.add_argument("--models", default="add_sub,wide_mlp")
    parser.add_argument("--protocols", default="grpc,rest")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--client", choices=CLIENTS, default="native")
    parser.add_argument("--shipyard-args", default="", help="more flags for both servers")
    parser.add_argument("--json", help="write every cell here")
    args = parser.parse_args(argv)
    if not Path(args.shipyard_python).is_absolute():
        parser.error("--shipyard-python must be an absolute path")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def _cell(
    target: targets.Target, model: common.ModelSpec, protocol: str, c: int, args: argparse.Namespace
) -> dict[str, Any]:
    before = common.group_cpu_seconds(target.server.pid)
    started = time.monotonic()
    cell = run_closed_loop(target.specs[protocol](model), c, args.warmup, args.window, 2, args.client)  # as make bench
    elapsed = time.monotonic() - started
    server_cpu = common.group_cpu_seconds(target.server.pid) - before
    done = cell.throughput * (args.warmup + args.window)  # the server served warm-up and window alike
    return {
        "target": target.name,
        "model": model.name,
        "protocol": protocol,
        "c": c,
        "throughput": cell.throughput,
        "p50_ms": cell.p50_ms,
        "errors": cell.errors,
        "server_cpu_share": server_cpu / elapsed,
        "server_us_per_req": server_cpu / done * 1e6 if done else None,
        "client_us_per_req": cell.client_cpu_s / cell.completed * 1e6 if cell.client_cpu_s and cell.completed else None,
    }


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Medians per (build, model, protocol, c), REST / gRPC per build, and source / other per cell."""
    cells: dict[tuple[str, str, str, int], list[float]] = {}
    for r in rows:
        cells.setdefault((r["target"], r["model"], r["protocol"], r["c"]), []).append(r["throughput"])
    med = {key: statistics.median(values) for key, values in cells.items()}
    out = ["", "| build | model | c | gRPC inf/s | REST inf/s | REST / gRPC |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for target, model, protocol, c in sorted(med):
        if protocol != "rest" or (target, model, "grpc", c) not in med:
            continue
        grpc, rest = med[(target, model, "grpc", c)], med[(target, model, "rest", c)]
        out.append(f"| {target} | {model} | {c} | {grpc:,.0f} | {rest:,.0f} | {rest / grpc:.2f} |")
    out += ["", "| model | protocol | c | shipyard / shipyard-pip (medians) |", "| --- | --- | ---: | ---: |"]
    for target, model, protocol, c in sorted(med):
        other = med.get((OTHER, model, protocol, c))
        if target == SOURCE and other:
            out.append(f"| {model} | {protocol} | {c} | {med[(target, model, protocol, c)] / other:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [common.load_model_spec(name) for name in args.models.split(",")]
    protocols = args.protocols.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ab_rounds-") as tmp, contextlib.ExitStack() as stack:
        builds = []
        for name, python in ((SOURCE, None), (OTHER, args.shipyard_python)):
            target = targets.shipyard_target(models, Path(tmp), python=python, name=name)
            target.server.argv.extend(args.shipyard_args.split())
            stack.enter_context(common.running(target.server))
            builds.append(target)
        for target in builds:
            target.server.wait_ready(target.probe, target.startup_timeout_s)
        for number in range(args.rounds):
            for model in models:
                for protocol in protocols:
                    for c in levels:
                        order = builds if (number + c) % 2 == 0 else builds[::-1]
                        for target in order:
                            if not target.server.alive():
                                raise RuntimeError(f"{target.name} died; log:\n{target.server.log_tail()}")
                            row = {"round": number, **_cell(target, model, protocol, c, args)}
                            rows.append(row)
                            print(
                                f"round {number + 1} {target.name:12s} {model.name:9s} {protocol:4s} c={c:<3d} "
                                f"{row['throughput']:8.0f} inf/s  p50 {_fmt(row['p50_ms'], '.2f')} ms  server "
                                f"{row['server_cpu_share']:.0%} of a CPU, {_fmt(row['server_us_per_req'])} µs/req; "
                                f"client {_fmt(row['client_us_per_req'])} µs/req  errors {row['errors']}",
                                flush=True,
                            )
    for line in summary(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

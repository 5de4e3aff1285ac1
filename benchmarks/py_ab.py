"""Two shipyard builds (and optionally Triton) on ``benchmarks.python_models``' repository, interleaved.

    python -m benchmarks.py_ab --other-python /ABS/base/.venv/bin/python [--other-env K=V ...]
        [--env K=V ...] [--models mlp_py,pipeline] [--concurrency 1] [--rounds 5]
        [--variant NAME:K=V,K=V ...] [--warmup 0.5] [--window 2] [--triton] [--json FILE]

Starts this tree's server (``new``: this interpreter, ``--env``) and the other's (``old``:
``--other-python``, e.g. a detached worktree of main with its own venv, and/or ``--other-env``, a
knob that turns a change off) at once, plus this tree's with other environment variables
(``--variant``) and Triton with ``--triton``
(``SHIPYARD_TRITON_VENV``), and then ``--rounds`` times measures every (model, c) cell on each,
the order rotating from cell to cell, so that a ratio compares measurements seconds apart on a
shared machine. Prints one line per cell, then per cell the median over rounds of each server's
p50, throughput and CPU per request (the server and its child processes, ``/proc``), and the
median of the per-round ratios new / old (and new / Triton): on a machine shared with other work
only these ratios mean something, not the single figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.common import LOOPBACK, ServerProcess
from benchmarks.loadgen import CLIENTS, LoadSpec, run_closed_loop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.py_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--other-python", default=sys.executable, help="the old build's interpreter (absolute)")
    parser.add_argument("--other-env", action="append", default=[], help="KEY=VALUE for the old server")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the new server")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME:K=V,K=V",
        help="one more server: this tree with these environment variables (repeatable)",
    )
    parser.add_argument("--models", default="mlp_py,pipeline")
    parser.add_argument("--concurrency", default="1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--triton", action="store_true", help="also Triton (SHIPYARD_TRITON_VENV)")
    parser.add_argument("--client", choices=CLIENTS, default="native")
    parser.add_argument("--json", help="write every cell here")
    args = parser.parse_args(argv)
    if not Path(args.other_python).is_absolute():
        parser.error("--other-python must be an absolute path")
    if args.other_python == sys.executable and not args.other_env:
        parser.error("the old server differs from the new one by --other-python or --other-env")
    return args


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children (a Python model's processes have
    their own process group, so not ``common.group_cpu_seconds``)."""
    from benchmarks.threads import _children

    ticks = 0
    for each in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _shipyard(name: str, python: str, env: list[str], repo: Path, work: Path) -> tuple[ServerProcess, int, int]:
    grpc_port, http_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime", "--model-repository", str(repo), "--host", LOOPBACK,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), python=python,
    )  # fmt: skip
    extra = dict(item.split("=", 1) for item in env)
    server = ServerProcess(name, argv, work / "logs" / f"{name}.log", env={"OMP_NUM_THREADS": "1", **extra})
    server.start()
    return server, grpc_port, http_port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlp = common.load_model_spec("wide_mlp")
    specs = {"mlp_py": mlp, "pipeline": python_models._pipeline_spec(mlp)}
    models = args.models.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="py_ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        repo = python_models.write_repository(work / "repo", mlp, for_triton=False)
        servers: list[tuple[ServerProcess, int]] = []
        from benchmarks.targets import http_probe

        variants = [(v.split(":", 1)[0], sys.executable, v.split(":", 1)[1].split(",")) for v in args.variant]
        builds = [("new", sys.executable, args.env), ("old", args.other_python, args.other_env), *variants]
        for name, python, env in builds:
            server, grpc_port, http_port = _shipyard(name, python, env, repo, work)
            stack.callback(server.stop)
            server.wait_ready(http_probe(http_port, "/v2/health/ready"), 180)
            servers.append((server, grpc_port))
        if args.triton:
            triton_repo = python_models.write_repository(work / "repo-triton", mlp, for_triton=True)
            triton, port = python_models._start_triton(triton_repo, work)
            stack.callback(triton.stop)
            triton.name = "triton"
            servers.append((triton, port))
        cell_number = 0
        for number in range(args.rounds):
            for model in models:
                for c in levels:
                    shift = cell_number % len(servers)
                    cell_number += 1
                    for server, port in servers[shift:] + servers[:shift]:
                        load = LoadSpec("grpc", port, common.grpc_request_bytes(specs[model], model_name=model))
                        before = _tree_cpu_s(server.pid)
                        cell = run_closed_loop(load, c, args.warmup, args.window, 2, args.client)
                        served = cell.throughput * (args.warmup + args.window)
                        cpu_us = (_tree_cpu_s(server.pid) - before) / served * 1e6 if served else 0.0
                        row = {"round": number, "server": server.name, "model": model, "c": c,
                               "throughput": cell.throughput, "p50_ms": cell.p50_ms, "p99_ms": cell.p99_ms,
                               "cpu_us": cpu_us, "errors": cell.errors}  # fmt: skip
                        rows.append(row)
                        print(f"round {number + 1} {server.name:6s} {model:9s} c={c:<3d} {cell.throughput:7.0f} inf/s"
                              f"  p50 {cell.p50_ms or 0:.2f} ms  p99 {cell.p99_ms or 0:.2f} ms  server CPU "
                              f"{cpu_us:.0f} us/req  errors {cell.errors}", flush=True)  # fmt: skip
    for line in summary(rows, [s.name for s, _ in servers]):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


def summary(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Per cell: each server's median p50 and throughput, and the medians of the per-round ratios."""
    by: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["model"], row["c"], row["server"]), {})[row["round"]] = row
    cells = sorted({(m, c) for m, c, _ in by})
    others = [n for n in names if n != "new"]
    head = " | ".join(f"{n} p50 ms | {n} inf/s | {n} CPU us/req" for n in names)
    ratios = " | ".join(f"new/{n} p50 | new/{n} inf/s | new/{n} CPU" for n in others)
    out = ["", f"| model | c | {head} | {ratios} |", "|---|---:|" + "---:|" * (3 * len(names) + 3 * len(others))]
    for model, c in cells:
        fields = []
        for name in names:
            runs = by.get((model, c, name), {}).values()
            fields += [f"{statistics.median(r['p50_ms'] or 0 for r in runs):.2f}",
                       f"{statistics.median(r['throughput'] for r in runs):,.0f}",
                       f"{statistics.median(r['cpu_us'] for r in runs):,.0f}"]  # fmt: skip
        new = by.get((model, c, "new"), {})
        for name in others:
            old = by.get((model, c, name), {})
            both = [k for k in new if k in old and old[k]["p50_ms"] and old[k]["throughput"]]
            p50 = [(new[k]["p50_ms"] or 0) / old[k]["p50_ms"] for k in both]
            thr = [new[k]["throughput"] / old[k]["throughput"] for k in both]
            cpu = [new[k]["cpu_us"] / old[k]["cpu_us"] for k in both if old[k]["cpu_us"]]
            fields += [f"{statistics.median(values):.3f}" if values else "-" for values in (p50, thr, cpu)]
        out.append(f"| {model} | {c} | " + " | ".join(fields) + " |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the ensemble's time goes: ``pipeline`` of ``benchmarks.python_models`` under one closed-loop cell.

    python -m benchmarks.ensemble_cost [--concurrency 64] [--seconds 4] [--shipyard-args "..."]

Starts shipyard on the benchmark's repository (Python ``normalize`` -> ONNX ``mlp_step`` -> Python
``topk``), loads ``pipeline`` over gRPC and reads, over the middle of the window: per-thread CPU
of the server and of each Python stub process (``/proc/<pid>/task/<tid>/schedstat``, as
``benchmarks.threads``), and each model's statistics (requests, executions, average batch, the
share of the window the model computed; for ``mlp_step``, one instance, the rest is its idle
time, shown as the average gap between batches).
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.loadgen import CLIENTS, CellResult, LoadSpec, run_closed_loop
from benchmarks.threads import _children, sample

MODELS = ("pipeline", "normalize", "mlp_step", "topk")


def _stats(http_port: int) -> dict[str, dict[str, int]]:
    """Per model: success count, execution count, inference count, compute ns over its executions."""
    with urllib.request.urlopen(f"http://{common.LOOPBACK}:{http_port}/v2/models/stats", timeout=10) as reply:
        body = json.load(reply)
    out: dict[str, dict[str, int]] = {}
    for entry in body["model_stats"]:
        if entry["name"] not in MODELS:
            continue
        inference = entry["inference_stats"]
        out[entry["name"]] = {
            "requests": int(inference["success"]["count"]),
            "executions": int(entry["execution_count"]),
            "inferences": int(entry["inference_count"]),
            "compute_ns": sum(int(b["compute_infer"]["ns"]) for b in entry["batch_stats"]),
        }
    return out


def _start(repo: Path, workdir: Path, extra: list[str]) -> tuple[common.ServerProcess, int, int]:
    from benchmarks.targets import http_probe

    grpc_port, http_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime", "--model-repository", str(repo), "--host", common.LOOPBACK,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra,
    )  # fmt: skip
    server = common.ServerProcess(
        "shipyard", argv, workdir / "logs" / "shipyard-ensemble-cost.log", env={"OMP_NUM_THREADS": "1"}
    )
    server.start()
    server.wait_ready(http_probe(http_port, "/v2/health/ready"), 180)
    return server, grpc_port, http_port


def measure(concurrency: int, seconds: float, client: str, extra: list[str], workdir: Path) -> dict[str, Any]:
    """One cell of ``pipeline`` at ``concurrency``; threads and statistics over its middle ``seconds``."""
    mlp = common.load_model_spec("wide_mlp")
    repo = python_models.write_repository(workdir / "repo", mlp, for_triton=False)
    server, grpc_port, http_port = _start(repo, workdir, extra)
    warmup_s, margin_s = 1.5, 1.0
    result: dict[str, CellResult] = {}
    try:
        payload = common.grpc_request_bytes(python_models._pipeline_spec(mlp), model_name="pipeline")
        load = LoadSpec("grpc", grpc_port, payload)

        def run() -> None:
            result["cell"] = run_closed_loop(load, concurrency, warmup_s, seconds + 2 * margin_s, 2, client)

        loader = threading.Thread(target=run)
        loader.start()
        time.sleep(warmup_s + margin_s + 1.0)
        pids = [server.pid, *_children(server.pid)]
        before, stats0, t0 = sample(pids), _stats(http_port), time.monotonic()
        time.sleep(seconds)
        after, stats1, elapsed = sample(pids), _stats(http_port), time.monotonic() - t0
        loader.join()
    finally:
        server.stop()
    threads = []
    for key, (name, on_cpu, waiting, _) in after.items():
        if key in before:
            _, on0, wait0, _ = before[key]
            role = "server" if key[0] == server.pid else f"child {key[0]}"
            name = f"{name} (main)" if key[0] == key[1] else name
            threads.append((role, name, key[1], (on_cpu - on0) / 1e9 / elapsed, (waiting - wait0) / 1e9 / elapsed))
    models = {}
    for name in MODELS:
        a, b = stats0.get(name), stats1.get(name)
        if a is None or b is None:
            continue
        delta = {k: b[k] - a[k] for k in a}
        executions = max(delta["executions"], 1)
        models[name] = {
            **delta,
            "avg_batch": delta["inferences"] / executions,
            "busy_share": delta["compute_ns"] / 1e9 / elapsed,
            "gap_ms": max(elapsed * 1e9 - delta["compute_ns"], 0) / executions / 1e6,
        }
    return {"cell": result["cell"], "threads": threads, "models": models, "elapsed": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ensemble_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--client", default="native", choices=CLIENTS)
    parser.add_argument("--shipyard-args", default="", help='more flags for the server, e.g. "--no-grpc-fast-path"')
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-ensemble-cost-"))
    out = measure(args.concurrency, args.seconds, args.client, shlex.split(args.shipyard_args), workdir)
    cell: CellResult = out["cell"]
    rate = cell.throughput
    print(f"pipeline c={args.concurrency}: {rate:,.0f} inf/s, p50 {cell.p50_ms or 0:.2f} ms, errors {cell.errors}")
    print(f"{'process':12s} {'thread':18s} {'on CPU':>7s} {'waiting':>8s} {'µs/req':>7s}")
    totals: dict[str, float] = {}
    for role, name, _tid, cpu, wait in sorted(out["threads"], key=lambda t: -t[3]):
        totals[role] = totals.get(role, 0.0) + cpu
        if cpu >= 0.005:
            print(f"{role:12s} {name[:18]:18s} {cpu * 100:6.1f}% {wait * 100:7.1f}% {cpu / max(rate, 1) * 1e6:7.1f}")
    for role, cpu in totals.items():
        print(f"{role:12s} total {cpu * 100:.0f}% of one CPU, {cpu / max(rate, 1) * 1e6:.0f} µs per request")
    everything = sum(totals.values())
    print(f"server and stubs: {everything * 100:.0f}% of one CPU, {everything / max(rate, 1) * 1e6:.0f} µs per request")
    for name, m in out["models"].items():
        print(
            f"{name:9s} requests {m['requests']:6d} executions {m['executions']:5d} avg batch {m['avg_batch']:5.1f} "
            f"computing {m['busy_share'] * 100:5.1f}% of the window, {m['gap_ms']:.2f} ms between batches"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

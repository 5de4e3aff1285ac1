"""Where a Python model's process spends its time under load, in shipyard and in the real Triton server.

    python -m benchmarks.stub_profile [--servers triton,shipyard] [--model mlp_py|pipeline]
                                      [--concurrency 64] [--seconds 8] [--py-spy PATH] [--out DIR]

Serves ``benchmarks.python_models``' repository on each server in turn and loads ``--model`` with the
C++ closed-loop client: ``mlp_py`` (the same ``model.py`` in both: the wide MLP through ONNX Runtime,
one thread) or the ``pipeline`` ensemble (whose MLP step is ``mlp_step``). Two figures per server:

- **compute busy**: the MLP model's ``compute_infer`` time per execution (``batch_stats``) from the
  server's own statistics, as a share of the load's wall time, client start-up included (so a low
  estimate; one instance: 100% means it never waits for work);
- with py-spy (``pip install py-spy``; ``--no-spy`` skips it): every Python-model process of the
  server is sampled for the middle of the window; the busiest one (the MLP's, for ``mlp_py``) gives
  the share of the window it was active (running or runnable: py-spy's non-idle samples) and, of that,
  the share inside ONNX Runtime's ``Session.run`` and the top other frames.

When the MLP's instance computes most of the window in both servers, the throughput ratio between
them is bounded by their batch sizes and the compute itself, not by what either server does around
``execute`` (issue 15's ceiling argument, measured on the served process instead of estimated
in-process).

Writes ``stub_profile.json`` and ``stub_profile.md`` under ``--out`` (default: a temporary
directory, printed). Linux only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import common, python_models, score_profile
from benchmarks.loadgen import LoadSpec, run_closed_loop

RUN_FRAME = "Session.run"


def fold(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> samples, the share in ``Session.run`` and the top other leaves."""
    total = in_run = 0
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        if any(frame.startswith(RUN_FRAME + " ") for frame in frames):
            in_run += samples
        else:
            leaves[frames[-1]] += samples
    return {
        "samples": total,
        "in_run": in_run,
        "other": [(frame, samples) for frame, samples in leaves.most_common(8)],
    }


def compute_ns(port: int, name: str) -> tuple[int, int, int] | None:
    """(compute_infer ns, rows, executions) of ``name`` so far, from its statistics' ``batch_stats`` (per
    execution: ``inference_stats`` adds a batch's time once per request in it); None without statistics."""
    try:
        batches = score_profile._stats(port, name)["batches"]
    except Exception:  # a diagnostic column: a server without statistics still reports the rest
        return None
    compute = sum(ns for _, ns in batches.values())
    rows = sum(size * count for size, (count, _) in batches.items())
    return compute, rows, sum(count for count, _ in batches.values())


def spy_argv(spy: str, rate: int, seconds: int, output: Path, pid: int) -> list[str]:
    """py-spy sampling ``pid`` without pausing it (``--nonblocking``), raw collapsed stacks to ``output``."""
    return [spy, "record", "--nonblocking", "--rate", str(rate), "--duration", str(seconds), "--format", "raw",
            "--output", str(output), "--pid", str(pid)]  # fmt: skip


def profile_server(name: str, spy: str | None, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start ``name`` (triton or shipyard), load ``args.model``, read its MLP's compute time and sample
    its Python-model processes."""
    mlp = common.load_model_spec("wide_mlp")
    repo = python_models.write_repository(workdir / f"repo-{name}", mlp, for_triton=name == "triton")
    start = python_models._start_triton if name == "triton" else python_models._start_shipyard
    step = "mlp_step" if args.model == "pipeline" else "mlp_py"
    spec = python_models._pipeline_spec(mlp) if args.model == "pipeline" else mlp
    server, port = start(repo, workdir)
    try:
        load = LoadSpec("grpc", port, common.grpc_request_bytes(spec, model_name=args.model))
        run_closed_loop(load, args.concurrency, 1.0, 2.0, 2, args.client)  # warm-up
        stubs = score_profile._children(server.pid) if spy else []  # the model processes (and theirs)
        spy_seconds = max(1, int(args.seconds) - 1)
        recorders = [
            subprocess.Popen(
                spy_argv(spy, args.rate, spy_seconds, workdir / f"{name}-{pid}.txt", pid),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in stubs
            if spy is not None
        ]
        before, started = compute_ns(port, step), time.monotonic()
        cell = run_closed_loop(load, args.concurrency, 0.5, float(args.seconds), 2, args.client)
        after, wall = compute_ns(port, step), time.monotonic() - started
        for recorder in recorders:
            recorder.wait(timeout=60)
    finally:
        server.stop()
    row: dict[str, Any] = {"throughput": cell.throughput, "p50_ms": cell.p50_ms, "step": step}
    if before is not None and after is not None and after[2] > before[2]:
        row["avg_batch"] = (after[1] - before[1]) / (after[2] - before[2])
        row["compute_busy"] = (after[0] - before[0]) / (wall * 1e9)
    folded = {pid: fold(p.read_text()) for pid in stubs if (p := workdir / f"{name}-{pid}.txt").exists()}
    if spy and not folded:
        raise RuntimeError(f"py-spy recorded no Python-model process of {name} (is ptrace allowed here?)")
    if folded:
        pid, busiest = max(folded.items(), key=lambda item: item[1]["samples"])
        row |= {
            "pid": pid,
            "active": busiest["samples"] / (args.rate * spy_seconds),
            "in_run_of_active": busiest["in_run"] / max(1, busiest["samples"]),
            "other": busiest["other"],
        }
    return row


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    spied = "" if args.no_spy else f"; the busiest Python-model process sampled by py-spy at {args.rate} Hz"
    lines = [
        f"`{args.model}` at c={args.concurrency} (gRPC, {args.client} client, {args.seconds:g} s window{spied}):",
        "",
        "| server | inf/s | MLP model | avg batch | MLP compute busy | process active | of which `Session.run` | "
        "top other frames |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]

    def share(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.0%}" if key in row else "-"

    for name, row in results.items():
        other = "; ".join(f"{frame} {samples}" for frame, samples in row.get("other", [])[:3])
        batch = f"{row['avg_batch']:.1f}" if "avg_batch" in row else "-"
        lines.append(
            f"| {name} | {row['throughput']:,.0f} | {row['step']} | {batch} | {share(row, 'compute_busy')} | "
            f"{share(row, 'active')} | {share(row, 'in_run_of_active')} | {other} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stub_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="triton,shipyard")
    parser.add_argument("--model", default="mlp_py", choices=("mlp_py", "pipeline"))
    parser.add_argument("--no-spy", action="store_true", help="statistics only, no py-spy")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--client", default="native", choices=("native", "python"))
    parser.add_argument("--py-spy", default=None, help="the py-spy binary (default: py-spy on PATH)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spy = None if args.no_spy else args.py_spy or shutil.which("py-spy")
    if spy is None and not args.no_spy:
        print("py-spy is not installed: `pip install py-spy`, pass --py-spy PATH, or run with --no-spy")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-stub-profile-"))
    out = args.out or workdir
    print(f"stub profile: work dir {workdir}", flush=True)
    results = {}
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        results[name] = profile_server(name, spy, args, workdir)
        print(f"  {name}: {results[name]['throughput']:,.0f} inf/s", flush=True)
    table = report(results, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stub_profile.json").write_text(json.dumps(results, indent=2))
    (out / "stub_profile.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

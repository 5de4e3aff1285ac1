"""Python models and ensembles, shipyard beside the real Triton server (issue 15's targets).

    python -m benchmarks.python_models [--quick] [--client native|python] [--out DIR]

One repository, served by both servers (`make triton-env` installs Triton 2.51 from the
nvidia-pytriton wheel):

- ``mlp_py``: the SAME ``model.py`` in both (examples/python_models/onnx_runtime_model.py): a
  Python model running the wide MLP (512->2048x3->512) with ONNX Runtime (one thread), one run
  per ``execute`` over every request the dynamic batcher gave it (max_batch_size 128);
- ``pipeline``: a 3-step ensemble, Python ``normalize`` -> the wide MLP -> Python ``topk``. The
  MLP step is shipyard's onnxruntime backend in shipyard and, as the Triton wheel carries no ONNX
  Runtime backend, the same ONNX file behind the Python model above in Triton;
- ``crashy``: a Python model that kills its own process (``os._exit``) when x[0] > 0.

Rows: throughput and p50/p99 at c=1/16/64 over gRPC (single-item requests, closed loop), the
shipyard/Triton ratio and the issue's target (>= 1.5x at c=16 and 64 for ``mlp_py``, p50 at c=1 no
worse; >= 1.5x at c=64 for ``pipeline``); then the isolation row: ``mlp_py`` under c=16 load
while ``crashy`` is crashed 20 times, failed ``mlp_py`` requests counted (target 0).

Both servers run at once and each cell is measured on one, then at once on the other (the order
alternating from cell to cell), so a ratio compares the same minutes of a shared machine's load:
ONNX Runtime's own run of the MLP drifts by up to 2x between minutes there (docs/serving.md,
"The c=1 gap, measured from inside the model").

Writes ``python_models.json`` and ``python_models.md`` under ``--out`` (benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import LOOPBACK, ModelSpec, ServerProcess, TensorSpec
from benchmarks.loadgen import CLIENTS, CellResult, LoadSpec, run_closed_loop
from benchmarks.report import update_readme

HERE = Path(__file__).resolve().parent
ORT_MODEL_PY = common.REPO_ROOT / "examples" / "python_models" / "onnx_runtime_model.py"
CONCURRENCY = (1, 16, 64)
CRASHES = 20
MAX_BATCH = 128
DEFAULT_OUT = HERE / "results"

_THREADS = (
    'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
)


def _io(name: str, datatype: str, dims: tuple[int, ...]) -> str:
    return f'{{ name: "{name}" data_type: TYPE_{datatype} dims: [ {", ".join(map(str, dims))} ] }}'


def _config(backend: str, inputs: list[str], outputs: list[str], max_batch: int = MAX_BATCH) -> str:
    scheduling = "dynamic_batching { }\n" if max_batch else ""
    return (
        f'backend: "{backend}"\nmax_batch_size: {max_batch}\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + scheduling + _THREADS
    )


def write_repository(root: Path, mlp: ModelSpec, for_triton: bool) -> Path:
    """The benchmark's repository (see the module docstring); ``for_triton``: the ensemble's MLP
    step through the Python model (Triton's wheel has no ONNX Runtime backend)."""
    if root.exists():
        shutil.rmtree(root)
    vec_in, vec_out = _io("input", "FP32", (512,)), _io("output", "FP32", (512,))

    def model(name: str, config: str, files: dict[str, Path]) -> None:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        for filename, source in files.items():
            shutil.copyfile(source, root / name / "1" / filename)

    ort_files = {"model.py": ORT_MODEL_PY, "model.onnx": mlp.onnx_path}
    model("mlp_py", _config("python", [vec_in], [vec_out]), ort_files)
    if for_triton:
        model("mlp_step", _config("python", [vec_in], [vec_out]), ort_files)
    else:
        model("mlp_step", _config("onnxruntime", [vec_in], [vec_out]), {"model.onnx": mlp.onnx_path})
    model(
        "normalize",
        _config("python", [vec_in], [_io("normalized", "FP32", (512,))]),
        {"model.py": HERE / "pymodels" / "normalize" / "model.py"},
    )
    model(
        "topk",
        _config("python", [vec_out], [_io("top", "INT64", (5,))]),
        {"model.py": HERE / "pymodels" / "topk" / "model.py"},
    )
    model(
        "crashy",
        _config("python", [_io("x", "FP32", (1,))], [_io("y", "FP32", (1,))], max_batch=0),
        {"model.py": HERE / "pymodels" / "crashy" / "model.py"},
    )
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(
        f'platform: "ensemble"\nmax_batch_size: {MAX_BATCH}\n'
        f"input [ {vec_in} ]\noutput [ {_io('top', 'INT64', (5,))} ]\n"
        "ensemble_scheduling { step [\n"
        '  { model_name: "normalize" model_version: -1 input_map { key: "input" value: "input" }\n'
        '    output_map { key: "normalized" value: "x" } },\n'
        '  { model_name: "mlp_step" model_version: -1 input_map { key: "input" value: "x" }\n'
        '    output_map { key: "output" value: "y" } },\n'
        '  { model_name: "topk" model_version: -1 input_map { key: "output" value: "y" }\n'
        '    output_map { key: "top" value: "top" } }\n'
        "] }\n"
    )
    return root


def _pipeline_spec(mlp: ModelSpec) -> ModelSpec:
    return ModelSpec("pipeline", mlp.onnx_path, mlp.inputs, (TensorSpec("top", "INT64", (5,)),))


SHIPYARD_ARGS: list[str] = []  # --shipyard-args (e.g. "--no-grpc-fast-path" for an A/B)


def _start_shipyard(repo: Path, workdir: Path) -> tuple[ServerProcess, int]:
    grpc_port, http_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime",
        "--model-repository",
        str(repo),
        "--host",
        LOOPBACK,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *SHIPYARD_ARGS,
    )
    server = ServerProcess("shipyard", argv, workdir / "logs" / "shipyard-python.log", env={"OMP_NUM_THREADS": "1"})
    server.start()
    from benchmarks.targets import http_probe

    server.wait_ready(http_probe(http_port, "/v2/health/ready"), 180)
    return server, grpc_port


def _start_triton(repo: Path, workdir: Path) -> tuple[ServerProcess, int]:
    from benchmarks.servers.triton import start_triton

    server = start_triton([repo], workdir / "logs" / "tritonserver-python.log", timeout_s=180)
    return server.process, server.grpc_port


def _crash_loop(port: int, count: int, results: dict[str, Any]) -> None:
    """Send ``count`` crashing requests to ``crashy`` one after another (each fails); count them."""
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="crashy")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\x00\x00\x80\x3f")  # 1.0f: crash
    payload = request.SerializeToString()
    sent = failed = 0
    errors: list[str] = []
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        call = channel.unary_unary(common.GRPC_INFER_METHOD)
        for _ in range(count):
            sent += 1
            try:
                call(payload, timeout=60)
            except grpc.RpcError as exc:
                failed += 1
                errors.append(f"{exc.code().name}: {exc.details()}"[:200])  # type: ignore[attr-defined]
            time.sleep(0.05)
    results.update(sent=sent, failed=failed, errors=sorted(set(errors)))


def _batch_counts(port: int, name: str) -> tuple[int, int] | None:
    """(inference_count, execution_count) of ``name`` from the server's statistics, None if unavailable."""
    try:
        from tritonclient.grpc import InferenceServerClient

        client = InferenceServerClient(f"{LOOPBACK}:{port}")
        try:
            stats = client.get_inference_statistics(model_name=name, as_json=True)
        finally:
            client.close()
        entry = stats["model_stats"][0]
        return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))
    except Exception:  # statistics are a diagnostic column: a server without them still reports
        return None


def _average_batch(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def compute_ceiling(mlp: ModelSpec, concurrency: list[int], seconds: float) -> dict[str, float]:
    """The wide MLP's one-thread ONNX Runtime session alone (``benchmarks.inprocess``, its own process)
    at batch 1 and at c/2 and c for every c: the most one instance can compute. Under a closed loop of c
    callers and one instance, batches alternate between the callers waiting and those in flight, so c/2
    is the batch a perfect scheduler sustains; c is the bound if answers took no time at all."""
    batches = sorted({1, *(max(1, c // 2) for c in concurrency), *concurrency})
    argv = [sys.executable, "-m", "benchmarks.inprocess", "--onnx", str(mlp.onnx_path)]
    argv += ["--batches", ",".join(map(str, batches)), "--seconds", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=common.REPO_ROOT, timeout=600)
    sweep: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])["sweep"]
    return sweep


def _measure_cell(
    server: ServerProcess, port: int, name: str, spec: ModelSpec, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One closed-loop cell of ``name`` at ``concurrency``, with the average batch of its (MLP) model."""
    load = LoadSpec("grpc", port, common.grpc_request_bytes(spec, model_name=name))
    step = "mlp_step" if name == "pipeline" else name  # the ensemble's batches: its MLP step's
    before = _batch_counts(port, step)
    cell = run_closed_loop(load, concurrency, args.warmup, args.window, args.client_procs, args.client)
    print(
        f"  {server.name:12s} {name:9s} c={concurrency:<3d} {cell.throughput:8.0f} inf/s  "
        f"p50 {cell.p50_ms or 0:.2f} ms  p99 {cell.p99_ms or 0:.2f} ms  errors {cell.errors}",
        flush=True,
    )
    return asdict(cell) | {"avg_batch": _average_batch(before, _batch_counts(port, step))}


def _crash_scenario(server: ServerProcess, port: int, mlp: ModelSpec, args: argparse.Namespace) -> dict[str, Any]:
    """``mlp_py`` at c=16 while ``crashy`` is crashed ``args.crashes`` times."""
    crash: dict[str, Any] = {}
    crasher = threading.Thread(target=_crash_loop, args=(port, args.crashes, crash), daemon=True)
    load = LoadSpec("grpc", port, common.grpc_request_bytes(mlp, model_name="mlp_py"))
    crasher.start()
    cell = run_closed_loop(load, 16, 0.2, args.crash_window, args.client_procs, args.client)
    crasher.join(timeout=120)
    print(
        f"  {server.name:12s} crash x{crash.get('sent', 0)}: mlp_py {cell.throughput:.0f} inf/s, "
        f"{cell.errors} failed requests",
        flush=True,
    )
    return {"mlp_py_c16": asdict(cell), "crashy": crash}


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def measure_servers(
    starters: dict[str, Callable[[Path, Path], tuple[ServerProcess, int]]],
    repos: dict[str, Path],
    workdir: Path,
    mlp: ModelSpec,
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Start every server, then measure each cell on all of them back to back (the order alternating
    from cell to cell), so that each ratio compares the same minutes of a shared machine's load; then
    the crash scenario on each. Returns the cells per server and the servers that failed, with why."""
    running: dict[str, tuple[ServerProcess, int]] = {}
    errors: dict[str, str] = {}
    cells: dict[str, dict[str, Any]] = {}
    try:
        for name, start in starters.items():
            try:
                running[name] = start(repos[name], workdir)
                cells[name] = {}
            except Exception as exc:  # one server failing still reports the other
                errors[name] = _first_line(exc)
                print(f"  {name}: FAILED: {errors[name]}", flush=True)
        number = 0
        for model, spec in (("mlp_py", mlp), ("pipeline", _pipeline_spec(mlp))):
            for concurrency in args.concurrency:
                order = [name for name in running if name not in errors]
                for name in order if number % 2 == 0 else order[::-1]:
                    server, port = running[name]
                    try:
                        cells[name][f"{model}/c{concurrency}"] = _measure_cell(
                            server, port, model, spec, concurrency, args
                        )
                    except Exception as exc:
                        errors[name] = _first_line(exc)
                        print(f"  {name}: FAILED: {errors[name]}", flush=True)
                number += 1
        for name, (server, port) in running.items():
            if name not in errors:
                cells[name]["crash"] = _crash_scenario(server, port, mlp, args)
    finally:
        for server, _ in running.values():
            server.stop()
    return cells, errors


def _cell(cells: dict[str, Any], key: str) -> CellResult | None:
    data = cells.get(key)
    return CellResult(**{k: v for k, v in data.items() if k != "avg_batch"}) if data else None


def _batch(cells: dict[str, Any], key: str) -> str:
    value = cells.get(key, {}).get("avg_batch")
    return f"{value:.1f}" if value else "-"


def ceiling_lines(results: dict[str, Any], concurrency: list[int]) -> list[str]:
    """The one-instance compute ceiling of ``mlp_py`` per c, and what it allows against Triton."""
    sweep = results.get("ceiling")
    t, s = results["servers"].get("triton", {}), results["servers"].get("shipyard", {})
    if not sweep:
        return []
    lines = [
        "",
        "One-instance compute ceiling of `mlp_py` (`python -m benchmarks.inprocess`: the same ONNX file, one"
        " intra-op thread, no server): both servers run one instance of this session, so no server can pass"
        " these rows. The last column is the share of the c/2 ceiling that 1.5x Triton's rate would take (100%"
        " or more: out of reach for a server with no queue delay).",
        "",
        "| c | ceiling at batch c/2, inf/s | at batch c | Triton inf/s | ceiling (c/2) / Triton"
        " | shipyard / ceiling (c/2) | 1.5x Triton / ceiling (c/2) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrency:
        half, full = sweep.get(str(max(1, c // 2))), sweep.get(str(c))
        a, b = _cell(t, f"mlp_py/c{c}"), _cell(s, f"mlp_py/c{c}")
        if half is None or full is None:
            continue
        ratio = f"{half / a.throughput:.2f}x" if a and a.throughput else "-"
        triton = f"{a.throughput:,.0f}" if a else "-"
        ours = f"{b.throughput / half:.0%}" if b and half else "-"
        needed = f"{1.5 * a.throughput / half:.0%}" if a and half else "-"
        lines.append(f"| {c} | {half:,.0f} | {full:,.0f} | {triton} | {ratio} | {ours} | {needed} |")
    return lines


def report(results: dict[str, Any], concurrency: list[int]) -> str:
    """The markdown rows: shipyard beside Triton, the ratio, and whether the issue's target is met."""
    s, t = results["servers"].get("shipyard", {}), results["servers"].get("triton", {})
    lines = [
        "| model | c | Triton inf/s | shipyard inf/s | ratio | Triton p50 ms | shipyard p50 ms | avg batch T / s"
        " | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in ("mlp_py", "pipeline"):
        for c in concurrency:
            a, b = _cell(t, f"{name}/c{c}"), _cell(s, f"{name}/c{c}")
            if a is None or b is None:
                continue
            ratio = b.throughput / a.throughput if a.throughput else float("inf")
            target, met = "", ""
            if (name == "mlp_py" and c in (16, 64)) or (name == "pipeline" and c == 64):
                target, met = ">= 1.5x", "yes" if ratio >= 1.5 else "NO"
            elif name == "mlp_py" and c == 1:
                target = "p50 no worse"
                met = "yes" if (b.p50_ms or 0) <= (a.p50_ms or 0) else "NO"
            lines.append(
                f"| {name} | {c} | {a.throughput:,.0f} | {b.throughput:,.0f} | {ratio:.2f}x | "
                f"{a.p50_ms or 0:.2f} | {b.p50_ms or 0:.2f} | {_batch(t, f'{name}/c{c}')} / "
                f"{_batch(s, f'{name}/c{c}')} | {target} | {met} |"
            )
    lines += ceiling_lines(results, concurrency)
    for server_name, cells in (("Triton", t), ("shipyard", s)):
        crash = cells.get("crash")
        if crash:
            failed = crash["mlp_py_c16"]["errors"]
            victim = crash["crashy"]
            lines.append(
                f"\n{server_name}: `crashy` sent {victim.get('sent', 0)} crashing requests ({victim.get('failed', 0)} "
                f"failed, as they should: {'; '.join(victim.get('errors', []))[:300]}) while `mlp_py` served c=16: "
                f"{failed} failed `mlp_py` requests (target 0: {'met' if failed == 0 else 'NOT met'})"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.python_models", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (checks that it works)")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell (default 1.5; quick 0.3)")
    parser.add_argument("--window", type=float, help="seconds measured per cell (default 4; quick 1)")
    parser.add_argument("--crash-window", type=float, help="seconds of the crash scenario (default 8; quick 4)")
    parser.add_argument("--crashes", type=int, default=CRASHES)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client", choices=CLIENTS, default="native")
    parser.add_argument("--servers", default="triton,shipyard", help="comma-separated: triton, shipyard")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-readme", action="store_true", help="leave README.md's table alone")
    parser.add_argument(
        "--ceiling-seconds", type=float, default=1.0, help="seconds per batch size of the compute ceiling (0: skip)"
    )
    parser.add_argument(
        "--shipyard-args", default="", help='more flags for shipyard\'s server, e.g. "--no-grpc-fast-path"'
    )
    args = parser.parse_args(argv)
    SHIPYARD_ARGS[:] = shlex.split(args.shipyard_args)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.5)
    args.window = args.window if args.window is not None else (1.0 if args.quick else 4.0)
    args.crash_window = args.crash_window if args.crash_window is not None else (4.0 if args.quick else 8.0)
    args.servers = [s for s in args.servers.split(",") if s]
    if args.client == "native":
        from benchmarks import native_client

        if native_client.unavailable_reason() is not None:
            args.client = "python"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlp = common.load_model_spec("wide_mlp")
    # the servers' repositories and logs: outside the source tree (under benchmarks/, mypy and ruff would
    # read the generated model.py files), as benchmarks.run's work directory
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-python-models-"))
    results: dict[str, Any] = {"servers": {}, "errors": {}, "client": args.client}
    starters = {"triton": _start_triton, "shipyard": _start_shipyard}
    print(f"Python models and ensembles: servers {args.servers}, c={args.concurrency}, client {args.client}; "
          f"work dir {workdir}")  # fmt: skip
    repos = {
        name: write_repository(workdir / f"repo-{name}", mlp, for_triton=name == "triton") for name in args.servers
    }
    chosen: dict[str, Callable[[Path, Path], tuple[ServerProcess, int]]] = {n: starters[n] for n in args.servers}
    results["servers"], results["errors"] = measure_servers(chosen, repos, workdir, mlp, args)
    if args.ceiling_seconds > 0:
        results["ceiling"] = compute_ceiling(mlp, args.concurrency, args.ceiling_seconds)
    table = report(results, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "python_models.json").write_text(json.dumps(results, indent=2))
    (args.out / "python_models.md").write_text(table)
    print(table)
    if not args.no_readme and args.out.resolve() == DEFAULT_OUT.resolve():
        update_readme(common.REPO_ROOT / "README.md", readme_block(table, argv), README_MARKERS)
    return 1 if results["errors"] else 0


# The README's copy of the table, rewritten by each run into benchmarks/results (``make bench``).
README_MARKERS = ("<!-- bench:python-models:start -->", "<!-- bench:python-models:end -->")


def readme_block(table: str, argv: list[str] | None) -> str:
    """The table with the run's time, commit and command above it."""
    commit = common.git_commit()
    command = " ".join(["python -m benchmarks.python_models", *(sys.argv[1:] if argv is None else argv)])
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"Run {when}, commit `{commit}`; command `{command.strip()}`.\n\n{table}"


if __name__ == "__main__":
    raise SystemExit(main())

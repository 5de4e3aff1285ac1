"""GPU serving benchmark (issue 7): what shipyard keeps of the GPU's in-process limit.

    python -m benchmarks.gpu [--backend onnxruntime|tensorrt] [--models resnet224,wide_mlp]
                             [--concurrency 1,16,64,128,256] [--instances 2] [--quick] [--out DIR]

For each model (``resnet224``: the zoo's ResNet-style CNN exported at 3x224x224; ``wide_mlp``):

1. the in-process limit: the shipyard backend instance alone on GPU 0 (no server, no
   serialization), swept over batch sizes 1..max; its best batch, and its single-item latency;
2. shipyard over gRPC (``python -m shipyard.serving_runtime``, dynamic batching, ``--instances``
   KIND_GPU instances on GPU 0) at each concurrency, closed loop with pre-serialized requests
   (``benchmarks.loadgen``): throughput, p50/p99, mean GPU utilization (NVML) during the window,
   and the ratio to the in-process limit;
3. both models at once, each at the highest concurrency: throughput of each and GPU utilization.

Writes ``gpu-latest.json`` and ``gpu-latest.md`` to ``--out`` (default ``benchmarks/results``)
and prints the markdown, with issue 7's targets checked (served >= 0.9x the in-process limit at
high concurrency; two models keep the GPU >= 90% busy; c=1 latency within 1 ms of the in-process
single-item latency).

Exit codes: 0 measured; 1 a part failed (the report says which); 2 nothing could run here (no
GPU, or the backend's GPU libraries are missing: the message says what to install).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.common import ModelSpec, TensorSpec

MODELS = ("resnet224", "wide_mlp")
CONCURRENCY = (1, 16, 64, 128, 256)
MAX_BATCH = 256
DEFAULT_OUT = common.REPO_ROOT / "benchmarks" / "results"
NO_GPU_EXIT = 2

# Issue 7's targets.
SERVED_VS_LIMIT = 0.9
TWO_MODEL_UTILIZATION = 0.9
C1_LATENCY_SLACK_MS = 1.0


class Unavailable(RuntimeError):
    """The benchmark cannot run on this machine; the message says why and what to install."""


# ------------------------------------------------------------------------------------------ preflight


def preflight(backend: str) -> str:
    """A one-line description of the GPU this will measure.

    Raises: Unavailable when there is no GPU or the backend's GPU libraries are missing.
    """
    from shipyard.serving_runtime.devices import gpu_count

    if gpu_count() == 0:
        raise Unavailable(
            "no CUDA GPU is visible (NVML finds none, or CUDA_VISIBLE_DEVICES hides them): "
            "benchmarks.gpu measures the GPU path and needs a GPU machine; nothing was measured"
        )
    if backend == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise Unavailable(
                f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider; pip install onnxruntime-gpu "
                "(shipyard[gpu]) or run with --backend tensorrt"
            )
    elif backend == "tensorrt":
        import importlib.util

        missing = [m for m in ("tensorrt", "cuda") if importlib.util.find_spec(m) is None]
        if missing:
            raise Unavailable(f"--backend tensorrt needs {missing} (pip install tensorrt cuda-python: shipyard[gpu])")
    else:
        raise Unavailable(f"unknown backend {backend!r}; choose onnxruntime or tensorrt")
    from shipyard.components.optimize.tensorrt_build import gpu_description

    return gpu_description(0)


# ------------------------------------------------------------------------------------------ models


def resnet224_onnx(max_batch: int = MAX_BATCH) -> Path:
    """The zoo's ResNet-style CNN (global pooling: any input size) exported at 3x224x224, cached."""
    from shipyard.zoo import cache_dir, torch_model
    from shipyard.zoo.torch_models import export_onnx

    path = cache_dir() / f"resnet_cnn224-v1-b{max_batch}.onnx"
    if path.exists():
        return path
    sample = {"input": np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    export_onnx(torch_model("resnet_cnn"), sample, str(tmp), max_batch=max_batch)
    os.replace(tmp, path)
    return path


def model_spec(name: str) -> ModelSpec:
    """A benchmark model: ``resnet224`` or a zoo name (e.g. ``wide_mlp``).

    Raises: ValueError for an unknown name.
    """
    if name != "resnet224":
        return common.load_model_spec(name)
    return ModelSpec(
        name,
        resnet224_onnx(),
        (TensorSpec("input", "FP32", (3, 224, 224)),),
        (TensorSpec("logits", "FP32", (10,)),),
    )


def model_file(model: ModelSpec, backend: str, workdir: Path, max_batch: int) -> Path:
    """The file the backend serves: the ONNX itself, or a TensorRT FP16 engine built from it (cached in workdir)."""
    if backend == "onnxruntime":
        return model.onnx_path
    from shipyard.components.optimize.tensorrt_build import build_tensorrt_engine

    plan = workdir / "engines" / model.name / "model.plan"
    if not plan.exists():
        log(f"building the TensorRT FP16 engine for {model.name} (batch 1..{max_batch})")
        build_tensorrt_engine(model.onnx_path, plan, precision="fp16", max_batch_size=max_batch, opt_batch_size=64)
    return plan


# ------------------------------------------------------------------------------------------ GPU utilization


class GpuUtilization:
    """NVML utilization of GPU ``index`` sampled every ``interval_s`` between ``start`` and ``stop``."""

    def __init__(self, index: int = 0, interval_s: float = 0.1) -> None:
        self.index = index
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                except Exception:
                    continue

        self._thread = threading.Thread(target=run, name="gpu-utilization", daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Stop sampling; the mean utilization (0..1), or None without samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            import pynvml

            pynvml.nvmlShutdown()
        except Exception:
            pass
        return float(np.mean(self.samples)) if self.samples else None


# ------------------------------------------------------------------------------------------ in-process limit


def _settings(backend: str, model: ModelSpec, device: str = "gpu") -> Any:
    from shipyard.serving_runtime.backends.base import Device, InstanceSettings
    from shipyard.serving_runtime.backends.base import TensorSpec as RuntimeSpec

    return InstanceSettings(
        device=Device(device, 0),
        max_batch_size=MAX_BATCH,
        inputs=tuple(RuntimeSpec(t.name, t.datatype, t.dims) for t in model.inputs),
        outputs=tuple(RuntimeSpec(t.name, t.datatype, t.dims) for t in model.outputs),
    )


def measure_inprocess(
    model: ModelSpec, path: Path, backend: str, batches: Sequence[int], seconds: float, device: str = "gpu"
) -> dict:
    """Inferences/s of one shipyard backend instance on GPU 0 per batch size (outputs copied to the
    host, as the server does), the best batch, single-item latency, and GPU utilization at the best.
    (``device="cpu"`` exists for the harness's own tests; utilization is then None.)"""
    from shipyard.serving_runtime.backends.registry import get_backend

    instance = get_backend(backend).load(path, _settings(backend, model, device))
    try:
        full = model.example_inputs(max(batches))
        sweep: dict[str, float] = {}
        for batch in batches:
            feed = {name: array[:batch] for name, array in full.items()}
            for _ in range(3):
                instance.execute(feed, ())
            runs, start = 0, time.perf_counter()
            while runs < 5 or time.perf_counter() - start < seconds:
                instance.execute(feed, ())
                runs += 1
            sweep[str(batch)] = batch * runs / (time.perf_counter() - start)
        best = max(sweep, key=lambda b: sweep[b])
        one = {name: array[:1] for name, array in full.items()}
        latencies = []
        for _ in range(200):
            t0 = time.perf_counter()
            instance.execute(one, ())
            latencies.append((time.perf_counter() - t0) * 1000)
        feed = {name: array[: int(best)] for name, array in full.items()}
        sampler = GpuUtilization() if device == "gpu" else None
        if sampler is not None:
            sampler.start()
        stop_at = time.perf_counter() + max(seconds, 1.0)
        while time.perf_counter() < stop_at:
            instance.execute(feed, ())
        utilization = sampler.stop() if sampler is not None else None
    finally:
        instance.close()
    return {
        "sweep": sweep,
        "best_batch": int(best),
        "best": sweep[best],
        "batch1": sweep.get("1"),
        "single_item_p50_ms": float(np.percentile(latencies, 50)),
        "gpu_utilization_at_best": utilization,
    }


def inprocess_subprocess(model: str, path: Path, backend: str, batches: Sequence[int], seconds: float) -> dict:
    """``measure_inprocess`` in its own process, so its GPU memory is gone before the server starts.

    Raises: RuntimeError with the subprocess's error output when it fails.
    """
    argv = common.python_module_argv(
        "benchmarks.gpu", "--inprocess", model, "--model-file", str(path), "--backend", backend,
        "--batches", ",".join(map(str, batches)), "--seconds", str(seconds),
    )  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=common.REPO_ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"in-process measurement of {model} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------ served


def shipyard_gpu_config(model: ModelSpec, backend: str, instances: int, max_batch: int) -> str:
    """config.pbtxt for the served model: dynamic batching, ``instances`` KIND_GPU instances on GPU 0."""

    def tensors(kind: str, specs: Sequence[TensorSpec]) -> str:
        items = ",\n".join(
            f'  {{ name: "{t.name}" data_type: TYPE_{t.datatype} dims: [ {", ".join(map(str, t.dims))} ] }}'
            for t in specs
        )
        return f"{kind} [\n{items}\n]\n"

    return (
        f'name: "{model.name}"\nbackend: "{backend}"\nmax_batch_size: {max_batch}\n'
        + tensors("input", model.inputs)
        + tensors("output", model.outputs)
        + f"instance_group [ {{ kind: KIND_GPU count: {instances} gpus: [ 0 ] }} ]\n"
        + "dynamic_batching { }\n"
    )


def write_repository(
    root: Path, models: Sequence[ModelSpec], files: dict[str, Path], backend: str, instances: int
) -> Path:
    for model in models:
        version = root / model.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        source = files[model.name]
        target = version / source.name
        for src, dst in ((source, target), (source.with_name(source.name + ".json"), Path(f"{target}.json"))):
            if src.exists() and not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    dst.write_bytes(src.read_bytes())
        (root / model.name / "config.pbtxt").write_text(shipyard_gpu_config(model, backend, instances, MAX_BATCH))
    return root


def start_server(repo: Path, workdir: Path, first: ModelSpec) -> tuple[common.ServerProcess, int]:
    from benchmarks import targets

    rest, grpc_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime", "--model-repository", str(repo), "--host", common.LOOPBACK,
        "--http-port", str(rest), "--grpc-port", str(grpc_port),
    )  # fmt: skip
    server = common.ServerProcess("shipyard-gpu", argv, workdir / "logs" / "shipyard-gpu.log")
    server.start()
    probe = targets.all_probes(
        targets.http_probe(rest, "/v2/health/ready"), targets.grpc_probe(grpc_port, common.grpc_request_bytes(first))
    )
    server.wait_ready(probe, timeout_s=600)  # engines and CUDA contexts take a while
    return server, grpc_port


def measure_cell(model: ModelSpec, port: int, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.loadgen import LoadSpec, run_closed_loop

    spec = LoadSpec("grpc", port, common.grpc_request_bytes(model))
    sampler = GpuUtilization()
    sampler.start()
    cell = run_closed_loop(spec, concurrency, args.warmup, args.window, processes=args.client_procs)
    result = cell.as_dict()
    result["gpu_utilization"] = sampler.stop()  # includes the warm-up: a slight underestimate
    return result


def measure_pair(models: Sequence[ModelSpec], port: int, concurrency: int, args: argparse.Namespace) -> dict:
    from benchmarks.loadgen import LoadSpec, run_closed_loop

    results: dict[str, Any] = {}
    errors: list[str] = []

    def one(model: ModelSpec) -> None:
        try:
            spec = LoadSpec("grpc", port, common.grpc_request_bytes(model))
            results[model.name] = run_closed_loop(
                spec, concurrency, args.warmup, args.window, processes=args.client_procs
            ).as_dict()
        except Exception as exc:
            errors.append(f"{model.name}: {exc}")

    sampler = GpuUtilization()
    sampler.start()
    threads = [threading.Thread(target=one, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"concurrency_each": concurrency, "models": results, "gpu_utilization": sampler.stop(), "errors": errors}


# ------------------------------------------------------------------------------------------ report (pure)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def derive(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's checks from a results dict: one entry per check with ``ok`` True/False/None (not measured)."""
    checks: list[dict[str, Any]] = []
    for name, entry in results.get("models", {}).items():
        limit = (entry.get("inprocess") or {}).get("best")
        cells = entry.get("served") or []
        best_served = max((c.get("throughput") or 0.0 for c in cells), default=None) if cells else None
        ratio = _ratio(best_served, limit)
        checks.append({
            "check": f"{name}: served throughput at high concurrency >= {SERVED_VS_LIMIT}x in-process limit",
            "value": ratio, "ok": None if ratio is None else ratio >= SERVED_VS_LIMIT,
        })  # fmt: skip
        c1 = next((c for c in cells if c.get("concurrency") == 1), None)
        single = (entry.get("inprocess") or {}).get("single_item_p50_ms")
        gap = c1["p50_ms"] - single if c1 and c1.get("p50_ms") is not None and single is not None else None
        checks.append({
            "check": f"{name}: c=1 p50 within {C1_LATENCY_SLACK_MS} ms of in-process single-item latency",
            "value": gap, "ok": None if gap is None else gap <= C1_LATENCY_SLACK_MS,
        })  # fmt: skip
    pair = results.get("two_models") or {}
    utilization = pair.get("gpu_utilization")
    checks.append({
        "check": f"two models together keep GPU utilization >= {TWO_MODEL_UTILIZATION:.0%}",
        "value": utilization, "ok": None if utilization is None else utilization >= TWO_MODEL_UTILIZATION,
    })  # fmt: skip
    return checks


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def render_markdown(results: dict[str, Any]) -> str:
    """The report: meta, per-model in-process limit and served sweep, the two-model run, the checks."""
    meta = results.get("meta", {})
    lines = [
        f"# GPU benchmark: {meta.get('gpu', 'unknown GPU')}, backend {meta.get('backend', '?')}",
        "",
        f"{meta.get('date', '')} · commit {meta.get('commit', '?')} · {meta.get('instances', '?')} GPU instance(s) "
        f"· gRPC closed loop, single-item requests, warm-up {meta.get('warmup_s')} s, window {meta.get('window_s')} s",
        "",
    ]
    for name, entry in results.get("models", {}).items():
        inproc = entry.get("inprocess") or {}
        limit = inproc.get("best")
        lines += [
            f"## {name}",
            "",
            f"In-process limit: {_fmt(limit)} inf/s at batch {inproc.get('best_batch', 'n/a')} "
            f"(batch 1: {_fmt(inproc.get('batch1'))} inf/s; "
            f"single-item p50 {_fmt(inproc.get('single_item_p50_ms'), 2)} ms; "
            f"GPU {_pct(inproc.get('gpu_utilization_at_best'))} busy at the best batch)",
            "",
            "| concurrency | inf/s | p50 ms | p99 ms | GPU util | vs in-process limit | errors |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for cell in entry.get("served") or []:
            lines.append(
                f"| {cell['concurrency']} | {_fmt(cell.get('throughput'))} | {_fmt(cell.get('p50_ms'), 2)} | "
                f"{_fmt(cell.get('p99_ms'), 2)} | {_pct(cell.get('gpu_utilization'))} | "
                f"{_fmt(_ratio(cell.get('throughput'), limit), 2)}x | {cell.get('errors', 0)} |"
            )
        if entry.get("error"):
            lines.append(f"\nFailed: {entry['error']}")
        lines.append("")
    pair = results.get("two_models")
    if pair:
        lines += [f"## Two models at once (c={pair.get('concurrency_each')} each)", ""]
        for name, cell in (pair.get("models") or {}).items():
            lines.append(
                f"- {name}: {_fmt(cell.get('throughput'))} inf/s, p50 {_fmt(cell.get('p50_ms'), 2)} ms, "
                f"p99 {_fmt(cell.get('p99_ms'), 2)} ms"
            )
        lines += [f"- GPU utilization: {_pct(pair.get('gpu_utilization'))}", ""]
        lines += [f"- failed: {e}" for e in pair.get("errors") or []]
    lines += ["## Targets (issue 7)", "", "| check | value | result |", "| --- | ---: | --- |"]
    for check in derive(results):
        value = check["value"]
        shown = _pct(value) if "utilization" in check["check"] else _fmt(value, 2)
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["ok"]]
        lines.append(f"| {check['check']} | {shown} | {verdict} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ command


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--instances", type=int, default=2, help="KIND_GPU instances on GPU 0 (default 2)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per cell (default 3)")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per cell (default 6)")
    parser.add_argument("--client-procs", type=int, default=4, help="load-generator processes per cell (default 4)")
    parser.add_argument("--inprocess-seconds", type=float, default=2.0, help="seconds per in-process batch size")
    parser.add_argument("--quick", action="store_true", help="short windows, c=1,64,256")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    # Internal: the in-process measurement runs in its own process (see inprocess_subprocess).
    parser.add_argument("--inprocess", help=argparse.SUPPRESS)
    parser.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.window, args.inprocess_seconds = 1.0, 3.0, 1.0
        args.concurrency = "1,64,256"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inprocess:  # child mode
        model = model_spec(args.inprocess)
        batches = [int(b) for b in args.batches.split(",") if b]
        print(json.dumps(measure_inprocess(model, args.model_file, args.backend, batches, args.seconds)))
        return 0
    try:
        gpu = preflight(args.backend)
    except Unavailable as exc:
        print(f"benchmarks.gpu: {exc}", file=sys.stderr)
        return NO_GPU_EXIT
    names = [n for n in args.models.split(",") if n]
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    results: dict[str, Any] = {
        "meta": {
            "gpu": gpu, "backend": args.backend, "instances": args.instances, "commit": common.git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "warmup_s": args.warmup,
            "window_s": args.window, "client_procs": args.client_procs, "concurrency": concurrency,
            "command": "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "models": {},
    }  # fmt: skip
    failed = False
    with tempfile.TemporaryDirectory(prefix="shipyard-gpu-bench-") as tmp:
        workdir = Path(tmp)
        models = [model_spec(n) for n in names]
        files = {m.name: model_file(m, args.backend, workdir, MAX_BATCH) for m in models}
        batches = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= MAX_BATCH]
        for model in models:
            log(f"{model.name}: in-process limit ({args.backend}, batches {batches})")
            entry: dict[str, Any] = {}
            try:
                entry["inprocess"] = inprocess_subprocess(
                    model.name, files[model.name], args.backend, batches, args.inprocess_seconds
                )
            except Exception as exc:
                entry["error"], failed = str(exc), True
            results["models"][model.name] = entry
        repo = write_repository(workdir / "repo", models, files, args.backend, args.instances)
        server = None
        try:
            log(f"starting shipyard with {args.instances} GPU instance(s) per model")
            server, port = start_server(repo, workdir, models[0])
            for model in models:
                cells = []
                for c in concurrency:
                    log(f"{model.name}: gRPC c={c}")
                    cells.append(measure_cell(model, port, c, args))
                results["models"][model.name]["served"] = cells
            if len(models) >= 2:
                log(f"two models at once, c={max(concurrency)} each")
                results["two_models"] = measure_pair(models[:2], port, max(concurrency), args)
        except Exception as exc:
            failed = True
            results["error"] = f"{exc}\n{traceback.format_exc()}"
            log(f"failed: {exc}")
        finally:
            if server is not None:
                server.stop()
    markdown = render_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-latest.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "gpu-latest.md").write_text(markdown)
    print(markdown)
    log(f"wrote {args.out / 'gpu-latest.json'} and {args.out / 'gpu-latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 16's targets, side by side in one run: shared-memory tensors, the response cache, sequences.

``python -m benchmarks.stateful [--parts shm,cache,sequences] [--seconds S] [--out DIR]`` (or
``make bench-stateful``). Each part starts its own ``python -m shipyard.serving_runtime`` (one ONNX
Runtime thread) on free loopback ports; clients are tritonclient (the way users call it), in threads
of this process.

1. **shm**: the zoo's image-mean model (reads every byte of a [8,3,224,224] FP32 batch, 4.8 MB),
   closed loop at ``--shm-concurrency``: REST binary, gRPC, and gRPC with the input in system shared
   memory (a region per client thread, registered once). Target: shm >= 2x REST binary and gRPC.
2. **cache**: the wide MLP with ``response_cache { enable: true }`` and ``--cache-config
   local,size=BYTES``, c=1 over gRPC (pre-serialized requests on a raw channel, the same client cost
   for both): a miss (a distinct input every request) against a hit (one input repeated). Target:
   hit >= 5x the miss throughput. Then a stream of distinct inputs into a small cache: its used
   bytes (``shipyard_response_cache_used_bytes``) must stay within its size.
3. **sequences**: the zoo's accumulator (implicit state, sequence batcher): ``--sequences``
   sequences of ``--steps`` steps, spread over ``--streams`` gRPC streams, every step sent at once
   (pipelined); each answer checked against its sequence's running sum and its step order. Target:
   0 out-of-order or cross-sequence results.

Writes ``stateful.json`` and ``stateful.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, targets

TARGETS = {"shm_vs_rest": 2.0, "shm_vs_grpc": 2.0, "cache_hit_vs_miss": 5.0}
IMAGE_BATCH = (8, 3, 224, 224)


def log(message: str) -> None:
    print(f"[stateful] {message}", file=sys.stderr, flush=True)


def _server(repo: Path, work: Path, *extra: str) -> tuple[common.ServerProcess, int, int]:
    http_port, grpc_port = common.free_port(), common.free_port()
    argv = common.python_module_argv(
        "shipyard.serving_runtime", "--model-repository", str(repo), "--host", common.LOOPBACK,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra,
    )  # fmt: skip
    server = common.ServerProcess("shipyard", argv, work / f"server-{http_port}.log", env={"OMP_NUM_THREADS": "1"})
    return server, http_port, grpc_port


def _write_model(repo: Path, name: str, model: Any, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (repo / name / "config.pbtxt").write_text(config)


def closed_loop(workers: int, seconds: float, make: Callable[[int], Callable[[], None]]) -> dict[str, Any]:
    """``workers`` threads each calling their ``make(i)()`` until ``seconds`` pass (after 10% warm-up)."""
    calls = [make(i) for i in range(workers)]
    latencies: list[list[float]] = [[] for _ in range(workers)]
    errors = [0] * workers
    start_at = time.monotonic() + 0.1 * seconds
    stop_at = start_at + seconds

    def run(i: int) -> None:
        call = calls[i]
        while (now := time.monotonic()) < stop_at:
            try:
                call()
            except Exception:
                errors[i] += 1
                continue
            if now >= start_at:
                latencies[i].append(time.monotonic() - now)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = sorted(x for lat in latencies for x in lat)
    return {
        "requests": len(done),
        "throughput": len(done) / seconds,
        "p50_ms": 1000 * done[len(done) // 2] if done else None,
        "p99_ms": 1000 * done[int(len(done) * 0.99)] if done else None,
        "errors": sum(errors),
    }


# -- 1. shared memory --------------------------------------------------------------------------


def part_shm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    from shipyard.zoo.onnx_models import image_mean_model

    repo = work / "shm-repo"
    _write_model(repo, "image_mean", image_mean_model(), IMAGE_MEAN_CONFIG)
    images = np.random.default_rng(0).standard_normal(IMAGE_BATCH).astype(np.float32)
    server, http_port, grpc_port = _server(repo, work)
    results: dict[str, Any] = {"input_bytes": images.nbytes, "concurrency": args.shm_concurrency}
    regions: list[Any] = []
    with common.running(server):
        server.wait_ready(targets.http_probe(http_port, "/v2/health/ready"), 120)
        expected = images.mean(axis=(2, 3))

        def rest(i: int) -> Callable[[], None]:
            client = httpclient.InferenceServerClient(f"{common.LOOPBACK}:{http_port}", connection_timeout=60)
            tensor = httpclient.InferInput("images", list(IMAGE_BATCH), "FP32")
            tensor.set_data_from_numpy(images, binary_data=True)
            out = [httpclient.InferRequestedOutput("means", binary_data=True)]
            return lambda: _check(client.infer("image_mean", [tensor], outputs=out).as_numpy("means"), expected)

        def grpc(i: int) -> Callable[[], None]:
            client = grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{grpc_port}")
            tensor = grpcclient.InferInput("images", list(IMAGE_BATCH), "FP32")
            tensor.set_data_from_numpy(images)
            return lambda: _check(client.infer("image_mean", [tensor]).as_numpy("means"), expected)

        def shared(i: int) -> Callable[[], None]:
            client = grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{grpc_port}")
            name = f"bench_{os.getpid()}_{i}"
            handle = shm.create_shared_memory_region(name, f"/{name}", images.nbytes)
            regions.append(handle)
            shm.set_shared_memory_region(handle, [images])
            client.register_system_shared_memory(name, f"/{name}", images.nbytes)
            tensor = grpcclient.InferInput("images", list(IMAGE_BATCH), "FP32")
            tensor.set_shared_memory(name, images.nbytes)
            return lambda: _check(client.infer("image_mean", [tensor]).as_numpy("means"), expected)

        try:
            for label, make in (("rest_binary", rest), ("grpc", grpc), ("shm", shared)):
                log(f"shm part: {label} ...")
                results[label] = closed_loop(args.shm_concurrency, args.seconds, make)
        finally:
            for handle in regions:
                shm.destroy_shared_memory_region(handle)
    for other in ("rest_binary", "grpc"):
        base = results[other]["throughput"]
        results[f"shm_vs_{other.split('_')[0]}"] = results["shm"]["throughput"] / base if base else None
    return results


def _check(got: np.ndarray, expected: np.ndarray) -> None:
    if not np.allclose(got, expected, atol=1e-4):
        raise AssertionError("wrong answer")


IMAGE_MEAN_CONFIG = """name: "image_mean"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "images" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "means" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


# -- 2. response cache -------------------------------------------------------------------------


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{common.LOOPBACK}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    if match is None:
        raise RuntimeError(f"metric {name} is not served")
    return float(match.group(1))


def _infer_bytes(name: str, width: int, x: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest`` of one item, built before the timed window."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="wide_mlp")
    request.inputs.add(name=name, datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


def part_cache(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Requests are pre-serialized and sent on a raw gRPC channel, so the client's cost per request
    is the same small amount for hits and misses and the ratio is the server's."""
    import grpc

    spec = common.load_model_spec("wide_mlp")
    repo = work / "cache-repo"
    (repo / "wide_mlp" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "wide_mlp" / "1" / "model.onnx").write_bytes(spec.onnx_path.read_bytes())
    (repo / "wide_mlp" / "config.pbtxt").write_text(WIDE_MLP_CONFIG)
    name, width = spec.inputs[0].name, spec.inputs[0].dims[0]
    rng = np.random.default_rng(1)
    log("cache part: building distinct requests ...")
    distinct = [
        _infer_bytes(name, width, rng.standard_normal((1, width)).astype(np.float32))
        for _ in range(max(args.stream_inputs, int(args.seconds * 2000)))
    ]
    results: dict[str, Any] = {"cache_bytes": args.cache_bytes, "stream_cache_bytes": args.stream_cache_bytes}
    for size, label in ((args.cache_bytes, "speed"), (args.stream_cache_bytes, "stream")):
        server, http_port, grpc_port = _server(repo, work, "--cache-config", f"local,size={size}")
        with common.running(server):
            server.wait_ready(targets.http_probe(http_port, "/v2/health/ready"), 120)
            channel = grpc.insecure_channel(f"{common.LOOPBACK}:{grpc_port}")
            call = channel.unary_unary(common.GRPC_INFER_METHOD)
            if label == "speed":
                same = distinct[-1]
                call(same, timeout=60)
                log("cache part: hits ...")
                results["hit"] = closed_loop(1, args.seconds, _repeat(call, same))
                log("cache part: misses ...")
                results["miss"] = closed_loop(1, args.seconds, _each(call, distinct[:-1]))
                miss = results["miss"]["throughput"]
                results["hit_vs_miss"] = results["hit"]["throughput"] / miss if miss else None
            else:
                log(f"cache part: {args.stream_inputs} distinct inputs into {size} bytes ...")
                for index in range(200):  # warm-up: allocator and session arenas settle first
                    call(distinct[-1 - index], timeout=60)
                rss_before = _metric(http_port, "process_resident_memory_bytes")
                peak = 0.0
                for index in range(args.stream_inputs):
                    call(distinct[index], timeout=60)
                    if index % 100 == 99:
                        peak = max(peak, _metric(http_port, "shipyard_response_cache_used_bytes"))
                results["stream"] = {
                    "inputs": args.stream_inputs,
                    "peak_used_bytes": peak,
                    "entries_at_end": _metric(http_port, "shipyard_response_cache_entries"),
                    "size_bytes": _metric(http_port, "shipyard_response_cache_size_bytes"),
                    "rss_growth_bytes": _metric(http_port, "process_resident_memory_bytes") - rss_before,
                    "within_bound": peak <= size,
                }
            channel.close()
    return results


def _each(call: Callable[..., Any], requests: list[bytes]) -> Callable[[int], Callable[[], None]]:
    """A closed-loop worker factory that sends each serialized request once, in turn."""
    fresh = iter(requests)
    return lambda i: lambda: call(next(fresh), timeout=60)


def _repeat(call: Callable[..., Any], request: bytes) -> Callable[[int], Callable[[], None]]:
    """A closed-loop worker factory that sends the same serialized request every time."""
    return lambda i: lambda: call(request, timeout=60)


WIDE_MLP_CONFIG = """name: "wide_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 128
dynamic_batching { }
response_cache { enable: true }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


# -- 3. sequences ------------------------------------------------------------------------------


def part_sequences(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from shipyard.zoo.onnx_models import accumulator_config, accumulator_model

    repo = work / "seq-repo"
    _write_model(repo, "accum", accumulator_model(), accumulator_config("accum", max_batch_size=64, instances=1))
    server, http_port, grpc_port = _server(repo, work)
    per_stream = -(-args.sequences // args.streams)
    counts = {"answers": 0, "out_of_order": 0, "wrong": 0, "errors": 0}
    lock = threading.Lock()

    def stream(index: int) -> None:
        answers: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"{common.LOOPBACK}:{grpc_port}")
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        mine = [s for s in range(index * per_stream, min((index + 1) * per_stream, args.sequences))]
        try:
            for step in range(args.steps):
                for seq in mine:
                    tensor = grpcclient.InferInput("INPUT", [1, 1], "FP32")
                    tensor.set_data_from_numpy(np.array([[seq * 1000 + step]], dtype=np.float32))
                    client.async_stream_infer(
                        "accum", [tensor], request_id=f"{seq}:{step}", sequence_id=seq + 1,
                        sequence_start=step == 0, sequence_end=step == args.steps - 1,
                    )  # fmt: skip
            last = dict.fromkeys(mine, -1)
            local = dict.fromkeys(counts, 0)
            for _ in range(len(mine) * args.steps):
                result, error = answers.get(timeout=120)
                if error is not None:
                    local["errors"] += 1
                    continue
                seq, step = (int(x) for x in result.get_response().id.split(":"))
                expected = sum(seq * 1000 + k for k in range(step + 1))
                if step != last[seq] + 1:
                    local["out_of_order"] += 1
                last[seq] = step
                value = float(result.as_numpy("OUTPUT")[0, 0])
                if value != expected or int(result.as_numpy("CORRID_OUT")[0, 0]) != seq + 1:
                    local["wrong"] += 1
                local["answers"] += 1
        finally:
            client.stop_stream()
        with lock:
            for key, value in local.items():
                counts[key] += value

    with common.running(server):
        server.wait_ready(targets.http_probe(http_port, "/v2/health/ready"), 120)
        log(f"sequences part: {args.sequences} sequences x {args.steps} steps on {args.streams} streams ...")
        started = time.monotonic()
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(args.streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    return {
        "sequences": args.sequences,
        "steps": args.steps,
        "streams": args.streams,
        **counts,
        "seconds": elapsed,
        "throughput": counts["answers"] / elapsed,
    }


# -- report ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    lines = ["# Issue 16 targets: shared memory, response cache, sequences", "", f"meta: `{results['meta']}`", ""]
    lines += ["| measurement | value | target | pass |", "|---|---|---|---|"]
    if "shm" in results:
        shm = results["shm"]
        for label in ("rest_binary", "grpc", "shm"):
            cell = shm[label]
            lines.append(
                f"| image batch {IMAGE_BATCH} ({shm['input_bytes'] / 1e6:.1f} MB), {label}, c={shm['concurrency']} | "
                f"{cell['throughput']:,.1f} req/s, p50 {cell['p50_ms'] or 0:.2f} ms, errors {cell['errors']} | | |"
            )
        for other, key in (("REST binary", "shm_vs_rest"), ("gRPC", "shm_vs_grpc")):
            ratio = shm.get(key) or 0.0
            lines.append(f"| shm / {other} | {ratio:.2f}x | >= {TARGETS[key]}x | {ratio >= TARGETS[key]} |")
    if "cache" in results:
        cache = results["cache"]
        ratio = cache.get("hit_vs_miss") or 0.0
        for label in ("miss", "hit"):
            cell = cache[label]
            value = f"{cell['throughput']:,.0f} req/s, p50 {cell['p50_ms']:.3f} ms"
            lines.append(f"| wide MLP c=1, {label} | {value} | | |")
        goal = TARGETS["cache_hit_vs_miss"]
        lines.append(f"| hit / miss (throughput) | {ratio:.2f}x | >= {goal}x | {ratio >= goal} |")
        if cache["hit"]["p50_ms"] and cache["miss"]["p50_ms"]:
            p50 = cache["miss"]["p50_ms"] / cache["hit"]["p50_ms"]
            lines.append(f"| miss p50 / hit p50 (less sensitive to a busy machine) | {p50:.2f}x | | |")
        stream = cache["stream"]
        lines.append(
            f"| {stream['inputs']} distinct inputs into a {stream['size_bytes']:,.0f}-byte cache | peak used "
            f"{stream['peak_used_bytes']:,.0f} bytes, {stream['entries_at_end']:.0f} entries, server RSS change "
            f"{stream['rss_growth_bytes'] / 1e6:.1f} MB | used <= size | {stream['within_bound']} |"
        )
    if "sequences" in results:
        seq = results["sequences"]
        bad = seq["out_of_order"] + seq["wrong"]
        lines.append(
            f"| {seq['sequences']} sequences x {seq['steps']} steps, {seq['streams']} gRPC streams | "
            f"{seq['answers']} answers, {seq['out_of_order']} out of order, {seq['wrong']} wrong, {seq['errors']} "
            f"errors, {seq['throughput']:,.0f} req/s | 0 out of order or wrong | {bad == 0 and seq['errors'] == 0} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stateful", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="shm,cache,sequences", help="comma-separated: shm, cache, sequences")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per cell (default 10)")
    parser.add_argument("--shm-concurrency", type=int, default=2, help="client threads in the shm part (default 2)")
    parser.add_argument("--cache-bytes", type=int, default=64 << 20, help="cache size for hit/miss (default 64 MiB)")
    parser.add_argument("--stream-cache-bytes", type=int, default=256 << 10, help="small cache (default 256 KiB)")
    parser.add_argument("--stream-inputs", type=int, default=2000, help="distinct inputs streamed (default 2000)")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--streams", type=int, default=8, help="gRPC streams carrying the sequences (default 8)")
    parser.add_argument("--out", default="benchmarks/results/stateful", help="directory for stateful.json/.md")
    parser.add_argument("--workdir", default="/tmp/shipyard-stateful-bench")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"shm", "cache", "sequences"}
    if unknown:
        print(f"unknown part(s) {', '.join(sorted(unknown))}; choose from shm, cache, sequences", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}}
    runners = {"shm": part_shm, "cache": part_cache, "sequences": part_sequences}
    try:
        for part in parts:
            results[part] = runners[part](work, args)
    finally:
        common.stop_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stateful.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (out / "stateful.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

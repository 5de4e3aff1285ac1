"""Where one request to a Python model or an ensemble spends its time at concurrency 1.

    python -m benchmarks.py_c1_trace [--model mlp_py|pipeline] [--seconds 3] [--rounds 2]
                                     [--shipyard-args "..."] [--env KEY=VALUE ...] [--profile FILE]

Serves ``benchmarks.python_models``' repository and loads ``mlp_py`` (the wide MLP in ONNX
Runtime inside a ``model.py``) or ``pipeline`` (the 3-step ensemble: Python ``normalize`` -> the
MLP in shipyard's onnxruntime backend -> Python ``topk``) with the C++ closed-loop client at
concurrency 1. The server runs with stamps (``time.monotonic_ns``, CLOCK_MONOTONIC: the same clock
in both processes) wrapped around its stages, and its stub processes run
``benchmarks.py_c1_trace_stub``, which stamps the stub's stages and writes them to a file; the two
are joined by the call's key. Each request is the time-ordered list of its stamps (from the loop
taking it from grpc to its answer going back); the requests whose list of stages is the most
common one are kept, and per stage the median time from the stage before is printed. A stage of a
composing model is prefixed with its name (``normalize:submit``).

Stages: ``drain`` (the loop took the call from grpc), ``task`` (a Python-path call's task started)
or ``run`` (a fast-path group started), ``ens_start`` (the ensemble's run began), per step
``step`` (the step started), ``submit`` (its model's batcher got the request), ``kick`` (the batch
was handed to the instance), ``inline`` (run on the loop at once instead), ``worker`` (the worker
thread started it), ``send`` (the call's message written to the stub), ``s_recv`` (the stub's read
returned), ``s_req`` (pb_utils requests built), ``ort0``/``ort1`` (ONNX Runtime's ``run``, in the
stub or in the server), ``s_model`` (``execute`` returned), ``s_reply`` (the reply encoded),
``s_sent`` (written), ``recvd`` (the server read it), ``results`` (decoded), ``done_cb`` (the loop
took the batch's completion), ``resumed`` (the request's task went on), ``step_end``; then
``ens_end`` and ``end`` (the answer went to grpc). The client's p50 is printed beside it: the
rest is grpc and the client.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import itertools
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.loadgen import LoadSpec, run_closed_loop

STUB_OUT_ENV = "SHIPYARD_PY_TRACE_STUB_OUT"
PROFILE_ENV = "SHIPYARD_PY_TRACE_PROFILE"
_EVENTS: list[tuple[int, str, int]] = []  # (time, stage, stub call key or 0), from any thread
_KEY_MODEL: dict[int, str] = {}  # stub call key -> model name


def _patch(owner: Any, name: str, make: Any) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def _stamp(stage: str, key: int = 0) -> None:
    _EVENTS.append((time.monotonic_ns(), stage, key))


def _model_of(obj: Any) -> str:
    stats = getattr(obj, "stats", None)
    return str(getattr(stats, "name", "")) if stats is not None else str(getattr(obj, "model_name", ""))


def _install() -> None:
    """Wrap the server's stages with stamps (in the server process)."""
    from shipyard.serving_runtime.backends.python import instance, process
    from shipyard.serving_runtime.protocol import native_fast, native_grpc
    from shipyard.serving_runtime.scheduling import dynamic, ensemble_group, instances

    process.STUB_MODULE = "benchmarks.py_c1_trace_stub"
    last_drain = [0]

    def drain(orig: Any) -> Any:
        def wrapped(self: Any) -> Any:
            last_drain[0] = time.monotonic_ns()
            return orig(self)

        return wrapped

    def begins(stage: str) -> Any:  # an async entry point: the request's first and last stamps
        def make(orig: Any) -> Any:
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                _EVENTS.append((last_drain[0], "drain", 0))
                _stamp(stage)
                try:
                    return await orig(*args, **kwargs)
                finally:
                    _stamp("end")

            return wrapped

        return make

    def around_async(first: str, last: str, by_model: bool) -> Any:
        def make(orig: Any) -> Any:
            async def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
                prefix = _model_of(self) + ":" if by_model else ""
                _stamp(prefix + first)
                try:
                    return await orig(self, *args, **kwargs)
                finally:
                    _stamp(prefix + last)

            return wrapped

        return make

    def step(orig: Any) -> Any:
        async def wrapped(scheduler: Any, step: Any, members: Any) -> Any:
            _stamp(f"{step.model_name}:step")
            try:
                return await orig(scheduler, step, members)
            finally:
                _stamp(f"{step.model_name}:step_end")

        return wrapped

    def simple(stage: str, model_of: Any) -> Any:
        def make(orig: Any) -> Any:
            def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
                _stamp(f"{model_of(self)}:{stage}")
                return orig(self, *args, **kwargs)

            return wrapped

        return make

    def after(stage: str, model_of: Any) -> Any:
        def make(orig: Any) -> Any:
            def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
                result = orig(self, *args, **kwargs)
                _stamp(f"{model_of(self)}:{stage}")
                return result

            return wrapped

        return make

    def describe(orig: Any) -> Any:
        def wrapped(self: Any, requests: Any, keys: list[int]) -> Any:
            _KEY_MODEL[keys[0]] = self.model_name
            return orig(self, requests, keys)

        return wrapped

    def worker_model(worker: Any) -> str:
        return str(worker.name.split("-v")[0])

    def stub_model(stub: Any) -> str:
        return _STUB_MODEL.get(id(stub), "?")

    def call(orig: Any) -> Any:
        def wrapped(self: Any, message: Any, timeout_s: Any) -> Any:
            if message[0] != "exec":
                return orig(self, message, timeout_s)
            model = _KEY_MODEL.get(message[1], "?")
            _STUB_MODEL[id(self)] = model
            _stamp(f"{model}:send", message[1])
            reply = orig(self, message, timeout_s)
            _stamp(f"{model}:recvd")
            return reply

        return wrapped

    def send_call(orig: Any) -> Any:
        def wrapped(self: Any, message: Any) -> Any:
            model = _KEY_MODEL.get(message[1], "?")
            _STUB_MODEL[id(self)] = model
            _stamp(f"{model}:send", message[1])
            return orig(self, message)

        return wrapped

    _patch(native_grpc.NativeGrpcFrontend, "_drain", drain)
    _patch(native_grpc.NativeGrpcFrontend, "_unary", begins("task"))
    _patch(native_fast.FastPath, "_run", begins("run"))
    _patch(dynamic.DynamicBatcher, "submit", around_async("submit", "resumed", True))
    _patch(dynamic.DynamicBatcher, "_run_inline", simple("inline", _model_of))
    _patch(dynamic.DynamicBatcher, "_on_batch_done", simple("done_cb", _model_of))
    _patch(ensemble_group, "_step", step)
    _patch(instances.InstanceWorker, "hand_off", simple("kick", worker_model))
    _patch(instances.InstanceWorker, "run_batch", simple("worker", worker_model))
    _patch(instance.PythonInstance, "_describe", describe)
    _patch(instance.PythonInstance, "_results", after("results", lambda self: self.model_name))
    _patch(process.StubProcess, "call", call)
    _patch(process.StubProcess, "send_call", send_call)  # the event loop's call (loop_call.py)
    _patch(process.StubProcess, "read_reply", after("recvd", stub_model))
    try:
        from shipyard.serving_runtime.scheduling import ensemble

        _patch(ensemble.EnsembleScheduler, "submit", around_async("ens_start", "ens_end", False))
        _patch(ensemble.EnsembleScheduler, "submit_group", around_async("ens_start", "ens_end", False))
    except ImportError:
        pass
    try:
        import onnxruntime

        run = onnxruntime.InferenceSession.run

        def traced_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            _stamp("ort0")
            try:
                return run(self, *args, **kwargs)
            finally:
                _stamp("ort1")

        onnxruntime.InferenceSession.run = traced_run  # type: ignore[method-assign]
    except ImportError:
        pass


_STUB_MODEL: dict[int, str] = {}


def _stub_rows(path: Path) -> dict[int, dict[str, int]]:
    rows: dict[int, dict[str, int]] = {}
    for stub_file in path.parent.glob(path.name + ".*"):
        for line in stub_file.read_text().splitlines():
            fields = line.split()
            if fields:
                rows[int(fields[0])] = {k: int(v) for k, v in (f.split("=") for f in fields[1:])}
    return rows


def _requests(stub: dict[int, dict[str, int]]) -> list[list[tuple[int, str]]]:
    """The traced requests: each its (time, stage) list, the stub's stamps joined in, in time order."""
    events = list(_EVENTS)
    _EVENTS.clear()
    requests: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    missing = False
    for when, stage, key in events:
        if stage == "drain":
            current, missing = [(when, stage)], False
            continue
        if current is None:
            continue
        current.append((when, stage))
        if key:
            row = stub.get(key)
            model = _KEY_MODEL.get(key, "?")
            if row is None:
                missing = True
            else:
                current.extend((t, f"{model}:{name}") for name, t in row.items())
        if stage == "end":
            if not missing:
                requests.append(sorted(current))
            current = None
    return requests


def _tail(requests: list[list[tuple[int, str]]], shapes: collections.Counter[tuple[str, ...]]) -> list[str]:
    """Every traced request's drain -> end (percentiles, mean), the other sequences of stages, and
    for the slow ones (over twice the median) the gap that took longest, counted by its stages."""
    totals = sorted(request[-1][0] - request[0][0] for request in requests)
    pct = {p: totals[min(len(totals) - 1, int(len(totals) * p / 100))] / 1e3 for p in (50, 90, 99)}
    lines = [f"all requests: drain -> end p50 {pct[50]:.1f} us, p90 {pct[90]:.1f}, p99 {pct[99]:.1f}, "
             f"mean {statistics.fmean(totals) / 1e3:.1f} us"]  # fmt: skip
    for shape, count in shapes.most_common(4)[1:]:
        lines.append(f"  also {count} requests with {len(shape)} stages: {' '.join(shape)[:400]}")
    median = pct[50] * 1e3
    worst: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()
    for request in requests:
        if request[-1][0] - request[0][0] > 2 * median:
            gap, a, b = max((request[i][0] - request[i - 1][0], request[i - 1][1], request[i][1])
                            for i in range(1, len(request)))  # fmt: skip
            worst[f"{a} -> {b}"] += 1
            spent[f"{a} -> {b}"] += gap
    for pair, count in worst.most_common(6):
        lines.append(f"  slow requests' longest gap: {pair} x{count}, mean {spent[pair] / count / 1e3:.0f} us")
    return lines


def _summary(stub_out: Path) -> str:
    stub = _stub_rows(stub_out)
    requests = _requests(stub)
    if not requests:
        return "no traced requests\n"
    # grouped by their set of stages (the stub's and the server's stamps of one exchange may
    # interleave either way), each request's stages in the order of their median offset
    shapes = collections.Counter(tuple(sorted(stage for _, stage in request)) for request in requests)
    common_set, count = shapes.most_common(1)[0]
    rows = [{s: t for t, s in request} for request in requests if tuple(sorted(s for _, s in request)) == common_set]
    shape = tuple(sorted(common_set, key=lambda s: statistics.median(row[s] - row["drain"] for row in rows)))
    kept = [[(row[s], s) for s in shape] for row in rows]
    lines = [f"requests traced: {len(requests)}, {count} with the most common set of stages (shown)"]
    total = 0.0
    for i in range(1, len(shape)):
        gap = statistics.median(request[i][0] - request[i - 1][0] for request in kept) / 1e3
        total += gap
        lines.append(f"{shape[i - 1]:>22s} -> {shape[i]:<22s} p50 {gap:8.1f} us   (sum {total:7.1f})")
    ends = [request[-1][0] - request[0][0] for request in kept]
    lines.append(f"drain -> end total p50 {statistics.median(ends) / 1e3:8.1f} us")
    lines += _tail(requests, shapes)
    ordered = sorted((row for row in stub.values() if "s_sent" in row), key=lambda row: row["s_recv"])
    idle = [b["s_recv"] - a["s_sent"] for a, b in itertools.pairwise(ordered)]
    if idle:
        lines.append(f"a stub idle between calls p50 {statistics.median(idle) / 1e3:8.1f} us")
    return "\n".join(lines) + "\n"


def serve(out: Path, argv: list[str]) -> int:
    """The traced server: writes the summary to ``out`` on SIGUSR1 and at exit."""
    _install()
    stub_out = Path(os.environ[STUB_OUT_ENV])
    profile_out = os.environ.get(PROFILE_ENV)
    profiler = None
    if profile_out:  # the event loop's thread (every call from the main thread)
        import cProfile

        profiler = cProfile.Profile()

    def summarize(*_: Any) -> None:
        out.write_text(_summary(stub_out))
        if profiler is not None and profile_out:
            profiler.dump_stats(profile_out)  # since the start; dumping stops it: on again
            profiler.enable()

    signal.signal(signal.SIGUSR1, summarize)
    atexit.register(lambda: out.write_text(_summary(stub_out)))
    from shipyard.serving_runtime.cli import main

    if profiler is not None:
        profiler.enable()
    return int(main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp_py", choices=("mlp_py", "pipeline"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", default="native", choices=("native", "python"))
    parser.add_argument("--shipyard-args", default="")
    parser.add_argument("--profile", type=Path, help="cProfile the event loop's thread; stats of the last round here")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server is not None:
        return serve(Path(args.server[0]), args.server[1:])
    mlp = common.load_model_spec("wide_mlp")
    with tempfile.TemporaryDirectory(prefix="shipyard-py-trace-") as tmp:
        work = Path(tmp)
        repo = python_models.write_repository(work / "repo", mlp, for_triton=False)
        rest, grpc_port = common.free_port(), common.free_port()
        out, stub_out = work / "trace.txt", work / "stub"
        argv_server = [sys.executable, "-m", "benchmarks.py_c1_trace", "--server", str(out), "--model-repository",
                       str(repo), "--host", "127.0.0.1", "--http-port", str(rest), "--grpc-port", str(grpc_port),
                       "--grpc-frontend", "native", *shlex.split(args.shipyard_args)]  # fmt: skip
        env = {"OMP_NUM_THREADS": "1", STUB_OUT_ENV: str(stub_out)}
        env.update(item.split("=", 1) for item in args.env)
        if args.profile:
            env[PROFILE_ENV] = str(args.profile.resolve())
        server = common.ServerProcess("traced", argv_server, work / "server.log", env=env)
        server.start()
        try:
            from benchmarks.targets import grpc_spec, http_probe

            server.wait_ready(http_probe(rest, "/v2/health/ready"), 180)
            if args.model == "pipeline":
                model = python_models._pipeline_spec(mlp)
            else:
                model = common.ModelSpec("mlp_py", mlp.onnx_path, mlp.inputs, mlp.outputs)
            spec: LoadSpec = grpc_spec(grpc_port)(model)
            for number in range(args.rounds):
                run_closed_loop(spec, 1, 0.5, 0.5, 1, args.client)
                os.kill(server.pid, signal.SIGUSR1)  # drop what warm-up and earlier rounds traced
                time.sleep(0.3)
                cell = run_closed_loop(spec, 1, 0.2, args.seconds, 1, args.client)
                time.sleep(0.6)
                run_closed_loop(spec, 1, 0.0, 0.3, 1, args.client)  # the stubs flush their stamps (every 0.5 s)
                os.kill(server.pid, signal.SIGUSR1)
                time.sleep(0.5)
                print(f"round {number + 1}: client p50 {cell.p50_ms or 0:.3f} ms, {cell.throughput:.0f} inf/s")
                print(out.read_text() if out.exists() else "no summary (see the server log)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

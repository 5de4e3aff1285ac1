"""Where one request to a Python model spends its time at concurrency 1: stamps on both sides.

    python -m benchmarks.py_c1_trace [--seconds 3] [--rounds 2] [--shipyard-args "..."]

Serves ``benchmarks.python_models``' repository and loads ``mlp_py`` (the wide MLP in ONNX
Runtime inside a ``model.py``) with the C++ closed-loop client at concurrency 1. The server runs
with stamps (``time.monotonic_ns``, CLOCK_MONOTONIC: the same clock in both processes) wrapped
around its stages, and its stub processes run ``benchmarks.py_c1_trace_stub``, which stamps the
stub's stages and writes them to a file; the two are joined by the batch's key. Per stage the
median time from the previous stage is printed (stages ordered by their median offset):

server: ``drain`` (the loop took the call from grpc), ``task`` (the call's task started),
``submit`` (the batcher got the request), ``kick`` (handed to the instance thread), ``worker``
(it woke), ``send`` (the call's message is pickled and written), ``s_recv`` (the stub's read
returned: wake-up plus unpickling), ``s_req`` (pb_utils requests built, inputs copied out of
shared memory), ``ort0``/``ort1`` (ONNX Runtime's ``run``), ``s_model`` (``execute`` returned),
``s_reply`` (the reply encoded, outputs into shared memory), ``s_sent`` (written), ``recvd``
(the server's read returned), ``results`` (``execute_requests`` returned), ``done_cb`` (the loop
took the batch's completion), ``resumed`` (the request's task went on), ``end`` (the answer went
to grpc). The client's p50 is printed beside it: the rest is grpc and the client.
"""

from __future__ import annotations

import argparse
import atexit
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
_ROWS: dict[int, dict[str, int]] = {}
_CURRENT: dict[str, Any] = {}


def _patch(owner: Any, name: str, make: Any) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def _stamp(name: str) -> None:
    stamps = _CURRENT.get("stamps")
    if stamps is not None:
        stamps[name] = time.monotonic_ns()


def _install() -> None:
    """Wrap the server's stages with stamps (in the server process)."""
    from shipyard.serving_runtime.backends.python import instance, process
    from shipyard.serving_runtime.protocol import native_grpc
    from shipyard.serving_runtime.scheduling import dynamic, instances

    now = time.monotonic_ns
    process.STUB_MODULE = "benchmarks.py_c1_trace_stub"

    def drain(orig: Any) -> Any:
        def wrapped(self: Any) -> Any:
            _CURRENT["drain"] = now()
            return orig(self)

        return wrapped

    def unary(orig: Any) -> Any:
        async def wrapped(self: Any, call_id: int, method: Any, payload: bytes) -> None:
            stamps = {"drain": _CURRENT.get("drain", 0), "task": now()}
            _CURRENT["stamps"] = stamps
            await orig(self, call_id, method, payload)
            stamps["end"] = now()

        return wrapped

    def submit(orig: Any) -> Any:
        async def wrapped(self: Any, request: Any) -> Any:
            stamps = _CURRENT.get("stamps", {})
            stamps["submit"] = now()
            try:
                return await orig(self, request)
            finally:
                stamps["resumed"] = now()

        return wrapped

    def simple(name: str) -> Any:
        def make(orig: Any) -> Any:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                _stamp(name)
                return orig(*args, **kwargs)

            return wrapped

        return make

    def describe(orig: Any) -> Any:
        def wrapped(self: Any, requests: Any, keys: list[int]) -> Any:
            stamps = _CURRENT.get("stamps")
            if stamps is not None:
                _ROWS[keys[0]] = stamps
            return orig(self, requests, keys)

        return wrapped

    def call(orig: Any) -> Any:
        def wrapped(self: Any, message: Any, timeout_s: Any) -> Any:
            if message[0] == "exec":
                _stamp("send")
            reply = orig(self, message, timeout_s)
            if message[0] == "exec":
                _stamp("recvd")
            return reply

        return wrapped

    def after(name: str) -> Any:
        def make(orig: Any) -> Any:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                result = orig(*args, **kwargs)
                _stamp(name)
                return result

            return wrapped

        return make

    _patch(native_grpc.NativeGrpcFrontend, "_drain", drain)
    _patch(native_grpc.NativeGrpcFrontend, "_unary", unary)
    _patch(dynamic.DynamicBatcher, "submit", submit)
    _patch(instances.InstanceWorker, "hand_off", simple("kick"))
    _patch(instances.InstanceWorker, "run_batch", simple("worker"))
    _patch(dynamic.DynamicBatcher, "_on_batch_done", simple("done_cb"))
    _patch(instance.PythonInstance, "_describe", describe)
    _patch(process.StubProcess, "call", call)
    _patch(instance.PythonInstance, "_results", after("results"))
    _patch(process.StubProcess, "send_call", simple("send"))  # the event loop's call (loop_call.py)
    _patch(process.StubProcess, "read_reply", after("recvd"))


def _stub_rows(path: Path) -> dict[int, dict[str, int]]:
    rows: dict[int, dict[str, int]] = {}
    for stub_file in path.parent.glob(path.name + ".*"):
        for line in stub_file.read_text().splitlines():
            fields = line.split()
            if fields:
                rows[int(fields[0])] = {k: int(v) for k, v in (f.split("=") for f in fields[1:])}
    return rows


def _summary(stub_out: Path) -> str:
    stub = _stub_rows(stub_out)
    rows = []
    for key, stamps in list(_ROWS.items())[-5000:]:
        if key in stub and "end" in stamps:
            rows.append({**stamps, **stub[key]})
    _ROWS.clear()
    if not rows:
        return "no traced requests\n"
    keys = [key for key in rows[-1] if all(key in row for row in rows)]
    order = sorted(keys, key=lambda k: statistics.median(row[k] - row["drain"] for row in rows))
    lines = [f"requests traced: {len(rows)}"]
    for a, b in itertools.pairwise(order):
        d = [row[b] - row[a] for row in rows]
        lines.append(f"{a:>8s} -> {b:<8s} p50 {statistics.median(d) / 1e3:8.1f} us")
    ordered = sorted((row for row in stub.values() if "s_sent" in row), key=lambda row: row["s_recv"])
    idle = [b["s_recv"] - a["s_sent"] for a, b in itertools.pairwise(ordered)]
    if idle:
        lines.append(f"the stub idle between calls p50 {statistics.median(idle) / 1e3:8.1f} us")
    total = [row["end"] - row["drain"] for row in rows]
    lines.append(f"drain -> end total p50 {statistics.median(total) / 1e3:8.1f} us")
    return "\n".join(lines) + "\n"


def serve(out: Path, argv: list[str]) -> int:
    """The traced server: writes the summary to ``out`` on SIGUSR1 and at exit."""
    _install()
    stub_out = Path(os.environ[STUB_OUT_ENV])
    signal.signal(signal.SIGUSR1, lambda *_: out.write_text(_summary(stub_out)))
    atexit.register(lambda: out.write_text(_summary(stub_out)))
    from shipyard.serving_runtime.cli import main

    return int(main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", default="native", choices=("native", "python"))
    parser.add_argument("--shipyard-args", default="")
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
        server = common.ServerProcess("traced", argv_server, work / "server.log", env=env)
        server.start()
        try:
            from benchmarks.targets import grpc_spec, http_probe

            server.wait_ready(http_probe(rest, "/v2/health/ready"), 180)
            spec: LoadSpec = grpc_spec(grpc_port)(common.ModelSpec("mlp_py", mlp.onnx_path, mlp.inputs, mlp.outputs))
            for number in range(args.rounds):
                run_closed_loop(spec, 1, 0.5, 0.5, 1, args.client)
                os.kill(server.pid, signal.SIGUSR1)  # drop what warm-up and earlier rounds traced
                time.sleep(0.3)
                cell = run_closed_loop(spec, 1, 0.2, args.seconds, 1, args.client)
                time.sleep(0.6)  # the stub flushes its stamps every 0.5 s
                os.kill(server.pid, signal.SIGUSR1)
                time.sleep(0.5)
                print(f"round {number + 1}: client p50 {cell.p50_ms or 0:.3f} ms, {cell.throughput:.0f} inf/s")
                print(out.read_text() if out.exists() else "no summary (see the server log)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a Python model's process waits for between two batches under load: stamps on both sides.

    python -m benchmarks.py_gap_trace [--concurrency 16] [--seconds 3] [--rounds 2] [--shipyard-args "..."]

Under a closed loop the one instance of ``mlp_py`` (the wide MLP in ONNX Runtime inside a
``model.py``) should go from one batch to the next at once; the time between is the dispatch
path's. The server runs with stamps (``time.monotonic_ns``) around its per-batch stages and its
stub runs ``benchmarks.py_c1_trace_stub`` (stamps in the model process); rows are joined by the
batch's key. For consecutive batches A and B the median of each hop is printed:

``A.s_sent`` (the stub wrote A's reply) -> ``A.recvd`` (the instance thread's read returned) ->
``A.results`` (A's outputs decoded) -> ``A.done_cb`` (the event loop took A's completion) ->
``B.kick`` (B handed to the instance thread) -> ``B.worker`` (it woke) -> ``B.send`` (B's message
written) -> ``B.s_recv`` (the stub read it) -> ``B.s_req`` (pb_utils requests built; ``execute``
starts), and A's own compute (``s_req -> s_model``) and reply encoding, with the average batch.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, python_models
from benchmarks.loadgen import LoadSpec, run_closed_loop
from benchmarks.py_c1_trace import STUB_OUT_ENV, _patch, _stub_rows

_ROWS: dict[int, dict[str, int]] = {}
_LOCAL = threading.local()


def _install() -> None:
    """Wrap the server's per-batch stages with stamps (in the server process)."""
    from shipyard.serving_runtime.backends.python import instance, process
    from shipyard.serving_runtime.scheduling import dynamic, instances

    now = time.monotonic_ns
    process.STUB_MODULE = "benchmarks.py_c1_trace_stub"

    def hand_off(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any, *args: Any) -> Any:
            batch.stamps = {"kick": now(), "size": batch.size}
            return orig(self, batch, *args)

        return wrapped

    def run_batch(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any) -> Any:
            stamps = getattr(batch, "stamps", None)
            if stamps is not None:
                stamps["worker"] = now()
            _LOCAL.stamps = stamps
            try:
                return orig(self, batch)
            finally:
                _LOCAL.stamps = None

        return wrapped

    def describe(orig: Any) -> Any:
        def wrapped(self: Any, requests: Any, keys: list[int]) -> Any:
            stamps = getattr(_LOCAL, "stamps", None)
            if stamps is not None:
                _ROWS[keys[0]] = stamps
            return orig(self, requests, keys)

        return wrapped

    def call(orig: Any) -> Any:
        def wrapped(self: Any, message: Any, timeout_s: Any) -> Any:
            stamps = getattr(_LOCAL, "stamps", None) if message[0] == "exec" else None
            if stamps is not None:
                stamps["send"] = now()
            reply = orig(self, message, timeout_s)
            if stamps is not None:
                stamps["recvd"] = now()
            return reply

        return wrapped

    def results(orig: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = orig(*args, **kwargs)
            stamps = getattr(_LOCAL, "stamps", None)
            if stamps is not None:
                stamps["results"] = now()
            return result

        return wrapped

    def done(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any) -> Any:
            stamps = getattr(batch, "stamps", None)
            if stamps is not None:
                stamps["done_cb"] = now()
            result = orig(self, batch)
            if stamps is not None:
                stamps["answered"] = now()
            return result

        return wrapped

    _patch(instances.InstanceWorker, "hand_off", hand_off)
    _patch(instances.InstanceWorker, "run_batch", run_batch)
    _patch(instance.PythonInstance, "_describe", describe)
    _patch(process.StubProcess, "call", call)
    _patch(instance.PythonInstance, "_results", results)
    _patch(dynamic.DynamicBatcher, "_on_batch_done", done)


_HOPS = (
    ("A", "s_req", "A", "s_model"),
    ("A", "s_model", "A", "s_reply"),
    ("A", "s_reply", "A", "s_sent"),
    ("A", "s_reply", "A", "recvd"),
    ("A", "s_sent", "A", "recvd"),
    ("A", "recvd", "A", "results"),
    ("A", "results", "A", "done_cb"),
    ("A", "done_cb", "B", "kick"),
    ("B", "kick", "B", "worker"),
    ("B", "worker", "B", "send"),
    ("B", "send", "B", "s_recv"),
    ("B", "s_recv", "B", "s_req"),
    ("A", "done_cb", "A", "answered"),
)


def _summary(stub_out: Path) -> str:
    stub = _stub_rows(stub_out)
    rows = [{**stamps, **stub[key]} for key, stamps in list(_ROWS.items())[-5000:] if key in stub]
    _ROWS.clear()
    needed = {"kick", "worker", "send", "recvd", "results", "done_cb", "answered", "s_recv", "s_req", "s_model",
              "s_sent", "s_reply"}  # fmt: skip
    rows = sorted((row for row in rows if needed <= row.keys()), key=lambda row: row["s_recv"])
    if len(rows) < 3:
        return "too few traced batches\n"
    lines = [f"batches traced: {len(rows)}, average batch {statistics.mean(r['size'] for r in rows):.1f}"]
    pairs = list(itertools.pairwise(rows))
    for a_side, a_key, b_side, b_key in _HOPS:
        d = [(b if b_side == "B" else a)[b_key] - (a if a_side == "A" else b)[a_key] for a, b in pairs]
        lines.append(
            f"{a_side}.{a_key:>8s} -> {b_side}.{b_key:<8s} p50 {statistics.median(d) / 1e3:8.1f} us "
            f"mean {statistics.mean(d) / 1e3:8.1f} us"
        )
    gap = [b["s_req"] - a["s_model"] for a, b in pairs]
    busy = sum(r["s_model"] - r["s_req"] for r in rows) / (rows[-1]["s_model"] - rows[0]["s_req"])
    lines.append(f"model idle between executes p50 {statistics.median(gap) / 1e3:.1f} us, in execute {busy:.0%}")
    return "\n".join(lines) + "\n"


def serve(out: Path, argv: list[str]) -> int:
    """The traced server: writes the summary to ``out`` on SIGUSR1."""
    _install()
    stub_out = Path(os.environ[STUB_OUT_ENV])
    signal.signal(signal.SIGUSR1, lambda *_: out.write_text(_summary(stub_out)))
    from shipyard.serving_runtime.cli import main

    return int(main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shipyard-args", default="")
    parser.add_argument("--server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server is not None:
        return serve(Path(args.server[0]), args.server[1:])
    mlp = common.load_model_spec("wide_mlp")
    with tempfile.TemporaryDirectory(prefix="shipyard-py-gap-") as tmp:
        work = Path(tmp)
        repo = python_models.write_repository(work / "repo", mlp, for_triton=False)
        rest, grpc_port = common.free_port(), common.free_port()
        out, stub_out = work / "trace.txt", work / "stub"
        argv_server = [sys.executable, "-m", "benchmarks.py_gap_trace", "--server", str(out), "--model-repository",
                       str(repo), "--host", "127.0.0.1", "--http-port", str(rest), "--grpc-port", str(grpc_port),
                       *shlex.split(args.shipyard_args)]  # fmt: skip
        env = {"OMP_NUM_THREADS": "1", STUB_OUT_ENV: str(stub_out)}
        server = common.ServerProcess("traced", argv_server, work / "server.log", env=env)
        server.start()
        try:
            from benchmarks.targets import grpc_spec, http_probe

            server.wait_ready(http_probe(rest, "/v2/health/ready"), 180)
            spec: LoadSpec = grpc_spec(grpc_port)(common.ModelSpec("mlp_py", mlp.onnx_path, mlp.inputs, mlp.outputs))
            for number in range(args.rounds):
                run_closed_loop(spec, args.concurrency, 0.5, 0.5, 2, "native")
                os.kill(server.pid, signal.SIGUSR1)  # drop what warm-up and earlier rounds traced
                time.sleep(0.3)
                cell = run_closed_loop(spec, args.concurrency, 0.2, args.seconds, 2, "native")
                time.sleep(0.6)  # the stub flushes its stamps every 0.5 s
                os.kill(server.pid, signal.SIGUSR1)
                time.sleep(0.5)
                rate, p50 = cell.throughput, cell.p50_ms or 0
                print(f"round {number + 1}: c={args.concurrency} {rate:.0f} inf/s, p50 {p50:.2f} ms")
                print(out.read_text() if out.exists() else "no summary (see the server log)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where one request's time goes at concurrency 1 on the native gRPC fast path: per-stage stamps.

    python -m benchmarks.c1_trace [--model wide_mlp] [--seconds 3] [--rounds 2]

Starts shipyard's runtime (the benchmark's repository and config, native frontend) with stage
stamps (``time.monotonic_ns``) wrapped around the fast path's functions, loads it with the C++
closed-loop client at concurrency 1 and prints, per stage, the median time from the previous
one: grpc's thread took the request (``arrival``), the event loop woke (``drain``), the group's
task started (``task``), reached the batcher (``submit``), was handed to the instance thread
(``kick``), which woke (``worker``) and computed (``cstart`` .. ``cend``); then either the instance
thread answered (``prep0``: ``answer_early`` called; ``send0``: the answer goes to grpc on that
thread) or the loop took the batch's completion (``done_cb``), resumed the task (``resumed``) and
answered (``end``: after ``complete``, which queues the answer for the writer thread). The only
call in progress on a one-instance model computes on the loop instead (``inline``, then ``cstart``
.. ``cend`` on the loop's thread; ``SHIPYARD_FAST_LONE_INLINE=0`` in the environment traces the
instance thread's path). The
client's own p50 is printed beside it: the difference is grpc's read and write path, the writer
thread and the client. Figures from a loaded machine are inflated, but the stages compare.
``--server`` is the traced server's own entry point (used by the command above).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common, targets
from benchmarks.loadgen import run_closed_loop

_ROWS: list[dict[str, int]] = []
_CURRENT: dict[str, Any] = {}


def _patch(owner: Any, name: str, make: Any) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def _install() -> None:
    """Wrap the fast path's stages with stamps (in the server process)."""
    from shipyard.serving_runtime.protocol import native_fast, native_grpc
    from shipyard.serving_runtime.scheduling import dynamic, instances

    now = time.monotonic_ns

    def drain(orig: Any) -> Any:
        def wrapped(self: Any) -> Any:
            _CURRENT["drain"] = now()
            return orig(self)

        return wrapped

    def run(orig: Any) -> Any:
        async def wrapped(self: Any, batch: Any, *args: Any) -> None:
            stamps = {"arrival": batch.arrivals[0], "drain": _CURRENT.get("drain", 0), "task": now()}
            _CURRENT["stamps"] = stamps
            await orig(self, batch, *args)
            stamps["end"] = now()
            _ROWS.append(stamps)

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

    def hand_off(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any, handoff_s: float = 0.0) -> None:
            stamps = _CURRENT.get("stamps", {})
            stamps["kick"] = now()
            batch.trace_stamps = stamps
            orig(self, batch, handoff_s)

        return wrapped

    def run_batch(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any) -> None:
            stamps = getattr(batch, "trace_stamps", None)
            if stamps is None:  # not handed off: run inline, on the loop's thread, for the current group
                stamps = _CURRENT.get("stamps", {})
                stamps["inline"] = now()
            else:
                stamps["worker"] = now()
            orig(self, batch)
            stamps["cstart"], stamps["cend"] = batch.compute_start_ns, batch.compute_end_ns

        return wrapped

    def on_done(orig: Any) -> Any:
        def wrapped(self: Any, batch: Any) -> None:
            getattr(batch, "trace_stamps", {})["done_cb"] = now()
            orig(self, batch)

        return wrapped

    _patch(native_grpc.NativeGrpcFrontend, "_drain", drain)
    _patch(native_fast.FastPath, "_run", run)
    _patch(dynamic.DynamicBatcher, "submit", submit)
    _patch(instances.InstanceWorker, "hand_off", hand_off)
    _patch(instances.InstanceWorker, "run_batch", run_batch)
    _patch(dynamic.DynamicBatcher, "_on_batch_done", on_done)
    early = getattr(native_fast, "_EarlyAnswer", None)
    if early is not None:
        owners: dict[int, dict[str, int]] = {}

        def init(orig: Any) -> Any:
            def wrapped(self: Any, *args: Any) -> None:
                orig(self, *args)
                owners[id(self)] = _CURRENT.get("stamps", {})

            return wrapped

        def prepare(orig: Any) -> Any:
            def wrapped(self: Any, results: Any) -> Any:
                stamps = owners.pop(id(self), {})
                stamps["prep0"] = now()
                send = orig(self, results)
                if send is None:
                    return None

                def timed() -> None:
                    stamps["send0"] = now()
                    send()

                return timed

            return wrapped

        _patch(early, "__init__", init)
        _patch(early, "prepare", prepare)


def _summary() -> str:
    rows = [row for row in _ROWS[-5000:] if "cend" in row]
    _ROWS.clear()
    if not rows:
        return "no traced requests\n"
    # the requests that took the most common path (e.g. not the first one, which measures the cost)
    common_path = collections.Counter(frozenset(row) for row in rows).most_common(1)[0][0]
    rows = [row for row in rows if frozenset(row) == common_path]
    keys = list(common_path)
    order = sorted(keys, key=lambda k: statistics.median(row[k] - row["arrival"] for row in rows))
    lines = [f"requests traced: {len(rows)}"]
    for a, b in itertools.pairwise(order):
        d = [row[b] - row[a] for row in rows]
        lines.append(f"{a:>9s} -> {b:<9s} p50 {statistics.median(d) / 1e3:8.1f} us")
    return "\n".join(lines) + "\n"


def serve(out: Path, argv: list[str]) -> int:
    """The traced server: writes the summary to ``out`` on SIGUSR1 (and clears it) and at exit."""
    _install()
    signal.signal(signal.SIGUSR1, lambda *_: out.write_text(_summary()))
    atexit.register(lambda: out.write_text(_summary()))
    from shipyard.serving_runtime.cli import main

    return int(main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="wide_mlp")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", default="native", choices=("native", "python"))
    parser.add_argument("--server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server is not None:
        return serve(Path(args.server[0]), args.server[1:])
    model = common.load_model_spec(args.model)
    with tempfile.TemporaryDirectory(prefix="shipyard-c1-trace-") as tmp:
        work = Path(tmp)
        repo = targets.write_shipyard_repository(work / "repo", [model], None, 0)
        rest, grpc_port = common.free_port(), common.free_port()
        out = work / "trace.txt"
        argv_server = [sys.executable, "-m", "benchmarks.c1_trace", "--server", str(out), "--model-repository",
                       str(repo), "--host", "127.0.0.1", "--http-port", str(rest), "--grpc-port", str(grpc_port),
                       "--grpc-frontend", "native"]  # fmt: skip
        server = common.ServerProcess("traced", argv_server, work / "server.log", env={"OMP_NUM_THREADS": "1"})
        server.start()
        try:
            probe = targets.all_probes(
                targets.http_probe(rest, "/v2/health/ready"),
                targets.grpc_probe(grpc_port, common.grpc_request_bytes(model)),
            )
            server.wait_ready(probe, 120)
            spec = targets.grpc_spec(grpc_port)(model)
            for number in range(args.rounds):
                os.kill(server.pid, signal.SIGUSR1)  # drop what warm-up and earlier rounds traced
                time.sleep(0.3)
                cell = run_closed_loop(spec, 1, 0.5, args.seconds, 1, args.client)
                os.kill(server.pid, signal.SIGUSR1)
                time.sleep(0.5)
                print(f"round {number + 1}: client p50 {cell.p50_ms or 0:.3f} ms, {cell.throughput:.0f} inf/s")
                print(out.read_text() if out.exists() else "no summary (see the server log)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

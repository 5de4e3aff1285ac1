"""Does ONNX Runtime's run of the wide MLP slow down with what happens around it? (c=1 suspects)

    python -m benchmarks.ort_gap [--rounds 5] [--runs 200] [--gap-us 600]

In one process, the wide MLP's one-thread session (batch 1, the benchmark's input) is timed (the
thread's CPU time per run, p50) in interleaved blocks: back to back; with a sleep of ``--gap-us``
between runs (what a model process does at c=1 while the server answers and the next request
comes: the core idles or runs something else); with a yielding spin of that length instead (what
a stub that polls for its next call does); and back to back while another process spins on the
other core, and while it streams 64 MB (as a server's threads beside the model process would).
A run slower after a sleep points at the idle core (caches, frequency); slower beside a busy
core at shared caches, memory bandwidth or a shared physical core (docs/serving.md, "The c=1
gap, measured from inside the model"). Needs a quiet machine: under other load every block is
inflated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common

_SPIN = "while True: pass"
_STREAM = "import numpy as np\na = np.ones(16_000_000, np.float32)\nwhile True: a.sum()"


def _block(run: Callable[[], Any], runs: int, between: Callable[[], None] | None) -> float:
    times = []
    for _ in range(runs):
        start = time.thread_time_ns()
        run()
        times.append(time.thread_time_ns() - start)
        if between is not None:
            between()
    return statistics.median(times) / 1e6


def _beside(code: str, run: Callable[[], Any], runs: int) -> float:
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)  # started, its array allocated
        return _block(run, runs, None)
    finally:
        other.kill()
        other.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ort_gap", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="runs per block")
    parser.add_argument("--gap-us", type=float, default=600.0)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    mlp = common.load_model_spec("wide_mlp")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(mlp.onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = mlp.example_inputs(1)
    gap_s = args.gap_us / 1e6

    def run() -> Any:
        return session.run(None, feeds)

    def spin() -> None:
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            os.sched_yield()

    for _ in range(50):
        run()
    print(f"ORT CPU time per run, p50 ms ({args.runs} runs per block, gap {args.gap_us:g} us):")
    print("| round | back to back | sleep between | yield-spin between | beside a spinning core | beside streaming |")
    print("|---:|---:|---:|---:|---:|---:|")
    for number in range(args.rounds):
        cells = [
            _block(run, args.runs, None),
            _block(run, args.runs, lambda: time.sleep(gap_s)),
            _block(run, args.runs, spin),
            _beside(_SPIN, run, args.runs),
            _beside(_STREAM, run, args.runs),
        ]
        load = os.getloadavg()[0]
        print(f"| {number + 1} | " + " | ".join(f"{c:.3f}" for c in cells) + f" |  (load {load:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

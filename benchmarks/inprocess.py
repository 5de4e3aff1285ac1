"""The in-process limit: the ONNX Runtime session alone (one intra-op thread), swept over batch sizes.

No server, no serialization: how many inferences/s the backend itself can do on this machine, at
batch 1 and at its best batch size. Run as its own process by the benchmark:
``python -m benchmarks.inprocess --onnx PATH --batches 1,2,4,...,128 --seconds 1.0`` prints one JSON
object ``{"sweep": {"1": inf/s, ...}, "batch1": inf/s, "best_batch": b, "best": inf/s}``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def measure(onnx_path: str, batches: list[int], seconds: float, max_runs: int = 100_000) -> dict[str, Any]:
    """Inferences/s of the session at each batch size (each measured for about ``seconds``, >= 3 runs).

    Raises: ValueError for an empty batch list or a non-positive time.
    """
    if not batches or seconds <= 0:
        raise ValueError(f"need at least one batch size and seconds > 0; got {batches}, {seconds}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    outputs = [o.name for o in session.get_outputs()]
    sweep: dict[str, float] = {}
    for batch in batches:
        feeds = {i.name: rng.standard_normal((batch, *i.shape[1:])).astype(np.float32) for i in session.get_inputs()}
        session.run(outputs, feeds)  # warm-up
        runs = 0
        start = time.perf_counter()
        elapsed = 0.0
        while runs < max_runs and (runs < 3 or elapsed < seconds):
            session.run(outputs, feeds)
            runs += 1
            elapsed = time.perf_counter() - start
        sweep[str(batch)] = batch * runs / elapsed
    best_batch = max(sweep, key=lambda b: sweep[b])
    return {
        "sweep": sweep,
        "batch1": sweep.get("1"),
        "best_batch": int(best_batch),
        "best": sweep[best_batch],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    print(json.dumps(measure(args.onnx, batches, args.seconds)))


if __name__ == "__main__":
    main()

"""Helpers for the ``shipyard score`` tests: a tiny model repository and a real serving runtime over it
(fixtures in conftest.py).

``affine``: x FP32 [4] -> y = 2x + 1 [4] and total = sum(x) [1]; max_batch_size 32, preferred batch 16,
two priority levels (as the publish step writes them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from helpers import free_port

AFFINE_CONFIG = """
name: "affine"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "total" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { preferred_batch_size: [ 16 ] max_queue_delay_microseconds: 500
                   priority_levels: 2 default_priority_level: 1 }
"""


# the same model, with priority level 2 timing out after 50 ms in a queue that waits 400 ms for a batch
PRIO_CONFIG = AFFINE_CONFIG.replace('"affine"', '"prio"').replace(
    "preferred_batch_size: [ 16 ] max_queue_delay_microseconds: 500",
    "preferred_batch_size: [ 32 ] max_queue_delay_microseconds: 400000 priority_queue_policy { key: 2 value: "
    "{ default_timeout_microseconds: 50000 timeout_action: REJECT } }",
)
# the same model, with one queued request at most at priority level 2 (the batch job's)
TIGHT_CONFIG = AFFINE_CONFIG.replace('"affine"', '"tight"').replace(
    "max_queue_delay_microseconds: 500",
    "max_queue_delay_microseconds: 2000 priority_queue_policy { key: 2 value: { max_queue_size: 1 } }",
)

# the same model, whose priority level 2 is a background level run in 4-row slices while real-time work was
# seen in the last 60 s (serving_runtime/scheduling/slicing.py)
SLICED_CONFIG = AFFINE_CONFIG.replace('"affine"', '"sliced"').replace(
    "preferred_batch_size: [ 16 ] max_queue_delay_microseconds: 500 ", ""
) + (
    'parameters { key: "background_slice_rows" value: { string_value: "4" } }\n'
    'parameters { key: "background_recent_us" value: { string_value: "60000000" } }\n'
)


def affine_onnx() -> bytes:
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


def write_model(repo: Path, name: str, onnx_bytes: bytes, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.onnx").write_bytes(onnx_bytes)


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_runtime(repo: Path, log: Path, *extra: str, ports: tuple[int, int] | None = None) -> Runtime:
    """``python -m shipyard.serving_runtime`` on ``ports`` (http, grpc; default: free ones), waited until ready."""
    http_port, grpc_port = ports or (free_port(), free_port())
    args = [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(repo), "--host", "127.0.0.1",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]  # fmt: skip
    with open(log, "wb") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    runtime = Runtime(process, http_port, grpc_port, log)
    deadline = time.monotonic() + 60
    while not _ready(f"{runtime.http_url}/v2/health/ready"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"runtime did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return runtime


def make_features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)

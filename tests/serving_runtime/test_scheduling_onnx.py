"""The dynamic batcher with real ONNX Runtime instances from the onnxruntime backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from shipyard.serving_runtime.backends.base import BackendInstance, Device, InstanceSettings
from shipyard.serving_runtime.backends.onnxruntime import OnnxRuntimeBackend
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.scheduling import InferenceRequest, create_scheduler
from shipyard.zoo import onnx_model


class Recorded:
    """A real instance, with each execution's batch size and interval recorded."""

    def __init__(self, inner: BackendInstance) -> None:
        self.inner = inner
        self.runs: list[tuple[int, float, float]] = []
        self._lock = threading.Lock()

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        start = time.monotonic()
        result = self.inner.execute(inputs, outputs)
        with self._lock:
            self.runs.append((next(iter(inputs.values())).shape[0], start, time.monotonic()))
        return result

    def close(self) -> None:
        self.inner.close()


def load(path: Path, count: int) -> list[Recorded]:
    backend = OnnxRuntimeBackend()
    settings = InstanceSettings(device=Device("cpu"), parameters={"intra_op_thread_count": "1"}, max_batch_size=256)
    return [Recorded(backend.load(path, settings)) for _ in range(count)]


ADD_SUB = """
name: "add_sub"
max_batch_size: {mbs}
input {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}
input {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
output {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}
output {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
dynamic_batching {{ }}
"""


def add_sub_request(seed: int, rows: int = 1) -> tuple[InferenceRequest, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, 16), dtype=np.float32)
    b = np.full((rows, 16), float(seed), dtype=np.float32)
    return InferenceRequest(inputs={"INPUT0": a, "INPUT1": b}, batch_size=rows), a, b


async def test_real_onnx_batches_under_load_and_answers_each_request() -> None:
    instances = load(onnx_model("add_sub"), 1)
    scheduler = create_scheduler(parse_config_text(ADD_SUB.format(mbs=64)), instances, "add_sub", 1)
    cases = [add_sub_request(i, rows=1 + i % 3) for i in range(200)]
    results = await asyncio.gather(*(scheduler.submit(req) for req, _, _ in cases))
    for (_, a, b), outputs in zip(cases, results, strict=True):
        np.testing.assert_allclose(outputs["OUTPUT0"], a + b, rtol=1e-6)
        np.testing.assert_allclose(outputs["OUTPUT1"], a - b, rtol=1e-6)
    stats = scheduler.stats
    assert stats.inference_count == sum(req.batch_size for req, _, _ in cases)
    assert stats.execution_count < len(cases), "no batch formed under concurrent load"
    assert max(run[0] for run in instances[0].runs) <= 64
    scheduler.close()


async def test_real_onnx_at_concurrency_one_never_batches() -> None:
    instances = load(onnx_model("add_sub"), 1)
    scheduler = create_scheduler(parse_config_text(ADD_SUB.format(mbs=64)), instances, "add_sub", 1)
    for i in range(20):
        req, a, b = add_sub_request(i)
        outputs = await scheduler.submit(req)
        np.testing.assert_allclose(outputs["OUTPUT0"], a + b, rtol=1e-6)
    assert scheduler.stats.execution_count == scheduler.stats.inference_count == 20
    scheduler.close()


WIDE = """
name: "wide_mlp"
max_batch_size: 256
input { name: "input" data_type: TYPE_FP32 dims: [ 512 ] }
output { name: "output" data_type: TYPE_FP32 dims: [ 512 ] }
dynamic_batching { }
instance_group { count: 2 kind: KIND_CPU }
"""


@pytest.mark.slow
async def test_real_onnx_two_instances_execute_at_the_same_time() -> None:
    instances = load(onnx_model("wide_mlp"), 2)
    scheduler = create_scheduler(parse_config_text(WIDE), instances, "wide_mlp", 1)
    x = np.random.default_rng(0).standard_normal((256, 512), dtype=np.float32)
    reference = instances[0].inner.execute({"input": x}, ())["output"]
    for _ in range(3):  # full batches cannot merge: each pair goes to the two instances at once
        outs = await asyncio.gather(*(scheduler.submit(InferenceRequest({"input": x}, batch_size=256)) for _ in "ab"))
        for out in outs:
            np.testing.assert_allclose(out["output"], reference, rtol=1e-4, atol=1e-5)
    (a, b) = (instances[0].runs, instances[1].runs)
    assert len(a) == len(b) == 3
    overlaps = sum(ra[1] < rb[2] and rb[1] < ra[2] for ra, rb in zip(a, b, strict=True))
    assert overlaps >= 1, f"instance executions never overlapped: {a} {b}"
    scheduler.close()

"""Prometheus metrics: Triton's names and labels, values from real scheduler traffic."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import BackendError, QueueFull
from shipyard.serving_runtime.metrics import UtilizationSampler, build_registry, render
from shipyard.serving_runtime.scheduling import InferenceRequest, create_scheduler
from shipyard.serving_runtime.stats import ModelStats


class Doubler:
    def __init__(self, compute_s: float = 0.0) -> None:
        self.compute_s = compute_s
        self.gate: threading.Event | None = None

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if (x < 0).any():
            raise RuntimeError("negative input")
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.compute_s)
        return {"y": x * 2}

    def close(self) -> None:
        pass


CONFIG = """
name: "doubler"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }
dynamic_batching { default_queue_policy { max_queue_size: 40 } }
"""


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample lines exactly as scraped (prometheus_client's parser would rename counters to *_total)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        out[(match.group(1), labels)] = float(match.group(3))
    return out


def test_text_is_valid_prometheus_exposition() -> None:
    stats = ModelStats("m", 1)
    text = render(build_registry(lambda: [stats]))[0].decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"nv_inference_request_success", "nv_inference_pending_request_count"} <= families


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


async def test_model_metrics_carry_triton_names_labels_and_values() -> None:
    scheduler = create_scheduler(parse_config_text(CONFIG), [Doubler(compute_s=0.01)], "doubler", 3)
    x = np.ones((1, 2), dtype=np.float32)
    await asyncio.gather(*(scheduler.submit(InferenceRequest(inputs={"x": x})) for _ in range(32)))
    await scheduler.submit(InferenceRequest(inputs={"x": np.ones((3, 2), dtype=np.float32)}, batch_size=3))
    with pytest.raises(BackendError):
        await scheduler.submit(InferenceRequest(inputs={"x": -x}))
    flood = [asyncio.ensure_future(scheduler.submit(InferenceRequest(inputs={"x": x}))) for _ in range(60)]
    results = await asyncio.gather(*flood, return_exceptions=True)
    rejected = sum(isinstance(r, QueueFull) for r in results)
    assert rejected > 0

    idle = ModelStats("other", 1)
    registry = build_registry(lambda: [scheduler.stats, idle])
    body, content_type = render(registry)
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert f"# TYPE {name} counter\n" in text, name
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    assert "_total" not in text  # Triton's counters have no suffix
    parsed = samples(text)
    m = {"model": "doubler", "version": "3"}
    ok = 32 + 1 + (60 - rejected)
    assert value(parsed, "nv_inference_request_success", **m) == ok
    assert value(parsed, "nv_inference_count", **m) == ok + 2  # the batch-of-3 request counts 3 items
    executions = value(parsed, "nv_inference_exec_count", **m)
    assert executions < ok  # batching showed: fewer executions than inferences
    assert value(parsed, "nv_inference_request_failure", **m, reason="BACKEND") == 1
    assert value(parsed, "nv_inference_request_failure", **m, reason="REJECTED") == rejected
    assert value(parsed, "nv_inference_request_failure", **m, reason="CANCELED") == 0
    assert value(parsed, "nv_inference_request_failure", **m, reason="OTHER") == 0
    assert value(parsed, "nv_inference_pending_request_count", **m) == 0
    assert value(parsed, "nv_inference_compute_infer_duration_us", **m) >= 10_000 * executions * 0.5
    assert value(parsed, "nv_inference_request_duration_us", **m) > 0
    # histograms: counts agree with the counters
    assert value(parsed, "shipyard_inference_request_duration_seconds_count", **m) == ok
    assert value(parsed, "shipyard_inference_request_duration_seconds_bucket", **m, le="+Inf") == ok
    assert value(parsed, "shipyard_inference_batch_size_count", **m) == executions
    assert value(parsed, "shipyard_inference_batch_size_sum", **m) == ok + 2
    assert value(parsed, "shipyard_inference_batch_size_bucket", **m, le="1.0") <= executions
    # a model with no traffic still shows its series at zero
    assert value(parsed, "nv_inference_request_success", model="other", version="1") == 0
    scheduler.close()


async def test_pending_gauge_counts_queued_and_running_requests() -> None:
    doubler = Doubler()
    scheduler = create_scheduler(parse_config_text(CONFIG), [doubler], "doubler", 1)
    registry = build_registry(lambda: [scheduler.stats])
    x = np.ones((1, 2), dtype=np.float32)
    gate = threading.Event()
    doubler.gate = gate
    tasks = [asyncio.ensure_future(scheduler.submit(InferenceRequest(inputs={"x": x}))) for _ in range(5)]
    for _ in range(1000):
        if scheduler.pending_count() == 5:
            break
        await asyncio.sleep(0.005)
    parsed = samples(render(registry)[0].decode())
    assert value(parsed, "nv_inference_pending_request_count", model="doubler", version="1") == 5
    gate.set()
    await asyncio.gather(*tasks)
    parsed = samples(render(registry)[0].decode())
    assert value(parsed, "nv_inference_pending_request_count", model="doubler", version="1") == 0
    scheduler.close()


def test_utilization_sampler_reports_cpu_and_survives_without_nvml() -> None:
    sampler = UtilizationSampler(interval_s=0.05)
    registry = build_registry(list, sampler=sampler)
    try:
        sampler.start()
        time.sleep(0.2)
        text = render(registry)[0].decode()
        cpu = float(re.search(r"^nv_cpu_utilization (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        assert 0.0 <= cpu <= 1.0
        assert re.search(r"^nv_cpu_memory_total_bytes \d", text, re.M)
        if sampler.gpu_available:
            assert re.search(r'^nv_gpu_memory_total_bytes\{gpu_uuid="[^"]+"\} \d', text, re.M)
            assert re.search(r'^nv_gpu_utilization\{gpu_uuid="[^"]+"\} ', text, re.M)
        else:  # no NVML / no GPU here: no GPU series, no error
            assert "nv_gpu_" not in text
    finally:
        sampler.stop()
    sampler.stop()  # idempotent


def test_sampler_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        UtilizationSampler(interval_s=0)


@pytest.mark.gpu
def test_gpu_metrics_through_nvml() -> None:
    sampler = UtilizationSampler(interval_s=0.05)
    try:
        sampler.start()
        assert sampler.gpu_available, "NVML found no GPU"
        text = render(build_registry(list, sampler=sampler))[0].decode()
        total = re.search(r'^nv_gpu_memory_total_bytes\{gpu_uuid="GPU-[^"]+"\} (\S+)$', text, re.M)
        assert total and float(total.group(1)) > 1e9
    finally:
        sampler.stop()

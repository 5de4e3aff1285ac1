"""Tiny models run inline: on the event loop thread, at once, when nothing is queued.

The fake instance doubles its input and records the thread each execution ran on, so a test can
tell inline executions (the loop's thread) from the instance thread's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from shipyard.serving_runtime.backends.base import Device, InstanceSettings
from shipyard.serving_runtime.backends.onnxruntime import OnnxRuntimeBackend
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import BackendError
from shipyard.serving_runtime.scheduling import InferenceRequest, create_scheduler, inline
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher
from shipyard.serving_runtime.scheduling.inline_cost import ComputeEstimate
from shipyard.zoo import onnx_model


class ThreadRecording:
    """Doubles ``x``; records (thread id, batch size) per execution; sleeps ``compute_s``."""

    def __init__(self, compute_s: float = 0.0, inline_safe: bool = True) -> None:
        self.compute_s = compute_s
        self.inline_safe = inline_safe
        self.runs: list[tuple[int, int]] = []
        self.closed = False
        self.runs_when_closed = -1
        self.on_execute: Callable[[], None] | None = None

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if (x < 0).any():
            raise RuntimeError("negative input")
        if self.on_execute is not None:
            self.on_execute()
        if self.compute_s:
            time.sleep(self.compute_s)
        self.runs.append((threading.get_ident(), x.shape[0]))
        return {"y": x * 2}

    def close(self) -> None:
        self.closed = True
        self.runs_when_closed = len(self.runs)


CONFIG = """
name: "m"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }}
{batching}
"""


@pytest.fixture(autouse=True)
def steady(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budgets a loaded CI machine cannot upset: the fake (microseconds) is always within 1 ms,
    the 2 ms "slow" fake never is, and only a 10 ms inline batch counts as a stall."""
    monkeypatch.setattr(inline, "INLINE_MAX_COMPUTE_NS", 1_000_000)
    monkeypatch.setattr(inline, "INLINE_STALL_NS", 10_000_000)


def make(instance: ThreadRecording, batching: str = "dynamic_batching { }") -> DynamicBatcher:
    made = create_scheduler(parse_config_text(CONFIG.format(batching=batching)), [instance], "m", 1)
    assert isinstance(made, DynamicBatcher)
    return made


def req(value: float, rows: int = 1) -> InferenceRequest:
    return InferenceRequest(inputs={"x": np.full((rows, 4), value, np.float32)}, batch_size=rows)


async def warm(s: DynamicBatcher, instance: ThreadRecording) -> None:
    """Submit until a request runs inline (the cost is measured), then forget the runs."""
    for _ in range(10):
        await s.submit(req(0))
        if instance.runs[-1][0] == threading.get_ident():
            instance.runs.clear()
            return
    raise AssertionError("a tiny model never ran inline")


async def test_tiny_model_runs_on_the_loop_once_its_cost_is_known() -> None:
    instance = ThreadRecording()
    s = make(instance)
    loop_thread = threading.get_ident()
    for i in range(10):
        out = await s.submit(req(i))
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * i, np.float32))
    inline = [run[0] == loop_thread for run in instance.runs]
    # the first request measures the cost on the instance thread (a cold first run may take one
    # or two more); from then on every request runs inline
    assert inline[0] is False
    first = inline.index(True)
    assert first <= 3 and all(inline[first:]), inline
    stats = s.stats
    assert stats.execution_count == stats.inference_count == 10
    assert stats.success.count == 10 and stats.pending == 0 and s.pending_count() == 0
    s.close()
    assert instance.closed


@pytest.mark.parametrize(
    ("instance", "batching"),
    [
        (ThreadRecording(compute_s=0.002), "dynamic_batching { }"),  # too slow for the loop
        (ThreadRecording(inline_safe=False), "dynamic_batching { }"),  # instance not inline-safe
        (ThreadRecording(), "dynamic_batching { max_queue_delay_microseconds: 2000 }"),  # asks to wait
    ],
    ids=["slow", "not-inline-safe", "queue-delay"],
)
async def test_never_inline_for_slow_unsafe_or_delayed_models(instance: ThreadRecording, batching: str) -> None:
    s = make(instance, batching)
    for i in range(5):
        await s.submit(req(i))
    assert threading.get_ident() not in {run[0] for run in instance.runs}
    s.close()


async def test_a_request_too_large_for_the_loop_goes_to_the_instance_thread() -> None:
    instance = ThreadRecording(compute_s=0.0)
    s = make(instance)
    await s.submit(req(0))
    quarter = inline.INLINE_MAX_COMPUTE_NS // 4
    s._inline.cost = ComputeEstimate(1.05)
    s._inline.cost.observe(quarter, 1)  # as if measured: a lone item costs a quarter of the inline budget
    await s.submit(req(1, rows=2))  # 2 items, none of that size seen: at most 2 quarters, inline
    s._inline.cost = ComputeEstimate(1.05)
    s._inline.cost.observe(quarter, 1)
    await s.submit(req(2, rows=8))  # 8 items: twice the budget, on the instance thread
    loop_thread = threading.get_ident()
    assert [(run[0] == loop_thread, run[1]) for run in instance.runs[1:]] == [(True, 2), (False, 8)]
    s.close()


async def test_an_inline_stall_moves_the_model_back_to_its_thread_at_once() -> None:
    instance = ThreadRecording()
    s = make(instance)
    await warm(s, instance)
    await s.submit(req(1))  # inline
    instance.compute_s = 0.02  # the model got slow (e.g. larger inputs): one inline run sees it
    await s.submit(req(2))
    await s.submit(req(3))
    loop_thread = threading.get_ident()
    assert [run[0] == loop_thread for run in instance.runs] == [True, True, False]
    s.close()


async def test_inline_backend_error_fails_only_that_request() -> None:
    instance = ThreadRecording()
    s = make(instance)
    await warm(s, instance)
    with pytest.raises(BackendError, match="negative input"):
        await s.submit(req(-1))
    np.testing.assert_array_equal((await s.submit(req(3)))["y"], np.full((1, 4), 6.0, np.float32))
    assert s.stats.failures_by_reason["BACKEND"] == 1 and s.pending_count() == 0
    assert {run[0] for run in instance.runs} == {threading.get_ident()}  # both ran inline
    s.close()


async def test_concurrent_requests_to_a_tiny_model_each_get_their_own_answer() -> None:
    instance = ThreadRecording()
    s = make(instance)
    await s.submit(req(0))
    values = list(range(1, 65))
    results = await asyncio.gather(*(s.submit(req(v)) for v in values))
    for v, out in zip(values, results, strict=True):
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * v, np.float32))
    assert s.stats.inference_count == 65
    s.close()


async def test_unloading_a_model_while_it_runs_inline_waits_for_that_batch() -> None:
    """A close from another thread (the manager's unload) that starts during an inline batch
    closes the instance only after that batch; the request still gets its answer."""
    instance = ThreadRecording()
    s = make(instance)
    await warm(s, instance)
    closer = threading.Thread(target=s.close)
    instance.on_execute = closer.start  # starts while the inline batch is inside the backend
    instance.compute_s = 0.05
    out = await s.submit(req(1))
    np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0, np.float32))
    closer.join(10)
    assert instance.closed and instance.runs_when_closed == 1
    assert instance.runs[0][0] == threading.get_ident()  # that batch did run inline


def test_cpu_onnx_runtime_sessions_are_inline_safe(tmp_path: Path) -> None:
    settings = InstanceSettings(device=Device("cpu"), parameters={"intra_op_thread_count": "1"}, max_batch_size=8)
    instance = OnnxRuntimeBackend().load(onnx_model("add_sub"), settings)
    try:
        assert getattr(instance, "inline_safe", False) is True
    finally:
        instance.close()


async def test_models_without_dynamic_batching_run_inline_one_by_one() -> None:
    instance = ThreadRecording()
    s = make(instance, batching="")  # no dynamic_batching: requests run one by one
    await warm(s, instance)
    results = await asyncio.gather(*(s.submit(req(v, rows=2)) for v in range(5)))
    for v, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((2, 4), 2.0 * v, np.float32))
    assert instance.runs == [(threading.get_ident(), 2)] * 5  # each alone, each inline
    s.close()


async def test_a_fixed_cost_model_runs_large_groups_inline_once_their_size_has_run() -> None:
    """A tiny model costs the same per call whatever its rows: once a batch of 8 has run (on the
    instance thread: 8 lone-item costs would exceed the budget), further batches of 8 run inline,
    and lone requests stay inline between them (each size is estimated on its own: with one per-item
    figure, the lone requests' cost moved it up until the next group of 8 went to the thread)."""
    instance = ThreadRecording(compute_s=0.0003)  # 0.3 ms a call: 1 ms budget for one, not for 8x
    s = make(instance)
    await warm(s, instance)
    loop_thread = threading.get_ident()
    await s.submit(req(1, rows=8))  # predicted from lone items: 2.4 ms, on the thread
    for i in range(3):
        await s.submit(req(i, rows=8))
        for j in range(30):  # many lone requests between groups (a single per-item figure drifted up)
            await s.submit(req(j))
    placed = [(run[0] == loop_thread, run[1]) for run in instance.runs]
    assert placed[0] == (False, 8)
    assert all(on_loop for on_loop, _ in placed[1:]), placed
    s.close()


async def test_a_caller_awaiting_inline_requests_in_a_loop_lets_other_tasks_run() -> None:
    """An inline request returns without suspending its caller; a loop of them must still let the
    event loop run other tasks (here: the one that tells it to stop), so after a bounded number
    of inline requests in one turn the next takes the queue and suspends."""
    instance = ThreadRecording()
    s = make(instance)
    await warm(s, instance)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_soon(stop.set)
    sent = 0
    while not stop.is_set() and sent < 10_000:
        await s.submit(req(sent))
        sent += 1
    assert stop.is_set() and sent <= 2 * inline.INLINE_PER_TURN, sent
    assert instance.runs[0][0] == threading.get_ident()  # they did run inline until then
    s.close()


def lone(value: float) -> InferenceRequest:
    """The only request in progress (the native gRPC fast path's only call, an ensemble's step at c=1)."""
    request = req(value)
    request.lone = True
    return request


async def test_the_only_request_in_progress_runs_on_the_loop_when_its_model_has_one_instance() -> None:
    instance = ThreadRecording(compute_s=0.002)  # too slow for the 1 ms inline budget, within the lone one
    s = make(instance)
    loop_thread = threading.get_ident()
    await s.submit(lone(0))  # the cost is not known yet: the instance thread measures it
    out = await s.submit(lone(1))
    np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0, np.float32))
    await s.submit(req(2))  # another caller's request: not lone, so the instance thread
    pending = asyncio.create_task(s.submit(req(3)))
    await asyncio.sleep(0)  # queued (the instance thread runs it)
    await s.submit(lone(4))  # marked lone, but another request is pending: the instance thread
    await pending
    on_loop = [run[0] == loop_thread for run in instance.runs]
    assert on_loop[:3] == [False, True, False] and not any(on_loop[3:]), on_loop
    assert sum(run[1] for run in instance.runs) == 5  # 3 and 4 may share a batch
    assert s.stats.success.count == 5 and s.pending_count() == 0
    s.close()


async def test_the_only_request_in_progress_keeps_to_its_thread_when_the_model_has_two_instances() -> None:
    instances = [ThreadRecording(compute_s=0.002), ThreadRecording(compute_s=0.002)]
    config = parse_config_text(CONFIG.format(batching="dynamic_batching { }"))
    s = create_scheduler(config, instances, "m", 1)
    assert isinstance(s, DynamicBatcher)
    for i in range(4):
        await s.submit(lone(i))
    assert threading.get_ident() not in {run[0] for i in instances for run in i.runs}
    s.close()

"""The dynamic batcher end to end with a fake backend instance that records what it ran.

The fake multiplies its input by 2 (``y``) and adds 1 (``z``), so every request can check that it
got its own rows back; it records each execution's batch size, values and time interval, and can
hold executions on a gate to build a queue deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import (
    BackendError,
    InvalidArgument,
    ModelConfigError,
    ModelNotReady,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
)
from shipyard.serving_runtime.scheduling import InferenceRequest, create_scheduler
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher


class FakeInstance:
    """Records (batch size, first values, start, end) per execution; sleeps ``compute_s``."""

    def __init__(self, compute_s: float = 0.0, gated: bool = False) -> None:
        self.compute_s = compute_s
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.runs: list[tuple[int, list[float], float, float]] = []
        self.started = 0
        self.closed = False
        self._lock = threading.Lock()

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        start = time.monotonic()
        with self._lock:
            self.started += 1
        assert self.gate.wait(10), "test gate never opened"
        x = inputs["x"]
        if (x < 0).any():
            raise RuntimeError(f"negative input in a batch of {x.shape[0]}")
        if self.compute_s:
            time.sleep(self.compute_s)
        with self._lock:
            self.runs.append((x.shape[0], [float(v) for v in x[:, 0]], start, time.monotonic()))
        result = {"y": x * 2, "z": x + 1}
        return {name: result[name] for name in outputs} if outputs else result

    def close(self) -> None:
        self.closed = True

    @property
    def seen(self) -> list[float]:
        return [v for run in self.runs for v in run[1]]


CONFIG = """
name: "m"
max_batch_size: {mbs}
input {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "z" data_type: TYPE_FP32 dims: [ 4 ] }}
{extra}
"""


def scheduler(instances: list[FakeInstance], mbs: int = 8, extra: str = "dynamic_batching { }") -> DynamicBatcher:
    config = parse_config_text(CONFIG.format(mbs=mbs, extra=extra))
    made = create_scheduler(config, instances, "m", 1)
    assert isinstance(made, DynamicBatcher)
    return made


def request(value: float, rows: int = 1, width: int = 4, **kw: object) -> InferenceRequest:
    x = np.full((rows, width), value, dtype=np.float32)
    x[:, 1] = np.arange(rows)  # rows distinguishable inside one request too
    return InferenceRequest(inputs={"x": x}, batch_size=rows, **kw)  # type: ignore[arg-type]


def check(outputs: dict[str, np.ndarray], value: float, rows: int = 1) -> None:
    assert outputs["y"].shape == (rows, 4)
    np.testing.assert_array_equal(outputs["y"][:, 0], np.full(rows, value * 2, dtype=np.float32))
    np.testing.assert_array_equal(outputs["y"][:, 1], np.arange(rows, dtype=np.float32) * 2)
    np.testing.assert_array_equal(outputs["z"][:, 0], np.full(rows, value + 1, dtype=np.float32))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def test_concurrency_one_runs_every_request_alone_at_once() -> None:
    instance = FakeInstance()
    s = scheduler([instance], extra="dynamic_batching { max_queue_delay_microseconds: 0 }")
    for i in range(10):
        check(await s.submit(request(i)), i)
    assert [run[0] for run in instance.runs] == [1] * 10
    assert s.stats.execution_count == s.stats.inference_count == 10
    s.close()
    assert instance.closed


async def test_concurrent_load_forms_batches_and_answers_each_request() -> None:
    instance = FakeInstance(compute_s=0.02)
    s = scheduler([instance], mbs=8)
    results = await asyncio.gather(*(s.submit(request(i)) for i in range(64)))
    for i, outputs in enumerate(results):
        check(outputs, i)
    sizes = [run[0] for run in instance.runs]
    assert sum(sizes) == 64 and max(sizes) <= 8
    assert s.stats.execution_count < s.stats.inference_count == 64
    assert sorted(instance.seen) == list(range(64))
    assert s.pending_count() == 0 and s.stats.pending == 0
    s.close()


async def test_requests_arriving_together_join_one_batch() -> None:
    instance = FakeInstance()
    s = scheduler([instance], mbs=16)
    results = await asyncio.gather(*(s.submit(request(i)) for i in range(10)))
    for i, outputs in enumerate(results):
        check(outputs, i)
    assert [run[0] for run in instance.runs] == [10]
    s.close()


async def test_arrivals_while_busy_form_the_next_batch() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16)
    first = asyncio.ensure_future(s.submit(request(100)))
    await until(lambda: instance.started == 1)
    rest = [asyncio.ensure_future(s.submit(request(i))) for i in range(5)]
    await until(lambda: s.pending_count() == 6)
    instance.gate.set()
    check(await first, 100)
    for i, task in enumerate(rest):
        check(await task, i)
    assert [run[0] for run in instance.runs] == [1, 5]
    s.close()


async def test_requests_carrying_their_own_batch_merge_and_split_back() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=8)
    blocker = asyncio.ensure_future(s.submit(request(-0.0)))
    await until(lambda: instance.started == 1)
    a = asyncio.ensure_future(s.submit(request(10, rows=3)))
    b = asyncio.ensure_future(s.submit(request(20, rows=4)))
    await until(lambda: s.pending_count() == 3)
    instance.gate.set()
    await blocker
    check(await a, 10, rows=3)
    check(await b, 20, rows=4)
    assert instance.runs[1][0] == 7
    assert s.stats.as_triton_dict()["execution_count"] == 2
    s.close()


async def test_batch_larger_than_max_batch_size_is_refused() -> None:
    s = scheduler([FakeInstance()], mbs=4)
    with pytest.raises(InvalidArgument, match="max_batch_size 4"):
        await s.submit(request(1, rows=5))
    s.close()


async def test_shapes_that_differ_do_not_merge() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=8)
    config_free = [asyncio.ensure_future(s.submit(request(1)))]
    await until(lambda: instance.started == 1)
    narrow = [asyncio.ensure_future(s.submit(request(i, width=3))) for i in (2, 3)]
    wide = [asyncio.ensure_future(s.submit(request(i))) for i in (4, 5)]
    await until(lambda: s.pending_count() == 5)
    instance.gate.set()
    await asyncio.gather(*config_free, *narrow, *wide)
    assert [run[0] for run in instance.runs] == [1, 2, 2]
    assert [run[1] for run in instance.runs[1:]] == [[2.0, 3.0], [4.0, 5.0]]
    s.close()


async def test_different_output_selections_merge_and_each_gets_its_own() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance])
    blocker = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    only_y = asyncio.ensure_future(s.submit(request(1, outputs=("y",))))
    only_z = asyncio.ensure_future(s.submit(request(2, outputs=("z",))))
    await until(lambda: s.pending_count() == 3)
    instance.gate.set()
    await blocker
    y, z = await only_y, await only_z
    assert set(y) == {"y"} and set(z) == {"z"}
    assert y["y"][0, 0] == 2 and z["z"][0, 0] == 3
    assert instance.runs[1][0] == 2
    s.close()


@pytest.mark.slow
async def test_queue_delay_gathers_a_batch_at_low_load() -> None:
    instance = FakeInstance()
    s = scheduler([instance], extra="dynamic_batching { max_queue_delay_microseconds: 1000000 }")
    tasks = []
    for i in range(3):
        tasks.append(asyncio.ensure_future(s.submit(request(i))))
        await asyncio.sleep(0.01)
    for i, task in enumerate(tasks):
        check(await task, i)
    assert [run[0] for run in instance.runs] == [3]
    s.close()


async def test_preferred_size_is_sent_without_waiting_for_the_delay() -> None:
    instance = FakeInstance()
    # A one-minute delay: the test only finishes because the preferred size sends at once.
    extra = "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }"
    s = scheduler([instance], extra=extra)
    results = await asyncio.wait_for(asyncio.gather(*(s.submit(request(i)) for i in range(4))), 10)
    for i, outputs in enumerate(results):
        check(outputs, i)
    assert [run[0] for run in instance.runs] == [4]
    s.close()


async def test_two_instances_execute_at_the_same_time() -> None:
    instances = [FakeInstance(compute_s=0.3), FakeInstance(compute_s=0.3)]
    s = scheduler(instances, mbs=1)  # two batches, not one batch of two
    await asyncio.gather(s.submit(request(1)), s.submit(request(2)))
    (run_a,), (run_b,) = instances[0].runs, instances[1].runs
    assert run_a[2] < run_b[3] and run_b[2] < run_a[3], "execution intervals do not overlap"
    s.close()


async def test_two_models_execute_at_the_same_time() -> None:
    a, b = FakeInstance(compute_s=0.3), FakeInstance(compute_s=0.3)
    sa, sb = scheduler([a]), scheduler([b])
    out_a, out_b = await asyncio.gather(sa.submit(request(1)), sb.submit(request(2)))
    check(out_a, 1)
    check(out_b, 2)
    (run_a,), (run_b,) = a.runs, b.runs
    assert run_a[2] < run_b[3] and run_b[2] < run_a[3], "execution intervals do not overlap"
    sa.close()
    sb.close()


async def test_full_queue_rejects_at_once_and_keeps_accepted_requests() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=1, extra="dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    queued = [asyncio.ensure_future(s.submit(request(i))) for i in (1, 2)]
    await until(lambda: s.pending_count() == 3)
    with pytest.raises(QueueFull, match="max_queue_size") as excinfo:
        await s.submit(request(3))
    assert excinfo.value.http_status == 503 and excinfo.value.grpc_code == "UNAVAILABLE"
    instance.gate.set()
    await running
    for i, task in zip((1, 2), queued, strict=True):
        check(await task, i)
    assert 3.0 not in instance.seen
    assert s.stats.failures_by_reason["REJECTED"] == 1
    s.close()


async def test_timed_out_requests_are_rejected_and_never_reach_the_backend() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], extra="dynamic_batching { default_queue_policy { default_timeout_microseconds: 50000 } }")
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    with pytest.raises(RequestTimeout, match="timed out"):
        await asyncio.wait_for(s.submit(request(7)), 10)
    instance.gate.set()
    await running
    check(await s.submit(request(8)), 8)
    assert 7.0 not in instance.seen
    assert s.pending_count() == 0
    s.close()


async def test_timeout_override_applies_only_when_allowed() -> None:
    extra = "dynamic_batching { default_queue_policy { allow_timeout_override: true } }"
    instance = FakeInstance(gated=True)
    s = scheduler([instance], extra=extra)
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(s.submit(request(7, timeout_us=20000)), 10)
    instance.gate.set()
    await running
    s.close()

    instance = FakeInstance(gated=True)
    s = scheduler([instance])  # no override allowed: the request's timeout is ignored
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    late = asyncio.ensure_future(s.submit(request(7, timeout_us=20000)))
    await asyncio.sleep(0.1)
    assert not late.done()
    instance.gate.set()
    await running
    check(await late, 7)
    s.close()


async def test_timeout_action_delay_moves_the_request_behind_the_others() -> None:
    extra = (
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 20000 timeout_action: DELAY "
        "allow_timeout_override: true } }"
    )
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=1, extra=extra)
    running = asyncio.ensure_future(s.submit(request(0, timeout_us=60_000_000)))
    await until(lambda: instance.started == 1)
    delayed = asyncio.ensure_future(s.submit(request(1)))
    await asyncio.sleep(0.1)  # request 1 times out (20 ms) and is delayed, not rejected
    fresh = asyncio.ensure_future(s.submit(request(2, timeout_us=60_000_000)))
    await until(lambda: s.pending_count() == 3)
    instance.gate.set()
    await asyncio.gather(running, delayed, fresh)
    assert instance.seen == [0.0, 2.0, 1.0]
    s.close()


async def test_cancelled_requests_never_reach_the_backend() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance])
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    doomed = asyncio.ensure_future(s.submit(request(5)))
    kept = asyncio.ensure_future(s.submit(request(6)))
    await until(lambda: s.pending_count() == 3)
    doomed.cancel()
    with pytest.raises((RequestCancelled, asyncio.CancelledError)):
        await doomed
    assert s.pending_count() == 2
    instance.gate.set()
    await running
    check(await kept, 6)
    assert instance.seen == [0.0, 6.0]
    assert s.stats.failures_by_reason["CANCELED"] == 1
    s.close()


async def test_higher_priority_runs_first() -> None:
    extra = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=1, extra=extra)
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    low = [asyncio.ensure_future(s.submit(request(i))) for i in (1, 2)]  # priority 0 -> default level 2
    high = asyncio.ensure_future(s.submit(request(3, priority=1)))
    await until(lambda: s.pending_count() == 4)
    instance.gate.set()
    await asyncio.gather(running, *low, high)
    assert instance.seen == [0.0, 3.0, 1.0, 2.0]
    s.close()


async def test_priority_levels_have_their_own_queue_limits() -> None:
    extra = (
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 "
        "default_queue_policy { max_queue_size: 1 } priority_queue_policy { key: 1 value: { max_queue_size: 3 } } }"
    )
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=1, extra=extra)
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    tasks = [asyncio.ensure_future(s.submit(request(1)))]
    await until(lambda: s.pending_count() == 2)
    with pytest.raises(QueueFull):
        await s.submit(request(2))
    tasks += [asyncio.ensure_future(s.submit(request(i, priority=1))) for i in (3, 4, 5)]
    await until(lambda: s.pending_count() == 5)
    with pytest.raises(QueueFull):
        await s.submit(request(6, priority=1))
    instance.gate.set()
    await asyncio.gather(running, *tasks)
    s.close()


async def test_backend_error_fails_only_the_batch_it_hit() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance])
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    bad = asyncio.ensure_future(s.submit(request(-1, width=3)))  # own shape: its own batch
    good = [asyncio.ensure_future(s.submit(request(i))) for i in (1, 2)]
    await until(lambda: s.pending_count() == 4)
    instance.gate.set()
    await running
    with pytest.raises(BackendError, match="negative input"):
        await bad
    for i, task in zip((1, 2), good, strict=True):
        check(await task, i)
    assert s.stats.failures_by_reason["BACKEND"] == 1
    check(await s.submit(request(9)), 9)
    s.close()


async def test_drain_finishes_accepted_requests_then_refuses_new_ones() -> None:
    instance = FakeInstance(compute_s=0.05)
    s = scheduler([instance], mbs=2)
    tasks = [asyncio.ensure_future(s.submit(request(i))) for i in range(6)]
    await asyncio.sleep(0)
    await asyncio.wait_for(s.drain(), 10)
    assert all(task.done() for task in tasks)
    assert sorted(instance.seen) == [float(i) for i in range(6)]
    with pytest.raises(ModelNotReady):
        await s.submit(request(9))
    s.close()
    assert instance.closed


async def test_without_dynamic_batching_requests_run_one_by_one_on_all_instances() -> None:
    instances = [FakeInstance(compute_s=0.05), FakeInstance(compute_s=0.05)]
    s = scheduler(instances, mbs=8, extra="")
    results = await asyncio.gather(*(s.submit(request(i)) for i in range(8)))
    for i, outputs in enumerate(results):
        check(outputs, i)
    assert all(run[0] == 1 for inst in instances for run in inst.runs)
    assert all(inst.runs for inst in instances), "both instances should have worked"
    assert s.stats.execution_count == s.stats.inference_count == 8
    s.close()


async def test_model_without_batch_dimension_never_merges() -> None:
    instance = FakeInstance(compute_s=0.02)
    s = scheduler([instance], mbs=0, extra="dynamic_batching { }")
    results = await asyncio.gather(*(s.submit(request(i, rows=2)) for i in range(5)))
    for i, outputs in enumerate(results):
        check(outputs, i, rows=2)
    assert [run[0] for run in instance.runs] == [2] * 5
    s.close()


def test_invalid_batching_config_names_the_field() -> None:
    config = parse_config_text(CONFIG.format(mbs=4, extra="dynamic_batching { preferred_batch_size: [ 8 ] }"))
    with pytest.raises(ModelConfigError, match="preferred_batch_size 8"):
        create_scheduler(config, [FakeInstance()], "m", 1)
    config = parse_config_text(
        CONFIG.format(mbs=4, extra="dynamic_batching { priority_levels: 2 default_priority_level: 3 }")
    )
    with pytest.raises(ModelConfigError, match="default_priority_level"):
        create_scheduler(config, [FakeInstance()], "m", 1)


async def test_stats_follow_triton_statistics_shape() -> None:
    s = scheduler([FakeInstance()])
    await s.submit(request(1, rows=3))
    stats = s.stats.as_triton_dict()
    assert stats["inference_count"] == 3 and stats["execution_count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 1  # type: ignore[index]
    assert stats["batch_stats"][0]["batch_size"] == 3  # type: ignore[index]
    assert s.stats.latency.count == 1 and s.stats.batch_size.count == 1
    s.close()


async def test_close_from_another_thread_fails_queued_requests_and_finishes_the_running_one() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=1)
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    queued = [asyncio.ensure_future(s.submit(request(i))) for i in (1, 2)]
    await until(lambda: s.pending_count() == 3)
    closing = asyncio.ensure_future(asyncio.to_thread(s.close))
    await asyncio.sleep(0.05)
    instance.gate.set()
    await closing
    check(await running, 0)
    for task in queued:
        with pytest.raises(ModelNotReady, match="unloaded"):
            await task
    assert instance.closed and instance.seen == [0.0]
    assert s.pending_count() == 0


def test_handoff_returns_once_the_worker_is_inside_the_backend() -> None:
    """With a hand-off, ``hand_off`` returns only once the instance thread has taken the batch and is
    entering the backend (so a busy event loop cannot keep the GIL from it)."""
    from shipyard.serving_runtime.scheduling.instances import Batch, InstanceWorker
    from shipyard.serving_runtime.scheduling.queue import Envelope

    instance = FakeInstance(gated=True)
    worker = InstanceWorker(instance, "fake-v1-i0")
    done: list[Batch] = []
    worker.start(lambda callback, batch: callback(batch), done.append)
    try:
        request = InferenceRequest({"x": np.ones((1, 4), np.float32)}, (), 1, 0, 0, None, {})
        envelope = Envelope(request, None, time.monotonic_ns(), 1, None)  # type: ignore[arg-type]
        batch = Batch([envelope], 1, True)
        worker.hand_off(batch, handoff_s=5.0)
        # the worker has taken the batch, merged it and is entering the backend (held at the gate)
        assert batch.compute_start_ns > 0
        instance.gate.set()
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.001)
        assert done and done[0].error is None and done[0].results[0]["y"].tolist() == [[2.0] * 4]
    finally:
        instance.gate.set()
        worker.stop(timeout_s=5)


def group(values: list[float], rows: list[int]) -> InferenceRequest:
    """A group of client requests queued as one (the fast paths): their rows, one after another."""
    parts = [request(v, r).inputs["x"] for v, r in zip(values, rows, strict=True)]
    arrivals = [time.monotonic_ns()] * len(values)
    return InferenceRequest(inputs={"x": np.concatenate(parts)}, batch_size=sum(rows), group_arrivals_ns=arrivals)


async def test_requests_leaving_a_queued_group_never_run_and_count_as_cancelled() -> None:
    """``protocol/fast_leave``: members whose clients leave while their group waits are taken out of it
    (counted CANCELED, as a cancelled queued request); the group runs with the others' rows, which go
    back to their places; once the group runs nobody leaves it; a group everyone left never runs."""
    from shipyard.serving_runtime.protocol.fast_leave import Leaving

    instance = FakeInstance(gated=True)
    s = scheduler([instance])
    running = asyncio.ensure_future(s.submit(request(0)))
    await until(lambda: instance.started == 1)
    kept = group([1.0, 2.0, 3.0, 4.0], [1, 2, 1, 3])
    empty = group([7.0], [2])
    leaving = Leaving(kept, [1, 2, 1, 3], list)
    leaving_all = Leaving(empty, [2], list)
    assert not leaving.leave(1)  # not queued yet
    kept_task = asyncio.ensure_future(s.submit(kept))
    empty_task = asyncio.ensure_future(s.submit(empty))
    await until(lambda: s.pending_count() == 3)
    assert leaving.leave(1) and leaving.leave(2) and leaving.leave(1)  # again: already out
    assert leaving_all.leave(0)
    with pytest.raises(RequestCancelled):
        await empty_task
    assert s.pending_count() == 2 and kept.batch_size == 4 and len(kept.group_arrivals_ns or ()) == 2
    instance.gate.set()
    await running
    outputs = await kept_task
    assert instance.seen == [0.0, 1.0, 4.0, 4.0, 4.0]  # members 0 and 3 ran, without 1 and 2
    assert not leaving.leave(3)  # it ran: it stays (counted by its outcome)
    full = leaving.expand(outputs, 7)
    np.testing.assert_array_equal(full["y"][:, 0], [2.0, 0, 0, 0, 8.0, 8.0, 8.0])
    np.testing.assert_array_equal(full["y"][4:, 1], [0.0, 2.0, 4.0])
    assert s.stats.failures_by_reason["CANCELED"] == 3
    assert s.stats.success.count == 3  # the running request and the group's two members
    assert s.pending_count() == 0
    s.close()

"""Co-batching (scheduling/cobatch.py) through the dynamic batcher, with the fake instance of
test_scheduling_dynamic: a real-time batch is topped up with the next rows of a background request, the
background request completes across several batches with every row back in order, a real-time request never
waits behind the whole background request, and errors, unloading and shapes that cannot merge are handled."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_scheduling_dynamic import FakeInstance, check, request, scheduler, until

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import BackendError, ModelConfigError, ModelNotReady
from shipyard.serving_runtime.scheduling.background import background_from_config

COBATCHED = (
    "dynamic_batching {{ priority_levels: 2 default_priority_level: 1 }}\n"
    'parameters {{ key: "background_slice_rows" value: {{ string_value: "{rows}" }} }}\n'
    'parameters {{ key: "background_fill_rows" value: {{ string_value: "{fill}" }} }}\n'
    'parameters {{ key: "background_recent_us" value: {{ string_value: "10000000" }} }}\n'
    'parameters {{ key: "background_share_rows" value: {{ string_value: "0" }} }}\n'  # no whole requests ride
)


def test_fill_parameter_from_config() -> None:
    text = 'name: "m" max_batch_size: 8 dynamic_batching { priority_levels: {levels} } '
    fill = 'parameters { key: "background_fill_rows" value: { string_value: "6" } }'
    rules = background_from_config(parse_config_text(text.replace("{levels}", "2") + fill), 2, "m")
    assert rules is not None and (rules.fill_rows, rules.slice_rows) == (6, 0)
    with pytest.raises(ModelConfigError, match="'background_fill_rows' need dynamic_batching priority_levels >= 2"):
        background_from_config(parse_config_text(text.replace("{levels}", "1") + fill), 1, "m")
    with pytest.raises(ModelConfigError, match="'background_fill_rows' must be a non-negative integer, got '-1'"):
        background_from_config(parse_config_text(text.replace("{levels}", "2") + fill.replace("6", "-1")), 2, "m")


async def _busy_then(instance: FakeInstance, s: object) -> asyncio.Future[object]:
    """A real-time request held in the (gated) instance, so that what is submitted next queues."""
    first = asyncio.ensure_future(s.submit(request(0)))  # type: ignore[attr-defined]
    await until(lambda: instance.started == 1)
    return first


async def test_real_time_batches_are_topped_up_with_background_rows_in_order() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=COBATCHED.format(rows=4, fill=6))
    first = await _busy_then(instance, s)
    background = asyncio.ensure_future(s.submit(request(10, rows=9, priority=2)))
    late = [asyncio.ensure_future(s.submit(request(v))) for v in (1, 2)]
    await asyncio.sleep(0.02)
    instance.gate.set()
    check(await first, 0)
    for value, future in zip((1, 2), late, strict=True):
        check(await future, value)
    check(await background, 10, rows=9)  # one answer, every row in order
    # the first batch had nothing to take (the job came later); the two late real-time requests and 4 of the
    # job's rows ran together; the last 5 rows ran as slices of 4 (real-time work is recent), then 1
    assert [(run[0], run[1]) for run in instance.runs] == [
        (1, [0.0]), (6, [1.0, 2.0, 10.0, 10.0, 10.0, 10.0]), (4, [10.0] * 4), (1, [10.0]),
    ]  # fmt: skip
    stats = s.stats
    assert (stats.execution_count, stats.inference_count) == (4, 12)
    assert stats.success.count == 4 and s.pending_count() == 0  # the background request counted once
    s.close()


async def test_a_real_time_request_never_waits_for_the_whole_background_request() -> None:
    """A steady real-time stream next to a 60-row background request: each real-time request is answered
    while the background request is still unanswered, and no batch holds more than ``fill`` rows."""
    instance = FakeInstance(compute_s=0.005)
    s = scheduler([instance], mbs=64, extra=COBATCHED.format(rows=4, fill=5))
    check(await s.submit(request(0)), 0)
    background = asyncio.ensure_future(s.submit(request(10, rows=60, priority=2)))
    answered_before_job = 0
    for value in range(1, 6):
        check(await s.submit(request(value)), value)
        answered_before_job += not background.done()
    check(await background, 10, rows=60)
    assert answered_before_job == 5
    assert max(run[0] for run in instance.runs[1:]) <= 5
    rode = [run for run in instance.runs if 10.0 in run[1] and any(v != 10.0 for v in run[1])]
    assert len(rode) == 5  # every real-time request after the job arrived had job rows with it
    s.close()


async def test_background_request_of_another_shape_does_not_ride() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=COBATCHED.format(rows=0, fill=8))
    first = await _busy_then(instance, s)
    other = asyncio.ensure_future(s.submit(request(10, rows=3, width=5, priority=2)))
    late = asyncio.ensure_future(s.submit(request(1)))
    await asyncio.sleep(0.02)
    instance.gate.set()
    check(await first, 0)
    check(await late, 1)
    assert (await other)["y"].shape == (3, 5)
    assert [run[0] for run in instance.runs] == [1, 1, 3]
    s.close()


async def test_a_failed_batch_fails_its_rider_once_and_the_model_keeps_serving() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=COBATCHED.format(rows=4, fill=4))
    first = await _busy_then(instance, s)
    bad = request(10, rows=8, priority=2)
    bad.inputs["x"][1, 0] = -1  # its first rows ride in the next real-time batch, which fails
    background = asyncio.ensure_future(s.submit(bad))
    late = asyncio.ensure_future(s.submit(request(1)))
    await asyncio.sleep(0.02)
    instance.gate.set()
    check(await first, 0)
    with pytest.raises(BackendError, match="negative input in a batch of 4"):
        await late
    with pytest.raises(BackendError, match="negative input in a batch of 4"):
        await background
    await until(lambda: s.pending_count() == 0)
    assert [run[0] for run in instance.runs] == [1]  # the failed batch raised; the job's other rows never ran
    assert s.stats.failures_by_reason[BackendError.reason] == 2
    check(await s.submit(request(2)), 2)
    s.close()


async def test_unloading_fails_a_riding_background_request_with_model_not_ready() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=COBATCHED.format(rows=4, fill=4))
    first = await _busy_then(instance, s)
    background = asyncio.ensure_future(s.submit(request(10, rows=16, priority=2)))
    late = asyncio.ensure_future(s.submit(request(1)))
    await asyncio.sleep(0.02)
    instance.gate.set()
    check(await first, 0)
    check(await late, 1)  # rode with 3 of the job's rows
    instance.gate.clear()
    await until(lambda: instance.started == 3)  # the next part of the job is held in the backend
    closing = asyncio.ensure_future(asyncio.to_thread(s.close))
    await asyncio.sleep(0.05)
    instance.gate.set()
    await closing
    with pytest.raises(ModelNotReady):
        await background
    assert np.array([run[0] for run in instance.runs]).tolist()[:2] == [1, 4]


async def test_a_native_fast_path_group_is_real_time_work_and_is_topped_up() -> None:
    """A group of client requests (the native gRPC fast path: ``group_arrivals_ns``) at the default level
    marks real-time work as recent (the background request is sliced) and carries background rows."""
    import time

    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=COBATCHED.format(rows=2, fill=6))
    now = time.monotonic_ns()
    group = request(1, rows=2)
    group.group_arrivals_ns = [now, now]
    first = asyncio.ensure_future(s.submit(group))
    await until(lambda: instance.started == 1)
    background = asyncio.ensure_future(s.submit(request(10, rows=9, priority=2)))
    second = request(2, rows=2)
    second.group_arrivals_ns = [now, now]
    late = asyncio.ensure_future(s.submit(second))
    await asyncio.sleep(0.02)
    instance.gate.set()
    check(await first, 1, rows=2)
    check(await late, 2, rows=2)
    check(await background, 10, rows=9)
    # the second group rode with 4 of the job's rows; the other 5 ran in slices of 2 (real-time is recent)
    assert [run[0] for run in instance.runs] == [2, 6, 2, 2, 1]
    assert s.stats.success.count == 2 + 2 + 1  # each group counts its client requests; the job once
    s.close()

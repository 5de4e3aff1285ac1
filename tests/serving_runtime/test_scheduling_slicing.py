"""Background requests in slices (scheduling/slicing.py) through the dynamic batcher, with the fake instance
of test_scheduling_dynamic: while real-time work is recent, a big background request runs a few rows at a
time, a real-time request that arrives meanwhile runs before the next slice, and the caller gets all of its
rows back in order; errors, cancellation and unloading end a sliced request once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from test_scheduling_dynamic import FakeInstance, check, request, scheduler, until

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import BackendError, ModelConfigError, ModelNotReady, RequestCancelled
from shipyard.serving_runtime.scheduling.background import BackgroundSettings, background_from_config
from shipyard.serving_runtime.scheduling.slicing import RETRY_NS, SliceSizer

SLICED = (
    "dynamic_batching {{ priority_levels: 2 default_priority_level: 1 }}\n"
    'parameters {{ key: "background_slice_rows" value: {{ string_value: "{rows}" }} }}\n'
    'parameters {{ key: "background_recent_us" value: {{ string_value: "{recent_us}" }} }}\n'
)


@dataclass
class Item:
    level: int
    batch_size: int


def test_slicing_applies_while_foreground_work_is_recent() -> None:
    rules = BackgroundSettings(level=1, slice_rows=4, recent_ns=100_000_000)
    assert rules.slicing(last_foreground_ns=1_000_000_000, now_ns=1_050_000_000)
    assert not rules.slicing(last_foreground_ns=1_000_000_000, now_ns=1_100_000_000)  # quiet for 100 ms
    assert not rules.slicing(last_foreground_ns=0, now_ns=5)  # no real-time work seen yet
    assert not BackgroundSettings(level=1).slicing(last_foreground_ns=1, now_ns=2)  # no slice set


def test_capped_cuts_background_only_batches_to_the_slice_while_slicing() -> None:
    rules = BackgroundSettings(level=1, slice_rows=4)
    background = [Item(1, 2), Item(1, 2), Item(1, 1), Item(1, 3)]
    assert list(rules.capped(background, slice_limit=4)) == background[:2]  # 4 rows; the next makes 5
    assert list(rules.capped(background)) == background  # not slicing: as the decision takes them
    big = [Item(1, 9), Item(1, 1)]
    assert list(rules.capped(big, slice_limit=4)) == big[:1]  # the first always goes (it is cut elsewhere)


def test_slice_parameters_from_config() -> None:
    def config(parameters: str) -> object:
        text = 'name: "m" max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 1 } '
        return parse_config_text(text + parameters)

    sliced = (
        'parameters { key: "background_slice_rows" value: { string_value: "4" } }'
        'parameters { key: "background_recent_us" value: { string_value: "2000" } }'
    )
    rules = background_from_config(config(sliced), 2, "m")
    assert rules is not None and (rules.slice_rows, rules.recent_ns, rules.holdoff_ns) == (4, 2_000_000, 0)
    recent_only = 'parameters { key: "background_recent_us" value: { string_value: "10" } }'
    with pytest.raises(ModelConfigError, match="'background_recent_us' needs 'background_slice_rows' or"):
        background_from_config(config(recent_only), 2, "m")


def test_sizer_settles_where_a_cpu_call_starts_to_cost_more_than_the_budget() -> None:
    def cost_ns(rows: int) -> int:  # the wide MLP on one core: flat up to 16 rows, then 0.15 ms a row
        return 2_400_000 if rows <= 16 else 150_000 * rows

    sizer, now, seen = SliceSizer(budget_ns=3_000_000, max_rows=128, rows=1), 0, []
    for _ in range(8):
        seen.append(sizer.rows)
        now += 1_000_000
        sizer.observe(sizer.rows, cost_ns(sizer.rows), now)
    assert seen == [1, 2, 4, 8, 16, 32, 16, 16]  # 32 was over budget: not tried again for a while
    sizer.observe(16, cost_ns(16), now + RETRY_NS)
    assert sizer.rows == 32  # tried again after RETRY_NS
    sizer.observe(5, 1, now)  # a last, shorter slice says nothing
    assert sizer.rows == 32


def test_sizer_grows_to_the_max_where_a_batch_costs_the_same_and_is_fixed_without_a_budget() -> None:
    gpu = SliceSizer(budget_ns=2_000_000, max_rows=128, rows=8)
    for _ in range(6):
        gpu.observe(gpu.rows, 1_000_000, 0)
    assert gpu.rows == 128
    fixed = SliceSizer(budget_ns=0, max_rows=128, rows=8)
    fixed.observe(8, 1, 0)
    assert fixed.rows == 8


async def test_slices_sized_by_time_double_while_they_fit() -> None:
    instance = FakeInstance()  # every call takes about the same (nothing): the slices grow
    extra = SLICED.format(rows=1, recent_us=10_000_000).replace("background_slice_rows", "background_slice_us")
    s = scheduler([instance], mbs=16, extra=extra.replace('string_value: "1"', 'string_value: "1000000"'))
    check(await s.submit(request(0)), 0)
    check(await s.submit(request(10, rows=15, priority=2)), 10, rows=15)
    assert [run[0] for run in instance.runs] == [1, 1, 2, 4, 8]
    check(await s.submit(request(11, rows=16, priority=2)), 11, rows=16)  # 16 rows fit in one slice now
    assert [run[0] for run in instance.runs][5:] == [16]
    s.close()


async def test_real_time_request_runs_between_the_slices_of_a_background_request() -> None:
    instance = FakeInstance(compute_s=0.05)
    s = scheduler([instance], mbs=16, extra=SLICED.format(rows=4, recent_us=10_000_000))
    first = asyncio.ensure_future(s.submit(request(0)))  # real-time work: slicing is on from its end
    await until(lambda: instance.started == 1)
    background = asyncio.ensure_future(s.submit(request(10, rows=10, priority=2)))
    await until(lambda: instance.started == 2)  # the first slice runs
    late = asyncio.ensure_future(s.submit(request(1)))
    check(await first, 0)
    check(await late, 1)
    check(await background, 10, rows=10)  # every row, in order, in one answer
    assert [(run[0], run[1][0]) for run in instance.runs] == [(1, 0.0), (4, 10.0), (1, 1.0), (4, 10.0), (2, 10.0)]
    assert s.pending_count() == 0
    assert s.stats.inference_count == 12 and s.stats.execution_count == 5
    s.close()


async def test_background_request_runs_whole_without_recent_real_time_work() -> None:
    instance = FakeInstance()
    s = scheduler([instance], mbs=16, extra=SLICED.format(rows=4, recent_us=10_000_000))
    check(await s.submit(request(10, rows=10, priority=2)), 10, rows=10)
    assert [run[0] for run in instance.runs] == [10]
    check(await s.submit(request(0)), 0)
    check(await s.submit(request(11, rows=12, priority=2)), 11, rows=12)  # recent now: 4 + 4 + 4
    assert [run[0] for run in instance.runs] == [10, 1, 4, 4, 4]
    s.close()


async def test_a_failed_slice_fails_the_request_once_and_stops_its_slices() -> None:
    instance = FakeInstance()
    s = scheduler([instance], mbs=16, extra=SLICED.format(rows=4, recent_us=10_000_000))
    check(await s.submit(request(0)), 0)
    bad = request(10, rows=12, priority=2)
    bad.inputs["x"][5, 0] = -1  # the second slice fails in the backend
    with pytest.raises(BackendError, match="negative input in a batch of 4"):
        await s.submit(bad)
    assert [run[0] for run in instance.runs] == [1, 4]  # the third slice never ran (the failed one raised)
    assert s.pending_count() == 0
    check(await s.submit(request(1)), 1)  # the model keeps serving
    s.close()


async def test_cancelled_background_request_stops_being_sliced() -> None:
    instance = FakeInstance(compute_s=0.05)
    s = scheduler([instance], mbs=16, extra=SLICED.format(rows=4, recent_us=10_000_000))
    check(await s.submit(request(0)), 0)
    background = asyncio.ensure_future(s.submit(request(10, rows=16, priority=2)))
    await until(lambda: instance.started == 2)  # the first slice runs
    background.cancel()
    with pytest.raises(RequestCancelled):
        await background
    await until(lambda: s.pending_count() == 0)
    await asyncio.sleep(0.1)
    assert [run[0] for run in instance.runs] == [1, 4]
    s.close()


async def test_unloading_fails_a_sliced_request_with_model_not_ready() -> None:
    instance = FakeInstance(gated=True)
    s = scheduler([instance], mbs=16, extra=SLICED.format(rows=4, recent_us=10_000_000))
    instance.gate.set()
    check(await s.submit(request(0)), 0)
    instance.gate.clear()
    background = asyncio.ensure_future(s.submit(request(10, rows=16, priority=2)))
    await until(lambda: instance.started == 2)  # the first slice is held in the backend
    closing = asyncio.ensure_future(asyncio.to_thread(s.close))
    await asyncio.sleep(0.05)
    instance.gate.set()
    await closing
    with pytest.raises(ModelNotReady):
        await background
    assert np.array([run[0] for run in instance.runs]).tolist() == [1, 4]


class InlineInstance(FakeInstance):
    """A FakeInstance the batcher may run on the event loop's thread; records whether each run did."""

    inline_safe = True

    def __init__(self, compute_s: float) -> None:
        super().__init__(compute_s)
        self.on_loop: list[bool] = []

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        return super().execute(inputs, outputs)


async def test_a_real_time_request_run_inline_counts_as_recent_real_time_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small model runs a lone real-time request on the event loop (no batch ends on a worker): a
    background request too big to run inline, right after it, is still cut into slices."""
    from shipyard.serving_runtime.scheduling import inline

    monkeypatch.setattr(inline, "INLINE_MAX_COMPUTE_NS", 20_000_000)  # 1 row (~2 ms) inline, 32 rows (~64 ms) not
    instance = InlineInstance(compute_s=0.002)
    s = scheduler([instance], mbs=32, extra=SLICED.format(rows=8, recent_us=10_000_000))
    check(await s.submit(request(1, priority=2)), 1)  # background work (not real time): a first cost estimate
    check(await s.submit(request(2)), 2)
    assert instance.on_loop == [False, True]  # the real-time request ran inline
    check(await s.submit(request(3, rows=32, priority=2)), 3, rows=32)
    assert [run[0] for run in instance.runs[2:]] == [8, 8, 8, 8]
    s.close()

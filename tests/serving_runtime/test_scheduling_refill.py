"""Batch refill (``scheduling/refill.py``): a free instance of a Python-like backend waits briefly
for the callers its last batch answered, so a closed loop of N callers runs batches of N instead
of alternating halves; one caller never waits; other backends are untouched."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from test_scheduling_dynamic import FakeInstance, check, request, scheduler

from shipyard.serving_runtime.scheduling.refill import REFILL_ENV, Refill


class RefillInstance(FakeInstance):
    refill_batches = True  # as the Python backend's instances declare


async def _closed_loop(instance: FakeInstance, callers: int, rounds: int) -> None:
    batcher = scheduler([instance], mbs=64)

    async def caller(k: int) -> None:
        for i in range(rounds):
            value = float(k * 1000 + i)
            check(await batcher.submit(request(value)), value)
            await asyncio.sleep(0.0005)  # the caller's own turn-around

    try:
        await asyncio.gather(*(caller(k) for k in range(callers)))
    finally:
        batcher.close()


def _sizes(instance: FakeInstance) -> list[int]:
    return [run[0] for run in instance.runs]


def test_a_closed_loop_runs_whole_batches_with_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REFILL_ENV, "1")
    refilled, plain = RefillInstance(compute_s=0.02), FakeInstance(compute_s=0.02)
    asyncio.run(_closed_loop(refilled, 8, 12))
    asyncio.run(_closed_loop(plain, 8, 12))
    assert sum(_sizes(refilled)) == sum(_sizes(plain)) == 96
    assert statistics.median(_sizes(refilled)) == 8
    assert statistics.median(_sizes(plain)) < 8  # without refill the callers split up
    assert len(refilled.runs) < len(plain.runs)


@pytest.mark.parametrize("setting", ["0", None])
def test_refill_is_off_by_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, setting: str | None) -> None:
    if setting is None:
        monkeypatch.delenv(REFILL_ENV, raising=False)
    else:
        monkeypatch.setenv(REFILL_ENV, setting)
    instance = RefillInstance(compute_s=0.02)
    asyncio.run(_closed_loop(instance, 8, 12))
    assert statistics.median(_sizes(instance)) < 8


def test_one_caller_and_a_shrunk_population_never_wait_long() -> None:
    refill = Refill(64)
    refill.finished(now_ns=0, batch_requests=1, queued=0, compute_ns=10_000_000)
    assert refill.hold_until(1, 100) is None  # c=1: the population is back at once
    refill.finished(now_ns=0, batch_requests=8, queued=0, compute_ns=100_000_000)
    assert refill.hold_until(7, 100) == 4_000_000  # bounded: at most REFILL_MAX_NS
    assert refill.hold_until(7, 4_000_000) is None
    refill.finished(now_ns=0, batch_requests=7, queued=0, compute_ns=8_000_000)
    assert refill.hold_until(7, 100) is None  # the smaller population is the new target
    assert refill.hold_until(3, 100) == 2_000_000  # a quarter of the last compute

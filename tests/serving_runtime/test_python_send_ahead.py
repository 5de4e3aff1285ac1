"""Send ahead (``scheduling/ahead.py``): while a Python model's batch runs, the next is written to
its process, which starts it as soon as it has answered; every request still gets its own answer,
and a process that dies with a batch written ahead fails both batches' requests and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from server_harness import python_instance

from shipyard.serving_runtime.backends.python.instance import PythonInstance
from shipyard.serving_runtime.errors import BackendError
from shipyard.serving_runtime.scheduling import ahead
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.batching import BatchingSettings
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

SLOW_ECHO = """
import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if float(x.reshape(-1)[0]) < 0:
                os._exit(4)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]))
        return out
"""


def _instance(tmp_path: Path) -> PythonInstance:
    instance: PythonInstance = python_instance(tmp_path, "slow", SLOW_ECHO)
    instance.loop_lone = False  # every batch through the worker thread, as under load
    return instance


@pytest.fixture
def early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write ahead at 40% of a batch (not a little before its end), so a loaded machine's late
    timers cannot make the batch end first."""
    monkeypatch.setenv(ahead.AHEAD_ENV, "1")
    monkeypatch.setattr(ahead, "LEAD_FRACTION", 0.6)
    monkeypatch.setattr(ahead, "LEAD_MAX_NS", 10**9)


def _request(value: float) -> InferenceRequest:
    return InferenceRequest({"x": np.full((1, 3), value, np.float32)})


def _count_ahead(instance: PythonInstance) -> list[int]:
    written: list[int] = []
    finish = instance.finish_ahead

    def counted(sent: object) -> list[object]:
        written.append(len(sent[1]))  # type: ignore[index]
        return finish(sent)  # type: ignore[arg-type]

    instance.finish_ahead = counted  # type: ignore[assignment,method-assign]
    return written


@pytest.mark.usefixtures("early")
def test_a_closed_loop_gets_its_answers_with_batches_written_ahead(tmp_path: Path) -> None:
    instance = _instance(tmp_path)
    written = _count_ahead(instance)
    batcher = DynamicBatcher([instance], "slow", 1, BatchingSettings(max_batch_size=8))

    async def caller(index: int) -> None:
        for round_ in range(4):
            value = index * 10 + round_
            result = await batcher.submit(_request(value))
            np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * value, np.float32))

    async def main() -> None:
        await asyncio.gather(*(caller(i) for i in range(12)))  # more than a batch: some always queue
        await batcher.drain()

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert written, "no batch was written ahead"
    stats = batcher.stats
    assert stats.success.count == 48 and stats.fail.count == 0 and stats.inference_count == 48


@pytest.mark.usefixtures("early")
def test_a_process_that_dies_fails_the_batch_written_ahead_too_and_restarts(tmp_path: Path) -> None:
    instance = _instance(tmp_path)
    written = _count_ahead(instance)
    batcher = DynamicBatcher([instance], "slow", 1, BatchingSettings(max_batch_size=8))

    async def main() -> None:
        await batcher.submit(_request(1))  # times a batch: the next one is written ahead
        crash = asyncio.ensure_future(batcher.submit(_request(-1)))
        await asyncio.sleep(0.005)  # the crashing batch is dispatched; this one queues behind it
        behind = asyncio.ensure_future(batcher.submit(_request(2)))
        for outcome in await asyncio.gather(crash, behind, return_exceptions=True):
            assert isinstance(outcome, BackendError)
            assert "ended with exit code 4; it is being restarted" in outcome.message
        again = await batcher.submit(_request(5))
        np.testing.assert_array_equal(again["y"], np.full((1, 3), 10, np.float32))
        await batcher.drain()

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert written == [1]  # the request behind the crash was written ahead
    assert instance.restarts == 1


def test_send_ahead_is_off_by_default_and_turned_on_with_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ahead.AHEAD_ENV, raising=False)
    instance = _instance(tmp_path)
    try:
        assert ahead.ahead_for([instance], True, True) is None
        monkeypatch.setenv(ahead.AHEAD_ENV, "0")
        assert ahead.ahead_for([instance], True, True) is None
        monkeypatch.setenv(ahead.AHEAD_ENV, "1")
        assert ahead.ahead_for([instance], True, True) is not None
        assert ahead.ahead_for([instance], False, True) is None  # no batching: nothing to form
        assert ahead.ahead_for([instance, instance], True, True) is None  # one instance only
    finally:
        instance.close()


def test_the_next_batch_is_written_a_little_before_the_current_one_ends_when_it_is_full() -> None:
    rule = ahead.SendAhead()
    assert rule.send_at(1_000) is None  # nothing timed yet
    rule.finished(4_000_000, 8)
    assert rule.send_at(1_000) == 1_000 + 4_000_000 - int(4_000_000 * ahead.LEAD_FRACTION)
    assert not rule.full(7, 128) and rule.full(8, 128)  # as many queued as the last batch held
    assert rule.full(4, 4)  # or the most a batch may hold
    rule.finished(100_000_000, 8)
    assert rule.send_at(0) == 100_000_000 - ahead.LEAD_MAX_NS  # bounded lead

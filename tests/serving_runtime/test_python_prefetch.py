"""A Python model's next batch sent to its process before the current one ends (``scheduling/prefetch.py``),
with the real model process: answers, a crash in between, and when nothing is sent ahead."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import python_instance

# y = 2x and the process id; x[0] == -1: sleep 1 s, then exit (the process dies mid-batch);
# every execute takes at least 40 ms, so the batcher learns a cost it can send ahead of.
SLOW_MODEL = """
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.04)
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if float(x.reshape(-1)[0]) == -1:
                time.sleep(1.0)
                os._exit(4)
            pid = np.full(x.shape, os.getpid(), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2), pb_utils.Tensor("pid", pid)]))
        return out
"""


def _request(value: float) -> Any:
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    return InferenceRequest({"x": np.full((1, 3), value, np.float32)}, ("y", "pid"))


def test_a_batch_sent_ahead_is_answered_after_the_one_before_or_rerun_when_that_one_killed_the_process(
    tmp_path: Path,
) -> None:
    """``presend`` writes a batch to the process while another runs there; ``finish_presend`` reads its answer
    once that one is answered, from the same process. When the running batch kills the process first, the
    batch sent ahead never ran: it runs again on the restarted process and is answered, not failed."""
    from shipyard.serving_runtime.errors import BackendError

    instance = python_instance(tmp_path, "slow", SLOW_MODEL)
    try:
        first: list[Any] = []
        running = threading.Thread(target=lambda: first.extend(instance.execute_requests([_request(1.0)])))
        running.start()
        time.sleep(0.01)
        ahead = [_request(3.0)]
        pending = instance.presend(ahead)
        assert pending is not None
        running.join(10)
        results = instance.finish_presend(ahead, pending)
        np.testing.assert_array_equal(first[0]["y"], np.full((1, 3), 2.0, np.float32))
        np.testing.assert_array_equal(results[0]["y"], np.full((1, 3), 6.0, np.float32))
        assert results[0]["pid"][0, 0] == first[0]["pid"][0, 0] == instance.stub.pid

        dying: list[Any] = []
        running = threading.Thread(target=lambda: dying.extend(instance.execute_requests([_request(-1.0)])))
        running.start()
        time.sleep(0.1)  # the process is in execute (it dies 1 s in)
        ahead = [_request(5.0)]
        pending = instance.presend(ahead)
        assert pending is not None
        died_pid = pending[0].pid
        running.join(10)
        assert isinstance(dying[0], BackendError) and "exit code 4" in dying[0].message
        results = instance.finish_presend(ahead, pending)
        np.testing.assert_array_equal(results[0]["y"], np.full((1, 3), 10.0, np.float32))
        assert results[0]["pid"][0, 0] == instance.stub.pid != died_pid
        assert instance.restarts == 1
    finally:
        instance.close()


@pytest.mark.parametrize("on", [True, False])
def test_requests_waiting_for_a_busy_instance_are_sent_ahead_but_never_fewer_than_the_running_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on: bool
) -> None:
    """Behind a busy instance, the dynamic batcher sends the waiting requests to its process shortly before
    the running batch is expected to end (once it has seen a batch of that size), as one batch, and every
    request gets its own answer. A batch smaller than the running one is not sent ahead (it would split a
    closed loop's callers into smaller batches). Without ``SHIPYARD_PYTHON_PREFETCH=1`` nothing is sent ahead."""
    from shipyard.serving_runtime.scheduling.batching import BatchingSettings
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    if on:
        monkeypatch.setenv("SHIPYARD_PYTHON_PREFETCH", "1")
    else:
        monkeypatch.delenv("SHIPYARD_PYTHON_PREFETCH", raising=False)
    monkeypatch.setenv("SHIPYARD_PYTHON_PREFETCH_LEAD_US", "20000")  # a window of 10 ms (a quarter of 40): a
    instance = python_instance(tmp_path, "slow", SLOW_MODEL)  # loaded test machine's late timer still hits it
    sent_ahead: list[int] = []
    presend = instance.presend

    def counted(requests: list[Any]) -> Any:
        sent_ahead.append(len(requests))
        return presend(requests)

    instance.presend = counted
    batcher = DynamicBatcher([instance], "slow", 1, BatchingSettings(max_batch_size=8))

    async def burst(first: int, behind: int) -> list[int]:
        """``first`` requests, then (the instance busy with them) ``behind`` more; the sizes sent ahead."""
        del sent_ahead[:]
        running = [asyncio.ensure_future(batcher.submit(_request(float(i)))) for i in range(first)]
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit(_request(float(first + i)))) for i in range(behind)]
        results = await asyncio.gather(*running, *waiting)
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], np.full((1, 3), 2.0 * i, np.float32))
        return list(sent_ahead)

    async def main() -> list[list[int]]:
        got = [await burst(first, behind) for first, behind in ((2, 2), (2, 2), (2, 3), (2, 1))]
        await batcher.drain()
        return got

    try:
        got = asyncio.run(main())
    finally:
        batcher.close()
    # the first burst teaches it what a batch of two costs; then the two and the three behind are sent
    # ahead, the one behind is not
    assert got == ([[], [2], [3], []] if on else [[], [], [], []])

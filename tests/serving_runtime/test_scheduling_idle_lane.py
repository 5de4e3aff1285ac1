"""The idle lane (scheduling/idle_lane.py) with real ONNX Runtime instances: background requests run whole on
the lane's instance, whose thread is at the OS's idle priority while it computes (and normal otherwise, where
the OS lets it raise itself again); real-time requests overtake a background request that is computing there
(they are answered while it is held); the real-time instance takes no background request the lane can run
while real-time work is recent, and borrows pieces of them when it is not (a real-time request then waits
for one piece at most).

The lane's instance is a real ORT session behind a gate (``Gated``): what it runs waits for the test to open
the gate, so "overtaking" is shown by order of answers, not by timing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping

import numpy as np
import pytest
from test_scheduling_onnx import ADD_SUB, Recorded, add_sub_request, load

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling import InferenceRequest, create_scheduler
from shipyard.serving_runtime.scheduling.background import background_from_config
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher
from shipyard.serving_runtime.scheduling.idle_lane import LaneWorker
from shipyard.zoo import onnx_model


def lane_config(
    recent_us: int = 10_000_000, instances: int = 1, fill: int = 0, priority: str = "idle", lend: str = ""
) -> str:
    params = {"background_instances": instances, "background_recent_us": recent_us, "background_slice_rows": 4,
              "background_fill_rows": fill, "background_thread_priority": priority,
              "background_share_rows": 0, **({"background_lend": lend} if lend else {})}  # fmt: skip
    text = "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    return ADD_SUB.format(mbs=64).replace(
        "dynamic_batching { }", "dynamic_batching { priority_levels: 2 default_priority_level: 1 }\n" + text
    )


class Gated:
    """A real instance whose executions wait for ``gate``."""

    def __init__(self, inner: Recorded) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: list[int] = []
        self.policies: list[int] = []  # the thread's scheduling policy while it computes (Linux)

    @property
    def runs(self) -> list[tuple[int, float, float]]:
        return self.inner.runs

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_native_id())
        if sys.platform == "linux":
            self.policies.append(os.sched_getscheduler(0))
        self.entered.set()
        self.gate.wait(30)
        return self.inner.execute(inputs, outputs)

    def close(self) -> None:
        self.inner.close()


def lane_scheduler(config: str) -> tuple[DynamicBatcher, Recorded, Gated]:
    realtime, lane = load(onnx_model("add_sub"), 2)
    gated = Gated(lane)
    instances: list[BackendInstance] = [realtime, gated]  # type: ignore[list-item]
    made = create_scheduler(parse_config_text(config), instances, "add_sub", 1)
    assert isinstance(made, DynamicBatcher)
    return made, realtime, gated


def background(seed: int, rows: int) -> tuple[InferenceRequest, np.ndarray, np.ndarray]:
    req, a, b = add_sub_request(seed, rows=rows)
    req.priority = 2
    return req, a, b


def assert_answer(outputs: dict[str, np.ndarray], a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(outputs["OUTPUT0"], a + b, rtol=1e-6)
    np.testing.assert_allclose(outputs["OUTPUT1"], a - b, rtol=1e-6)


async def realtime_burst(s: DynamicBatcher, first_seed: int, count: int = 20) -> int:
    cases = [add_sub_request(first_seed + i, rows=1 + i % 2) for i in range(count)]
    results = await asyncio.gather(*(s.submit(req) for req, _, _ in cases))
    for (_, a, b), outputs in zip(cases, results, strict=True):
        assert_answer(outputs, a, b)
    return sum(req.batch_size for req, _, _ in cases)


def test_lane_parameters_from_config() -> None:
    config = parse_config_text(lane_config(priority="nice"))
    rules = background_from_config(config, 2, "m")
    assert rules is not None and (rules.instances, rules.thread_priority) == (1, "nice")
    with pytest.raises(ModelConfigError, match="'background_thread_priority' must be one of idle, nice, normal"):
        background_from_config(parse_config_text(lane_config(priority="lowest")), 2, "m")
    no_lane = lane_config(instances=0).replace('"background_slice_rows"', '"unused"')
    with pytest.raises(ModelConfigError, match="'background_thread_priority' needs 'background_instances'"):
        background_from_config(parse_config_text(no_lane), 2, "m")
    with pytest.raises(ModelConfigError, match="'background_instances' is 2 but the instance_group has 2"):
        lane_scheduler(lane_config(instances=2))
    assert rules.lend and background_from_config(parse_config_text(lane_config(lend="0")), 2, "m").lend is False
    with pytest.raises(ModelConfigError, match=r"'background_lend' must be 1 .* or 0 .*, got 'no'"):
        background_from_config(parse_config_text(lane_config(lend="no")), 2, "m")
    with pytest.raises(ModelConfigError, match="'background_lend' needs 'background_instances'"):
        background_from_config(parse_config_text(no_lane.replace("background_thread_priority", "background_lend")
                                                 .replace('"idle"', '"0"')), 2, "m")  # fmt: skip


async def test_real_time_requests_overtake_a_background_request_on_the_idle_lane() -> None:
    s, realtime, lane = lane_scheduler(lane_config())
    early = await realtime_burst(s, 1000, count=2)  # real-time work is recent: the lane computes at idle priority
    job, a, b = background(100, rows=48)
    held = asyncio.ensure_future(s.submit(job))
    await asyncio.to_thread(lane.entered.wait, 10)  # the job computes on the lane (held by the gate)
    rows = early + await realtime_burst(s, 0)
    assert not held.done(), "the background request finished before the gate opened"
    assert sum(run[0] for run in realtime.runs) == rows, "the real-time instance ran background rows"
    lane.gate.set()
    assert_answer(await held, a, b)  # one answer, whole, every row
    assert [run[0] for run in lane.runs] == [48], "the lane runs a background request whole"
    if sys.platform == "linux":
        assert lane.policies == [os.SCHED_IDLE], "the lane did not compute at idle priority"
        (worker,) = [w for w in s._workers if isinstance(w, LaneWorker)]
        after = os.sched_getscheduler(lane.threads[0])  # answered: the thread is past its compute
        assert after == (os.SCHED_OTHER if worker.compute_priority.per_call else os.SCHED_IDLE)
        assert worker.compute_priority.switches == (1 if worker.compute_priority.per_call else 0)
        own = next(t for t in threading.enumerate() if t.name == "add_sub-v1-i0").native_id
        assert own is not None and os.sched_getscheduler(own) == os.SCHED_OTHER
        with open(f"/proc/self/task/{lane.threads[0]}/comm") as comm:  # named in the OS too (top -H, py-spy)
            assert comm.read().strip() == "add_sub-v1-bg0"
    stats = s.stats
    assert stats.inference_count == rows + 48 and s.pending_count() == 0
    s.close()


async def test_the_real_time_instance_takes_no_background_work_while_real_time_is_recent() -> None:
    s, realtime, lane = lane_scheduler(lane_config())
    await realtime_burst(s, 0)  # real-time work is recent (10 s)
    first, a1, b1 = background(100, rows=40)
    second, a2, b2 = background(101, rows=24)
    held = [asyncio.ensure_future(s.submit(req)) for req in (first, second)]
    await asyncio.to_thread(lane.entered.wait, 10)
    rows = await realtime_burst(s, 50)
    assert not any(f.done() for f in held) and s.pending_count() == 2, "a background request ran off the lane"
    assert sum(run[0] for run in realtime.runs) == 2 * rows
    lane.gate.set()
    assert_answer(await held[0], a1, b1)
    assert_answer(await held[1], a2, b2)
    assert [run[0] for run in lane.runs] == [40, 24]
    s.close()


class Stepped(Recorded):
    """A real instance that runs one batch per ``step()`` (the real-time instance, to order its batches)."""

    def __init__(self, inner: Recorded) -> None:
        super().__init__(inner.inner)
        self.tokens = threading.Semaphore(0)
        self.waiting = threading.Event()

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self.waiting.set()
        assert self.tokens.acquire(timeout=30)
        return super().execute(inputs, outputs)

    async def step(self) -> None:
        """Let the batch waiting in ``execute`` run; return once the next one waits."""
        self.waiting.clear()
        self.tokens.release()
        assert await asyncio.to_thread(self.waiting.wait, 10)


async def test_the_real_time_instance_borrows_background_work_when_real_time_is_quiet() -> None:
    """No real-time work for longer than ``background_recent_us``: while the lane holds one background request,
    the real-time instance runs the next one in pieces of ``background_slice_rows`` (work-conserving: a job
    alone uses every instance); a real-time request that arrives meanwhile runs right after the piece in the
    way, before the job's next piece; every row runs once and each job gets one whole answer."""
    s, realtime, lane = lane_scheduler(lane_config(recent_us=1))
    stepped = Stepped(realtime)
    s._workers[0].instance = stepped  # the real-time worker's instance: the same ORT session, stepped
    first, a1, b1 = background(100, rows=40)
    second, a2, b2 = background(101, rows=24)
    held = asyncio.ensure_future(s.submit(first))
    await asyncio.to_thread(lane.entered.wait, 10)  # the lane holds the first request
    borrowed = asyncio.ensure_future(s.submit(second))
    assert await asyncio.to_thread(stepped.waiting.wait, 10)  # the real-time instance took a piece of it
    rt, a, b = add_sub_request(7, rows=1)
    answer = asyncio.ensure_future(s.submit(rt))
    await asyncio.sleep(0.05)
    await stepped.step()  # the piece in the way ends; the real-time request is next, not the job's next piece
    await stepped.step()
    assert_answer(await asyncio.wait_for(answer, 10), a, b)
    assert [run[0] for run in stepped.runs] == [4, 1], "the real-time request waited for more than one piece"
    stepped.tokens.release(5)  # the job's other 20 rows: 5 pieces
    assert_answer(await asyncio.wait_for(borrowed, 10), a2, b2)
    assert [run[0] for run in stepped.runs] == [4, 1] + [4] * 5 and not held.done()
    lane.gate.set()
    assert_answer(await held, a1, b1)
    assert [run[0] for run in lane.runs] == [40]
    assert s.stats.inference_count == 40 + 24 + 1 and s.pending_count() == 0
    stepped.tokens.release(100)
    s.close()


async def test_a_job_alone_uses_every_instance_and_each_row_once() -> None:
    """Background requests only (nothing real-time ever): the lane runs requests whole, the real-time
    instance runs others in pieces, at once; every answer is whole and right."""
    s, realtime, lane = lane_scheduler(lane_config(recent_us=100_000))
    lane.gate.set()
    jobs = [background(200 + i, rows=20 + i) for i in range(12)]
    for (_, a, b), outputs in zip(jobs, await asyncio.gather(*(s.submit(r) for r, _, _ in jobs)), strict=True):
        assert_answer(outputs, a, b)
    on_lane, borrowed = sum(r[0] for r in lane.runs), sum(r[0] for r in realtime.runs)
    assert on_lane and borrowed, f"rows on the lane {on_lane}, on the real-time instance {borrowed}"
    assert on_lane + borrowed == sum(r.batch_size for r, _, _ in jobs) == s.stats.inference_count
    assert max(r[0] for r in realtime.runs) <= 4, "a borrowed piece held more than background_slice_rows"
    if sys.platform == "linux":  # nothing real-time to protect: the lane computes at normal priority
        assert set(lane.policies) == {os.SCHED_OTHER}
    s.close()


async def test_an_idle_lane_takes_real_time_work_at_normal_priority() -> None:
    """With no background work, the lane's instance is not left idle: a real-time request that finds the
    real-time instance busy runs there, computing at normal priority (the lane computes background work at
    idle priority); a model with a lane keeps all its instances for real-time traffic when no job runs."""
    s, realtime, lane = lane_scheduler(lane_config())
    lane.gate.set()
    await realtime_burst(s, 1000, count=2)  # real-time work is recent (10 s)
    job, a, b = background(100, rows=8)
    assert_answer(await s.submit(job), a, b)  # the lane's thread has started (and probed its priority)
    (worker,) = [w for w in s._workers if isinstance(w, LaneWorker)]
    if not worker.compute_priority.per_call:
        pytest.skip("the OS does not let the lane's thread raise its priority again: it never takes real-time work")
    stepped = Stepped(realtime)
    s._workers[0].instance = stepped
    first, a1, b1 = add_sub_request(1, rows=1)
    held = asyncio.ensure_future(s.submit(first))
    assert await asyncio.to_thread(stepped.waiting.wait, 10)  # the real-time instance holds it
    second, a2, b2 = add_sub_request(2, rows=2)
    assert_answer(await asyncio.wait_for(s.submit(second), 10), a2, b2)  # on the lane, while the first is held
    assert not held.done() and [run[0] for run in lane.runs] == [8, 2]
    if sys.platform == "linux":
        assert lane.policies == [os.SCHED_IDLE, os.SCHED_OTHER]
    stepped.tokens.release(10)
    assert_answer(await asyncio.wait_for(held, 10), a1, b1)
    s.close()


async def test_with_lending_off_the_idle_lane_takes_no_real_time_work() -> None:
    """``background_lend: 0``: the lane is for background work only; a real-time request that finds the real-time
    instance busy waits for it, even with the lane idle (the real-time side keeps one instance, with or without a
    job: what the benchmark compares)."""
    s, realtime, lane = lane_scheduler(lane_config(lend="0"))
    lane.gate.set()
    job, a, b = background(100, rows=8)
    assert_answer(await s.submit(job), a, b)  # the lane's thread has started
    stepped = Stepped(realtime)
    s._workers[0].instance = stepped
    first, a1, b1 = add_sub_request(1, rows=1)
    held = asyncio.ensure_future(s.submit(first))
    assert await asyncio.to_thread(stepped.waiting.wait, 10)  # the real-time instance holds it
    second, a2, b2 = add_sub_request(2, rows=2)
    waiting = asyncio.ensure_future(s.submit(second))
    deadline = asyncio.get_running_loop().time() + 10
    while not len(s._queue) and asyncio.get_running_loop().time() < deadline:  # the batcher has it (queued)
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)  # a lane that lends would have taken it by now (it is idle); none does here
    assert len(s._queue) == 1 and not waiting.done() and [run[0] for run in lane.runs] == [8]
    stepped.tokens.release(10)
    assert_answer(await asyncio.wait_for(held, 10), a1, b1)
    assert_answer(await asyncio.wait_for(waiting, 10), a2, b2)
    assert [run[0] for run in lane.runs] == [8], "the lane ran real-time work with lending off"
    s.close()


async def test_co_batching_and_the_lane_share_one_background_request() -> None:
    """With ``background_fill_rows`` too, a real-time batch takes rows of the background request and the lane
    runs the rest: every row once, in order, one answer."""
    s, realtime, lane = lane_scheduler(lane_config(fill=8))
    lane.gate.set()
    await realtime_burst(s, 0)
    jobs = [background(100 + i, rows=30) for i in range(4)]
    answers = asyncio.gather(*(s.submit(req) for req, _, _ in jobs))
    await realtime_burst(s, 50, count=40)
    for (_, a, b), outputs in zip(jobs, await answers, strict=True):
        assert_answer(outputs, a, b)
    assert s.stats.inference_count == sum(run[0] for run in realtime.runs + lane.runs)
    assert s.pending_count() == 0
    s.close()


async def test_a_background_request_the_lane_cannot_take_runs_on_the_real_time_instance() -> None:
    """A decoupled request (``on_response``) cannot be run in parts: the lane leaves it, and the real-time
    instance runs it even while real-time work is recent (it is not starved)."""
    s, realtime, lane = lane_scheduler(lane_config())
    await realtime_burst(s, 0)
    job, a, b = background(100, rows=16)
    job.on_response = lambda *_: None
    assert_answer(await asyncio.wait_for(s.submit(job), 10), a, b)
    assert realtime.runs[-1][0] == 16 and not lane.runs
    lane.gate.set()
    s.close()


UNPRIVILEGED_PROBE = """
import threading
from shipyard.serving_runtime.scheduling.idle_lane import IdleLane, LaneWorker
from shipyard.serving_runtime.scheduling.background import BackgroundSettings
worker = LaneWorker(None, "lane", "idle")
thread = threading.Thread(target=worker.compute_priority.probe)
thread.start()
thread.join()
lane = IdleLane([worker], BackgroundSettings(level=1, instances=1), 4)
print(worker.applied, worker.compute_priority.per_call, lane.can_lend())
"""


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_without_the_privilege_to_raise_again_the_lane_stays_lowered_and_lends_nothing() -> None:
    """A process without ``CAP_SYS_NICE`` (and ``RLIMIT_NICE`` 0, the default) cannot raise a thread back from
    ``SCHED_IDLE``: the lane's thread stays lowered for good, says so once, and never takes real-time work
    (which would then compute at idle priority)."""
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", sys.executable, "-c", UNPRIVILEGED_PROBE]  # fmt: skip
    done = subprocess.run(unprivileged, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["idle", "False", "False"]
    assert "cannot raise its priority again" in done.stderr and "CAP_SYS_NICE" in done.stderr

"""The idle lane against a real serving runtime (serving_runtime/scheduling/idle_lane.py): ``shipyard score``
on a small MLP with two instances, the second of them the lane (``background_instances: 1``):

- alone (no real-time traffic for ``background_recent_us``), the job uses both instances: the lane runs its
  requests whole, the real-time instance borrows others in pieces of ``background_slice_rows``; every row
  computes once (the server's batch statistics) and is written once;
- next to a real-time gRPC client, the job's predictions equal, bit for bit and by key, those of the job
  alone (in-process); its requests ran whole (32-row batches, on the lane) and no real-time batch held a job
  row (the server's batch statistics);
- the lane's thread is at the OS's idle priority (Linux ``SCHED_IDLE``) only while it computes, where the
  OS lets it raise itself again (as root here), else for good: no other thread of the server is lowered.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from score_harness import Runtime, start_runtime, write_model
from test_score_cobatch import JOB_BATCH, MLP_CONFIG, SLICE, RealTime, _by_key, _job, batch_sizes, mlp_onnx

from shipyard.components.score import score

SCHED_IDLE = 5
RECENT_S = 1.0
LANE_CONFIG = (
    MLP_CONFIG.replace("count: 1 kind: KIND_CPU", "count: 2 kind: KIND_CPU")
    .replace(
        '"background_recent_us" value: { string_value: "60000000" }',
        f'"background_recent_us" value: {{ string_value: "{int(RECENT_S * 1e6)}" }}',
    )
    .replace(
        '"background_fill_rows" value: { string_value: "8" }', '"background_fill_rows" value: { string_value: "0" }'
    )
    + 'parameters { key: "background_instances" value: { string_value: "1" } }\n'
)


@pytest.fixture(scope="module")
def lane_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runtime]]:
    repo = tmp_path_factory.mktemp("lane-repo")
    assert f'"{int(RECENT_S * 1e6)}"' in LANE_CONFIG
    assert "count: 2" in LANE_CONFIG and 'string_value: "0" } }\nparameters { key: "background_share' in LANE_CONFIG
    write_model(repo, "mlp", mlp_onnx(), LANE_CONFIG)
    runtime = start_runtime(repo, tmp_path_factory.mktemp("lane") / "server.log")
    yield repo, runtime
    runtime.process.terminate()
    runtime.process.wait(20)


def scheduling_policies(pid: int) -> list[int]:
    """Each thread's scheduling policy (``/proc/PID/task/TID/stat`` field 41)."""
    policies = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        policies.append(int(fields[38]))  # fields from the 3rd on: 41 - 3
    return policies


def can_raise_again() -> bool:
    """Whether a thread of this process (and so of the server, started by it) may go back from SCHED_IDLE."""
    result: list[bool] = []

    def probe() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


def test_a_job_alone_uses_both_instances(tmp_path: Path, lane_served: tuple[Path, Runtime]) -> None:
    _, served = lane_served
    rows = 2000
    source, _, keys = _job(tmp_path, rows)
    time.sleep(RECENT_S)  # no real-time work is recent, whatever ran before
    before = batch_sizes(served.grpc_url)
    summary = score(str(source), str(tmp_path / "alone"), "mlp", url=served.grpc_url, key="id",
                    batch_size=JOB_BATCH, part_rows=256, show_progress=False)  # fmt: skip
    after = batch_sizes(served.grpc_url)
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert summary["rows"] == rows and sorted(_by_key(tmp_path / "alone")) == sorted(int(k) for k in keys)
    assert sum(size * count for size, count in ran.items()) == rows, f"rows computed != rows sent: {ran}"
    assert ran.get(JOB_BATCH) and ran.get(SLICE), f"not both instances (lane: {JOB_BATCH}, borrowed: {SLICE}): {ran}"
    if sys.platform == "linux":  # the job is over: where the OS lets it, the lane thread is back at normal
        assert scheduling_policies(served.process.pid).count(SCHED_IDLE) == (0 if can_raise_again() else 1)


def test_the_job_runs_whole_on_the_idle_lane_beside_real_time(
    tmp_path: Path, lane_served: tuple[Path, Runtime]
) -> None:
    repo, served = lane_served
    rows = 2000
    source, _, keys = _job(tmp_path, rows)
    score(str(source), str(tmp_path / "alone"), "mlp", repository=str(repo), key="id", batch_size=JOB_BATCH,
          show_progress=False)  # fmt: skip
    before = batch_sizes(served.grpc_url)
    with RealTime(served.grpc_url) as realtime:
        summary = score(str(source), str(tmp_path / "mixed"), "mlp", url=served.grpc_url, key="id",
                        batch_size=JOB_BATCH, part_rows=256, show_progress=False)  # fmt: skip
        answered_during_job = realtime.answered
    after = batch_sizes(served.grpc_url)
    assert summary["rows"] == rows and summary["priority"] == 2 and realtime.refused == 0
    alone, mixed = _by_key(tmp_path / "alone"), _by_key(tmp_path / "mixed")
    assert sorted(mixed) == sorted(int(k) for k in keys) == sorted(alone)
    differing = [k for k in alone if alone[k] != mixed[k]]
    assert not differing, f"{len(differing)} of {rows} rows differ from the job alone, e.g. key {differing[0]}"
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    ran = {size: count for size, count in ran.items() if count}
    # 2 real-time clients: real-time batches of 1-2 rows; the job's 2000 rows: 62 whole requests of 32 and 16
    job_batches = {size: count for size, count in ran.items() if size > 2}
    assert job_batches == {JOB_BATCH: rows // JOB_BATCH, rows % JOB_BATCH: 1}, ran
    assert answered_during_job > 10
    if sys.platform == "linux":
        assert scheduling_policies(served.process.pid).count(SCHED_IDLE) == (0 if can_raise_again() else 1)
        assert os.sched_getscheduler(0) != SCHED_IDLE  # the test itself is not what was lowered

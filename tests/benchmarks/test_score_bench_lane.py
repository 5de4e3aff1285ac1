"""benchmarks/score_bench.py writes the idle lane into the served config: one more instance and the lane's
parameters, which the runtime's scheduler accepts (the lane's instance is the last one)."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import common, score_bench
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.scheduling.batching import settings_from_config


def test_the_idle_lane_adds_an_instance_and_its_parameters(tmp_path: Path) -> None:
    model = common.load_model_spec(score_bench.MODEL)
    args = score_bench.parse_args(["--background-instances", "1", "--fill-rows", "0", "--client", "python"])
    background = {"background_slice_rows": args.slice_rows, "background_fill_rows": args.fill_rows,
                  "background_instances": args.background_instances,
                  "background_thread_priority": args.thread_priority}  # fmt: skip
    repo = score_bench.write_repository(tmp_path, model, background)
    config = parse_config_text((repo / score_bench.MODEL / "config.pbtxt").read_text())
    assert config.instance_group[0].count == 2
    batching, _ = settings_from_config(config, "wide_mlp")
    rules = batching.background
    assert rules is not None and (rules.instances, rules.thread_priority, rules.fill_rows) == (1, "idle", 0)
    plain = score_bench.write_repository(tmp_path / "plain", model, {"background_slice_rows": 16})
    assert parse_config_text((plain / score_bench.MODEL / "config.pbtxt").read_text()).instance_group[0].count == 1


def test_the_capacity_bound_says_what_share_the_job_could_have_at_most(tmp_path: Path) -> None:
    # real-time alone keeps 1.4 of 2 cores busy and its one instance computing 93% of the time; the job alone
    # scored at the in-process limit: the cores would leave it room, its one instance cannot
    rounds = [{"realtime_alone": {"machine_cores": cores, "instance_busy": 0.93}} for cores in (1.3, 1.4, 1.5)]
    results = {
        "meta": {"cpus": 2, "background": {"background_instances": 0}},
        "inprocess_limit": {"best": 4600.0},
        "alone_served": {"rows_per_s": 4600.0},
        "rounds": rounds,
    }
    cores, instances = score_bench.capacity_lines(results)
    assert "(2 - real-time alone's 1.40 (every process, /proc/stat), median of 3 windows)" in cores
    assert "at most 0.60x its alone throughput with real-time untouched; 0.88x if real-time gave up 20%" in cores
    assert cores.endswith("| >= 0.5x reachable | True |")
    assert "(1 - real-time alone's 0.93 (the model's batch_stats)" in instances
    assert "at most 0.07x its alone throughput with real-time untouched; 0.26x if real-time gave up 20%" in instances
    assert instances.endswith("| False |")
    lane = results | {"meta": {"cpus": 2, "background": {"background_instances": 1}}}
    assert score_bench.capacity_lines(lane)[1].endswith("| True |")  # a second instance leaves it room
    unmetered = [{"realtime_alone": {}} for _ in rounds]
    assert score_bench.capacity_lines(results | {"rounds": unmetered}) == []  # not measured: no row


def test_the_cpu_meter_reads_busy_cores_from_proc_stat(tmp_path: Path) -> None:
    from benchmarks.cpu_meter import MachineCPU, busy_cores, read_stat

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    assert read_stat(str(stat)) == (150, 1000)
    assert read_stat(str(tmp_path / "missing")) is None
    # 2 CPUs: 300 of 400 jiffies busy between t=1 and t=3 is 1.5 cores; t=0 and t=4 fall outside the stretch
    readings = [(0.0, 0, 0), (1.0, 100, 200), (3.0, 400, 600), (4.0, 900, 800)]
    assert busy_cores(readings, 0.5, 3.5, 2) == 1.5
    assert busy_cores(readings, 0.5, 1.5, 2) is None
    with MachineCPU(interval=0.02) as meter:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # this thread keeps one core busy
            pass
    assert len(meter.readings) >= 2 and meter.cores() is not None and 0.0 < meter.cores() <= meter.cpus  # type: ignore[operator]

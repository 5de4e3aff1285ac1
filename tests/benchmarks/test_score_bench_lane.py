"""benchmarks/score_bench.py writes the idle lane into the served config: one more instance and the lane's
parameters, which the runtime's scheduler accepts (the lane's instance is the last one)."""

from __future__ import annotations

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

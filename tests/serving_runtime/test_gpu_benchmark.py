"""benchmarks/gpu.py without a GPU: it refuses clearly, its pieces work on CPU, its report and
target checks are right on a synthetic result. (The measurement itself needs a GPU.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.devices import gpu_count

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is present: the no-GPU message cannot be shown here")
def test_without_a_gpu_it_exits_2_saying_nothing_was_measured(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == gpu.NO_GPU_EXIT, result.stderr
    assert "no CUDA GPU is visible" in result.stderr and "nothing was measured" in result.stderr
    assert not list(tmp_path.iterdir())  # no report pretending to be a measurement


def test_served_config_is_valid_and_places_instances_on_gpu0(tmp_path: Path) -> None:
    model = gpu.model_spec("wide_mlp")
    text = gpu.shipyard_gpu_config(model, "tensorrt", instances=3, max_batch=256)
    config = parse_config_text(text)
    assert config.backend == "tensorrt" and config.max_batch_size == 256
    assert list(config.instance_group[0].gpus) == [0] and config.instance_group[0].count == 3
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"engine")
    Path(f"{plan}.json").write_text("{}")
    repo = gpu.write_repository(tmp_path / "repo", [model], {model.name: plan}, "tensorrt", 2)
    assert sorted(p.name for p in (repo / "wide_mlp" / "1").iterdir()) == ["model.plan", "model.plan.json"]


def test_inprocess_measurement_runs_on_cpu() -> None:
    model = gpu.model_spec("wide_mlp")
    result = gpu.measure_inprocess(model, model.onnx_path, "onnxruntime", [1, 4], seconds=0.05, device="cpu")
    assert set(result["sweep"]) == {"1", "4"} and result["best"] > 0 and result["single_item_p50_ms"] > 0
    assert result["gpu_utilization_at_best"] is None


@pytest.mark.slow
def test_resnet224_export_answers_like_torch() -> None:
    import onnxruntime as ort
    import torch

    from shipyard.zoo import torch_model

    spec = gpu.model_spec("resnet224")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    with torch.inference_mode():
        expected = torch_model("resnet_cnn")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)


def _synthetic(served: float, util: float, c1_p50: float) -> dict:
    cells = [
        {"concurrency": 1, "throughput": 400.0, "p50_ms": c1_p50, "p99_ms": 3.0, "gpu_utilization": 0.2, "errors": 0},
        {"concurrency": 256, "throughput": served, "p50_ms": 20.0, "p99_ms": 35.0, "gpu_utilization": 0.97},
    ]
    inprocess = {"best": 10_000.0, "best_batch": 128, "batch1": 900.0, "single_item_p50_ms": 1.1}
    return {
        "meta": {"gpu": "Test GPU (compute capability 9.0)", "backend": "tensorrt", "instances": 2},
        "models": {"resnet224": {"inprocess": inprocess, "served": cells}},
        "two_models": {"concurrency_each": 256, "models": {"resnet224": cells[1]}, "gpu_utilization": util},
    }


def test_report_checks_issue_7_targets() -> None:
    good = {c["check"]: c["ok"] for c in gpu.derive(_synthetic(served=9_500.0, util=0.95, c1_p50=1.8))}
    assert all(good.values()), good
    bad = gpu.derive(_synthetic(served=8_000.0, util=0.5, c1_p50=2.5))
    assert [c["ok"] for c in bad] == [False, False, False]
    assert [c["ok"] for c in gpu.derive({"models": {"m": {"error": "boom"}}})] == [None, None, None]
    markdown = gpu.render_markdown(_synthetic(served=9_500.0, util=0.95, c1_p50=1.8))
    assert "| 256 | 9,500 | 20.00 | 35.00 | 97% | 0.95x | 0 |" in markdown
    assert "In-process limit: 10,000 inf/s at batch 128" in markdown and "GPU utilization: 95%" in markdown
    assert "NOT met" not in markdown and "| met |" in markdown

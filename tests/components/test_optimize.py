"""Optimization: target choice (auto / tensorrt error), ONNX Runtime FP32 / INT8 / FP16, TensorRT on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from shipyard.components.errors import ComponentError, TargetUnavailable
from shipyard.components.optimize import Probe, optimize, select_target

NO_TRT = Probe(None, "the tensorrt package is not installed", None, "no NVIDIA driver/GPU")


def test_auto_picks_onnxruntime_here_and_says_why() -> None:
    choice = select_target("auto")
    assert choice.target == "onnxruntime"
    assert "ONNX Runtime on CPU because" in choice.reason and ("tensorrt" in choice.reason.lower())


def test_tensorrt_without_gpu_is_a_clear_error_never_a_fallback(tmp_path: Path, digits_onnx: Path) -> None:
    with pytest.raises(TargetUnavailable, match=r"--target tensorrt cannot run here: .*use --target onnxruntime"):
        optimize(digits_onnx, tmp_path, target="tensorrt", progress=False)
    assert not list(tmp_path.iterdir())  # nothing written


def test_target_logic_for_each_machine() -> None:
    both = Probe("10.9", "TensorRT 10.9 is installed", "NVIDIA H100", "GPU 0 is NVIDIA H100")
    assert select_target("auto", both).target == "tensorrt"
    assert "H100" in select_target("auto", both).reason
    trt_no_gpu = Probe("10.9", "TensorRT 10.9 is installed", None, "no NVIDIA driver/GPU")
    choice = select_target("auto", trt_no_gpu)
    assert choice.target == "onnxruntime" and "no NVIDIA driver/GPU" in choice.reason
    with pytest.raises(TargetUnavailable, match="no NVIDIA driver/GPU"):
        select_target("tensorrt", trt_no_gpu)
    with pytest.raises(ComponentError, match="unknown target 'tpu'"):
        select_target("tpu", NO_TRT)


@pytest.mark.parametrize(
    ("precision", "quantization", "max_diff", "min_agree"),
    [("fp32", "dynamic", 1e-4, 1.0), ("fp16", "dynamic", 0.05, 0.99), ("int8", "dynamic", None, 0.97),
     ("int8", "static", None, 0.97)],
)  # fmt: skip
def test_onnxruntime_precisions(
    tmp_path: Path, digits_onnx: Path, digits: object, precision: str, quantization: str, max_diff: float | None,
    min_agree: float,
) -> None:  # fmt: skip
    x = digits.x_test  # type: ignore[attr-defined]
    calibration = {"input": digits.x_train[:200]}  # type: ignore[attr-defined]
    result = optimize(digits_onnx, tmp_path, target="onnxruntime", precision=precision, quantization=quantization,
                      calibration_inputs=calibration, progress=False)  # fmt: skip
    assert result.path == tmp_path / "model.onnx" and result.platform == "onnxruntime_onnx"
    assert result.max_batch_size == 64  # from the export's metadata
    assert "ONNX Runtime" in result.runtime and len(result.sha256) == 64
    onnx.checker.check_model(str(result.path))
    ref = ort.InferenceSession(str(digits_onnx)).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(result.path)).run(None, {"input": x})[0]
    if max_diff is not None:
        assert np.abs(got - ref).max() <= max_diff
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= min_agree
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
        assert ops & {"ConvInteger", "QLinearConv", "DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger"}, ops


def test_static_int8_needs_calibration(tmp_path: Path, digits_onnx: Path) -> None:
    with pytest.raises(ComponentError, match="calibration data"):
        optimize(digits_onnx, tmp_path, target="onnxruntime", precision="int8", quantization="static", progress=False)


def test_progress_output_is_shown(tmp_path: Path, digits_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    optimize(digits_onnx, tmp_path, target="auto", progress=True)
    err = capsys.readouterr().err
    assert "auto: ONNX Runtime on CPU" in err and "graph optimizations" in err


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_build(tmp_path: Path, digits_onnx: Path, digits: object, precision: str) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from shipyard.components.validate import load_runner

    cache = tmp_path / "timing.cache"
    result = optimize(digits_onnx, tmp_path / "out", target="tensorrt", precision=precision, max_batch_size=64,
                      calibration_inputs={"input": digits.x_train[:256]}, timing_cache=cache,  # type: ignore[attr-defined]
                      progress=False)  # fmt: skip
    assert result.path.name == "model.plan" and result.target == "tensorrt"
    assert "TensorRT" in result.runtime and cache.is_file()
    assert result.details["profile"]["input"] == [[1, 1, 8, 8], [32, 1, 8, 8], [64, 1, 8, 8]]
    runner = load_runner(result.path)
    ref = load_runner(digits_onnx)
    x = digits.x_test[:64]  # type: ignore[attr-defined]
    for batch in (1, 64):
        got = runner.run({"input": x[:batch]})["logits"]
        want = ref.run({"input": x[:batch]})["logits"]
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95

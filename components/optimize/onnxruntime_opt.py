"""ONNX Runtime (CPU) optimization: graph optimizations saved into the model, optional INT8 or FP16.

Public: ``optimize_onnxruntime(onnx_path, output_path, *, precision="fp32", quantization="dynamic",
calibration_inputs=None, graph_level="extended", step=None) -> dict`` (details of what was done).

Order: FP32 -> (INT8: ``quant_pre_process`` then ``quantize_dynamic`` or ``quantize_static`` in QDQ format with
the calibration data) or (FP16: ``convert_float_to_float16`` keeping FP32 inputs/outputs) -> ONNX Runtime graph
optimizations at ``graph_level`` written with ``SessionOptions.optimized_model_filepath``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.components.errors import ComponentError, OptimizeError
from shipyard.components.optimize.calibration import iter_batches

GRAPH_LEVELS = ("disabled", "basic", "extended", "all")
PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATIONS = ("dynamic", "static")


def _graph_level(name: str) -> Any:
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if name not in levels:
        raise ComponentError(f"unknown graph optimization level {name!r}; choose one of: {', '.join(GRAPH_LEVELS)}")
    return levels[name]


def _calibration_reader(inputs: Mapping[str, np.ndarray], batch_size: int = 32) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter_batches(inputs, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Reader()


def save_graph_optimized(src: Path, dst: Path, level: str) -> None:
    """Let ONNX Runtime optimize ``src`` at ``level`` and write the result to ``dst`` (CPU provider)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = _graph_level(level)
    options.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptimizeError(f"ONNX Runtime could not load/optimize {src}: {exc}") from exc
    if not dst.is_file():
        raise OptimizeError(f"ONNX Runtime did not write the optimized model to {dst}")


def optimize_onnxruntime(
    onnx_path: str | Path,
    output_path: str | Path,
    *,
    precision: str = "fp32",
    quantization: str = "dynamic",
    calibration_inputs: Mapping[str, np.ndarray] | None = None,
    graph_level: str = "extended",
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write an ONNX Runtime-optimized model to ``output_path``; returns what was done.

    Raises: ComponentError (bad precision/quantization, static INT8 without calibration data),
    OptimizeError (ONNX Runtime or the quantizer failed).
    """
    if precision not in PRECISIONS:
        raise ComponentError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and quantization not in QUANTIZATIONS:
        raise ComponentError(f"unknown quantization {quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    if precision == "int8" and quantization == "static" and not calibration_inputs:
        raise ComponentError("static INT8 quantization needs calibration data (--calibration-data FILE.npz)")
    _graph_level(graph_level)
    say = step or (lambda _msg: None)
    src = Path(onnx_path)
    dst = Path(output_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"graph_level": graph_level}
    with tempfile.TemporaryDirectory(prefix="shipyard-ort-") as tmp_dir:
        tmp = Path(tmp_dir)
        current = src
        if precision == "int8":
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            say("pre-processing for quantization (shape inference, basic fusions)")
            pre = tmp / "pre.onnx"
            try:
                quant_pre_process(str(current), str(pre), skip_symbolic_shape=False)
            except Exception:  # symbolic shape inference fails on some graphs; ONNX shape inference then
                quant_pre_process(str(current), str(pre), skip_symbolic_shape=True)
            quantized = tmp / "int8.onnx"
            try:
                if quantization == "dynamic":
                    say("INT8 dynamic quantization (weights INT8, activations quantized at run time)")
                    quantize_dynamic(str(pre), str(quantized), weight_type=QuantType.QUInt8)
                else:
                    assert calibration_inputs is not None
                    rows = next(iter(calibration_inputs.values())).shape[0]
                    say(f"INT8 static quantization, calibrating on {rows} samples")
                    quantize_static(
                        str(pre), str(quantized), _calibration_reader(calibration_inputs),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                    )  # fmt: skip
                    details["calibration_samples"] = int(rows)
            except Exception as exc:
                raise OptimizeError(f"INT8 {quantization} quantization of {src} failed: {exc}") from exc
            details["quantization"] = quantization
            current = quantized
        elif precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            say("FP16 conversion (inputs and outputs stay FP32)")
            try:
                half = convert_float_to_float16(onnx.load(str(current)), keep_io_types=True)
            except Exception as exc:
                raise OptimizeError(f"FP16 conversion of {src} failed: {exc}") from exc
            current = tmp / "fp16.onnx"
            onnx.save(half, str(current))
        say(f"ONNX Runtime graph optimizations ({graph_level})")
        optimized = tmp / "optimized.onnx"
        save_graph_optimized(current, optimized, graph_level)
        shutil.move(str(optimized), str(dst))
    return details

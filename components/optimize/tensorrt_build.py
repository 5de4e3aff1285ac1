"""TensorRT engine build (GPU only; ``tensorrt`` is imported lazily, inside the functions).

Public: ``build_tensorrt_engine(onnx_path, output_path, *, precision="fp16", min_batch_size=1,
opt_batch_size=None, max_batch_size=64, workspace_mb=1024, timing_cache=None, calibration_inputs=None,
calibration_cache=None, step=None) -> dict`` (details: TensorRT version, GPU, profile, build seconds),
``gpu_description() -> str``.

One optimization profile covers the batch range min/opt/max (only the batch axis may be dynamic). FP16 and
INT8 (entropy calibration on ``calibration_inputs``; device buffers through torch.cuda) are builder flags.
The timing cache is read before and written after the build, so rebuilds on the same GPU are fast. An engine is
tied to the TensorRT version and the GPU: both are returned and recorded on the model version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.components.errors import ComponentError, OptimizeError
from shipyard.components.optimize.calibration import iter_batches


def gpu_description(index: int = 0) -> str:
    """``<GPU name> (compute capability X.Y)`` through NVML; ``unknown GPU`` when NVML is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            return f"{name} (compute capability {major}.{minor})"
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return "unknown GPU"


def _entropy_calibrator(trt: Any, inputs: Mapping[str, np.ndarray], batch_size: int, cache: Path | None) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise OptimizeError("INT8 calibration needs torch with CUDA for device buffers (torch.cuda.is_available())")

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter_batches(inputs, batch_size)
            self._device: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None or next(iter(batch.values())).shape[0] != batch_size:
                return None
            self._device = {n: torch.from_numpy(batch[n]).cuda().contiguous() for n in names}
            return [int(self._device[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return _Calibrator()


def _progress_monitor(trt: Any, step: Callable[[str], None]) -> Any | None:
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            step(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step_index: int) -> bool:
            return True  # keep building

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Monitor()


def _check_build_settings(
    precision: str,
    min_batch_size: int,
    opt_batch_size: int | None,
    max_batch_size: int,
    calibration_inputs: Mapping[str, np.ndarray] | None,
    calibration_cache: str | Path | None,
) -> int:
    """The optimal batch size of the profile. Raises: ComponentError for a bad precision or batch
    range, or INT8 without calibration data."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ComponentError(f"unknown precision {precision!r} for TensorRT; choose fp32, fp16 or int8")
    opt = opt_batch_size or max(min_batch_size, max_batch_size // 2)
    if not 1 <= min_batch_size <= opt <= max_batch_size:
        raise ComponentError(
            f"batch range min={min_batch_size} opt={opt} max={max_batch_size}: need 1 <= min <= opt <= max"
        )
    if precision == "int8" and not calibration_inputs and not (calibration_cache and Path(calibration_cache).is_file()):
        raise ComponentError(
            "TensorRT INT8 needs calibration data (--calibration-data FILE.npz) or a calibration cache"
        )
    return opt


def _batch_profile(network: Any, batches: tuple[int, int, int]) -> dict[str, list[list[int]]]:
    """Each input's (min, opt, max) shape: the batch axis over ``batches``, the other dims fixed.

    Raises: OptimizeError when an input has a dynamic non-batch dim.
    """
    shapes: dict[str, list[list[int]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = list(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise OptimizeError(
                f"input {tensor.name!r} has dynamic non-batch dims {list(tensor.shape)}; only the batch axis may be "
                "dynamic (re-export with fixed feature dims)"
            )
        shapes[tensor.name] = [[b, *rest] for b in batches]
    return shapes


def _write_atomically(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


def build_tensorrt_engine(
    onnx_path: str | Path,
    output_path: str | Path,
    *,
    precision: str = "fp16",
    min_batch_size: int = 1,
    opt_batch_size: int | None = None,
    max_batch_size: int = 64,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    calibration_inputs: Mapping[str, np.ndarray] | None = None,
    calibration_cache: str | Path | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build and serialize a TensorRT engine (``model.plan``) from an ONNX file.

    Raises: ComponentError (bad precision or batch range, INT8 without calibration data),
    OptimizeError (the ONNX parser or the builder failed; parser errors are listed).
    """
    import tensorrt as trt

    say = step or (lambda _msg: None)
    opt = _check_build_settings(precision, min_batch_size, opt_batch_size, max_batch_size, calibration_inputs,
                                calibration_cache)  # fmt: skip
    started = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OptimizeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    shapes = _batch_profile(network, (min_batch_size, opt, max_batch_size))
    for name, (low, mid, high) in shapes.items():
        profile.set_shape(name, low, mid, high)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _entropy_calibrator(
            trt, calibration_inputs or {}, min(32, max_batch_size),
            Path(calibration_cache) if calibration_cache else None,
        )  # fmt: skip
        config.set_calibration_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    monitor = _progress_monitor(trt, say)
    if monitor is not None:
        config.progress_monitor = monitor
    say(f"building the {precision.upper()} engine (batch {min_batch_size}/{opt}/{max_batch_size})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OptimizeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    out = Path(output_path)
    _write_atomically(out, bytes(serialized))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu = gpu_description()
    # model.plan.json: the serving runtime checks TensorRT version and compute capability before loading.
    from shipyard.serving_runtime.backends.tensorrt_engine import parse_engine_record, write_engine_record

    write_engine_record(out, parse_engine_record({"tensorrt_version": str(trt.__version__), "gpu": gpu}, str(out)))
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "profile": shapes,
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path) if cache_path else None,
        "build_seconds": round(time.monotonic() - started, 2),
    }

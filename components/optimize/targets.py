"""Which optimization target runs here, and why.

Public: ``Probe`` (what this machine has), ``probe_machine() -> Probe``,
``select_target(requested: str, probe: Probe | None = None) -> TargetChoice`` (target, reason).
``auto`` picks TensorRT only when the ``tensorrt`` package and a CUDA GPU are both present;
``tensorrt`` without them raises TargetUnavailable (never a silent fallback).
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.components.errors import ComponentError, TargetUnavailable

TARGETS = ("auto", "tensorrt", "onnxruntime")


@dataclass(frozen=True)
class Probe:
    """TensorRT version and GPU name when present; otherwise why not."""

    tensorrt_version: str | None
    tensorrt_reason: str
    gpu_name: str | None
    gpu_reason: str


@dataclass(frozen=True)
class TargetChoice:
    target: str  # "tensorrt" | "onnxruntime"
    reason: str


def _gpu() -> tuple[str | None, str]:
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed, so no GPU can be found"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return None, f"no NVIDIA driver/GPU (NVML: {exc})"
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count < 1:
            return None, "NVML lists no GPU"
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        name = name.decode() if isinstance(name, bytes) else str(name)
        return name, f"GPU 0 is {name}"
    finally:
        pynvml.nvmlShutdown()


def probe_machine() -> Probe:
    """Look for the ``tensorrt`` package and a CUDA GPU (through NVML)."""
    try:
        import tensorrt

        trt_version: str | None = str(tensorrt.__version__)
        trt_reason = f"TensorRT {trt_version} is installed"
    except ImportError:
        trt_version, trt_reason = None, "the tensorrt package is not installed (pip install 'shipyard[gpu]')"
    gpu, gpu_reason = _gpu()
    return Probe(trt_version, trt_reason, gpu, gpu_reason)


def select_target(requested: str, probe: Probe | None = None) -> TargetChoice:
    """Resolve ``auto`` and check that the requested target can run here.

    Raises: ComponentError (unknown target), TargetUnavailable (``tensorrt`` without TensorRT or a GPU).
    """
    if requested not in TARGETS:
        raise ComponentError(f"unknown target {requested!r}; choose one of: {', '.join(TARGETS)}")
    if requested == "onnxruntime":
        return TargetChoice("onnxruntime", "requested: ONNX Runtime")
    probe = probe or probe_machine()
    ready = probe.tensorrt_version is not None and probe.gpu_name is not None
    if requested == "tensorrt":
        if not ready:
            missing = [
                r
                for ok, r in ((probe.tensorrt_version, probe.tensorrt_reason), (probe.gpu_name, probe.gpu_reason))
                if not ok
            ]
            raise TargetUnavailable(
                "--target tensorrt cannot run here: " + "; ".join(missing)
                + ". Run on a machine with an NVIDIA GPU and TensorRT, or use --target onnxruntime (or auto)."
            )  # fmt: skip
        return TargetChoice("tensorrt", f"requested: {probe.tensorrt_reason}; {probe.gpu_reason}")
    if ready:
        return TargetChoice("tensorrt", f"auto: {probe.tensorrt_reason} and {probe.gpu_reason}")
    why = probe.tensorrt_reason if probe.tensorrt_version is None else probe.gpu_reason
    return TargetChoice("onnxruntime", f"auto: ONNX Runtime on CPU because {why}")

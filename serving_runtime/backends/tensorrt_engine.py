"""TensorRT engines: the engine record (how an engine was built) and the check that it loads
here, the choice of optimization profile for a batch, the CUDA graph policy (all pure: no
TensorRT, CUDA or GPU needed), and the inspection of an engine file (deserialize it, read its
signature and profiles; TensorRT and a GPU needed, imported only when called).

``tensorrt.py`` (the backend and its instances) calls these; ``components/optimize`` writes the
record after a build (``write_engine_record``). See ``tensorrt.py`` for how they fit together.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import ModelSignature, TensorSpec
from shipyard.serving_runtime.backends.cuda import compute_capability, device_name
from shipyard.serving_runtime.datatypes import numpy_to_triton
from shipyard.serving_runtime.devices import gpu_count
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

log = logging.getLogger("shipyard.serving_runtime.backends.tensorrt")

NEEDS = "needs a GPU and TensorRT"

ENGINE_RECORD_SUFFIX = ".json"  # model.plan -> model.plan.json
MAX_AUTO_GRAPHS = 64  # with graphs on and no graph_spec: at most this many shapes are captured

Shape = tuple[int, ...]
ProfileShapes = Mapping[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


# --------------------------------------------------------------------------------------------
# Engine record and compatibility (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRecord:
    """How an engine was built: what it needs at load time."""

    tensorrt_version: str
    compute_capability: tuple[int, int] | None = None
    gpu: str = ""
    # TensorRT's HardwareCompatibilityLevel name: "NONE" (default), "AMPERE_PLUS", ...
    hardware_compatibility_level: str = "NONE"
    # Built with BuilderFlag.VERSION_COMPATIBLE: loads with a later TensorRT of the same major.
    version_compatible: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": (
                f"{self.compute_capability[0]}.{self.compute_capability[1]}" if self.compute_capability else None
            ),
            "gpu": self.gpu,
            "hardware_compatibility_level": self.hardware_compatibility_level,
            "version_compatible": self.version_compatible,
        }


_CC_IN_TEXT = re.compile(r"compute capability (\d+)\.(\d+)")


def _parse_cc(value: object) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)\.(\d+)", text) or _CC_IN_TEXT.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def engine_record_path(model_path: Path) -> Path:
    """Where the engine record of ``model_path`` lives: ``model.plan`` -> ``model.plan.json``."""
    return model_path.with_name(model_path.name + ENGINE_RECORD_SUFFIX)


def parse_engine_record(data: Mapping[str, Any], source: str) -> EngineRecord:
    """An ``EngineRecord`` from the record's JSON object. ``compute_capability`` may be ``"8.9"``,
    ``[8, 9]``, or absent (then read from ``gpu``'s ``"(compute capability 8.9)"``).

    Raises: ModelLoadError naming ``source`` when ``tensorrt_version`` is missing.
    """
    version = str(data.get("tensorrt_version") or "").strip()
    if not version:
        raise ModelLoadError(
            f"{source}: engine record has no 'tensorrt_version'; rebuild the engine or delete {source}"
        )
    gpu = str(data.get("gpu") or "")
    cc = _parse_cc(data.get("compute_capability")) or _parse_cc(gpu)
    return EngineRecord(
        tensorrt_version=version,
        compute_capability=cc,
        gpu=gpu,
        hardware_compatibility_level=str(data.get("hardware_compatibility_level") or "NONE").upper(),
        version_compatible=bool(data.get("version_compatible", False)),
    )


def read_engine_record(model_path: Path) -> EngineRecord | None:
    """The record next to the engine (``model.plan.json``), or None when there is none.

    Raises: ModelLoadError when the record exists but is not valid JSON or lacks the version.
    """
    path = engine_record_path(model_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable engine record ({exc}); rebuild the engine or delete {path}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: engine record must be a JSON object")
    return parse_engine_record(data, str(path))


def write_engine_record(model_path: Path, record: EngineRecord) -> Path:
    """Write ``record`` next to ``model_path`` (what ``components/optimize`` calls after a build)."""
    path = engine_record_path(model_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record.as_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group(0)) if digits else 0)
    return tuple(parts)


def check_engine_compatible(
    record: EngineRecord, tensorrt_version: str, device_cc: tuple[int, int], device: str, model_path: Path
) -> None:
    """Whether an engine built as ``record`` loads with TensorRT ``tensorrt_version`` on a GPU of
    compute capability ``device_cc`` (``device`` names it in messages).

    Rules: the TensorRT versions must match in major.minor.patch (a ``version_compatible`` engine
    loads with the same or a later release of the same major); the compute capability must match
    (an ``AMPERE_PLUS`` engine loads on any GPU of capability 8.0 or newer).

    Raises: ModelLoadError naming both versions or both compute capabilities and the fix.
    """
    built, here = _version_tuple(record.tensorrt_version), _version_tuple(tensorrt_version)
    if record.version_compatible:
        version_ok = built[:1] == here[:1] and here >= built
    else:
        version_ok = built == here
    if not version_ok:
        rule = "the same or a later TensorRT of the same major version" if record.version_compatible else "exactly"
        raise ModelLoadError(
            f"{model_path}: TensorRT version mismatch: the engine was built with TensorRT {record.tensorrt_version} "
            f"and needs {rule} that version, but TensorRT {tensorrt_version} is installed. Rebuild the engine "
            f"with TensorRT {tensorrt_version} (components/optimize) or install TensorRT {record.tensorrt_version}"
        )
    cc = record.compute_capability
    if cc is None:
        return
    level = record.hardware_compatibility_level
    if level == "AMPERE_PLUS":
        cc_ok = device_cc >= (8, 0)
        need = "compute capability 8.0 or newer (AMPERE_PLUS)"
    else:
        cc_ok = device_cc == cc
        need = f"compute capability {cc[0]}.{cc[1]}"
    if not cc_ok:
        built_on = f" ({record.gpu})" if record.gpu else ""
        raise ModelLoadError(
            f"{model_path}: GPU mismatch: the engine was built for compute capability {cc[0]}.{cc[1]}{built_on} and "
            f"needs {need}, but this instance's GPU {device} has compute capability {device_cc[0]}.{device_cc[1]}. "
            "Rebuild the engine on this GPU type (components/optimize) or place the model on a matching GPU"
        )


# --------------------------------------------------------------------------------------------
# Optimization profiles and CUDA graph policy (pure)
# --------------------------------------------------------------------------------------------


def _covers(ranges: tuple[Shape, Shape, Shape], shape: Shape) -> bool:
    low, _opt, high = ranges
    return len(shape) == len(low) and all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True))


def select_profile(profiles: Sequence[ProfileShapes], shapes: Mapping[str, Shape], current: int = 0) -> int:
    """Index of the optimization profile whose ranges cover every input shape.

    Among covering profiles the one already active (``current``) wins, then the tightest (the
    smallest product of its max shapes, so kernels tuned for small batches run small batches),
    then the lowest index. Inputs a profile does not list (static shapes) are not checked.

    Raises: ValueError naming the shapes and every profile's ranges when none covers them.
    """
    covering: list[int] = []
    for index, profile in enumerate(profiles):
        if all(_covers(profile[name], tuple(shape)) for name, shape in shapes.items() if name in profile):
            covering.append(index)
    if not covering:
        described = "; ".join(
            f"profile {i}: " + ", ".join(f"{name} {list(r[0])}..{list(r[2])}" for name, r in profile.items())
            for i, profile in enumerate(profiles)
        )
        got = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise ValueError(
            f"input shapes ({got}) are outside every optimization profile of the engine ({described}); "
            "send smaller batches (lower max_batch_size) or rebuild the engine with a larger profile"
        )
    if current in covering:
        return current

    def tightness(index: int) -> tuple[int, int]:
        volume = 0
        for ranges in profiles[index].values():
            volume += int(np.prod(ranges[2])) if ranges[2] else 1
        return volume, index

    return min(covering, key=tightness)


@dataclass(frozen=True)
class GraphPolicy:
    """When to run an execution through a CUDA graph."""

    enabled: bool = False
    batch_sizes: frozenset[int] | None = None  # None: any batch size (up to MAX_AUTO_GRAPHS shapes)

    def wants(self, batch_size: int, captured: int) -> bool:
        """True when a graph should be used (or captured) for ``batch_size``; ``captured`` is
        how many graphs exist already."""
        if not self.enabled:
            return False
        if self.batch_sizes is not None:
            return batch_size in self.batch_sizes
        return captured < MAX_AUTO_GRAPHS


def graph_policy(optimization: Any, source: str = "config.pbtxt") -> GraphPolicy:
    """The CUDA graph policy from ``config.optimization`` (a ModelOptimizationPolicy or None).

    Raises: ModelConfigError for a ``graph_spec`` batch size below 1 or graph_spec without graphs.
    """
    if optimization is None or not optimization.HasField("cuda"):
        return GraphPolicy()
    cuda = optimization.cuda
    sizes = [int(spec.batch_size) for spec in cuda.graph_spec]
    if sizes and not cuda.graphs:
        raise ModelConfigError(f"{source}: optimization.cuda.graph_spec is set but graphs is false; set graphs: true")
    if any(size < 1 for size in sizes):
        raise ModelConfigError(f"{source}: optimization.cuda.graph_spec batch_size must be >= 1, got {sizes}")
    return GraphPolicy(bool(cuda.graphs), frozenset(sizes) if sizes else None)


# --------------------------------------------------------------------------------------------
# Engine inspection: deserialize, signature, profiles (needs TensorRT and a GPU)
# --------------------------------------------------------------------------------------------


def import_tensorrt(model_path: Path) -> Any:
    """The tensorrt module. Raises: ModelLoadError "needs a GPU and TensorRT" without it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_path}: a TensorRT engine {NEEDS}; the tensorrt package is not installed ({exc}). "
            "Install shipyard[gpu] on a GPU machine, or serve the ONNX model instead"
        ) from None
    return tensorrt


def require_gpu(model_path: Path, index: int = 0) -> None:
    """Raises: ModelLoadError when GPU ``index`` is not visible."""
    count = gpu_count()
    if count == 0:
        raise ModelLoadError(f"{model_path}: a TensorRT engine {NEEDS}; no CUDA GPU is visible to this process")
    if index >= count:
        raise ModelLoadError(f"{model_path}: instance asks for GPU {index} but only {count} GPU(s) are visible")


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps error messages (for the load error) and forwards to logging."""

    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def check_before_deserialize(trt: Any, cudart: Any, model_path: Path, device: int) -> None:
    """Compare the engine record (when there is one) with TensorRT and GPU ``device``.

    Raises: ModelLoadError naming both sides on a mismatch.
    """
    record = read_engine_record(model_path)
    if record is None:
        return
    try:
        cc = compute_capability(cudart, device)
    except RuntimeError as exc:
        raise ModelLoadError(f"{model_path}: cannot query GPU {device}: {exc}") from None
    check_engine_compatible(record, str(trt.__version__), cc, f"{device} ({device_name(cudart, device)})", model_path)


def deserialize(trt: Any, model_path: Path) -> tuple[Any, Any, Any]:
    """(logger, runtime, engine). Raises: ModelLoadError naming the TensorRT version and its log."""
    logger = _make_logger(trt)
    runtime = trt.Runtime(logger)
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{model_path}: cannot read engine: {exc.strerror or exc}") from None
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        said = f" TensorRT said: {' | '.join(logger.errors[-3:])}." if logger.errors else ""
        raise ModelLoadError(
            f"{model_path}: TensorRT {trt.__version__} cannot deserialize this engine.{said} Engines only load with "
            "the TensorRT version and GPU family they were built with. Rebuild the engine on this machine "
            "(components/optimize) or serve the ONNX model"
        )
    return logger, runtime, engine


def engine_signature(trt: Any, engine: Any, model_path: Path) -> ModelSignature:
    """Inputs and outputs as the engine declares them; batched when every dim 0 is -1."""
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        try:
            datatype = numpy_to_triton(np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: tensor {name!r} has an unsupported type: {exc}") from None
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        spec = TensorSpec(name, datatype, dims)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(spec)
        else:
            outputs.append(spec)
    batched = all(len(t.dims) >= 1 and t.dims[0] == -1 for t in (*inputs, *outputs))
    return ModelSignature(tuple(inputs), tuple(outputs), batched=batched)


def engine_profiles(engine: Any, inputs: Sequence[str]) -> list[dict[str, tuple[Shape, Shape, Shape]]]:
    """Each optimization profile's (min, opt, max) shape per dynamic input."""
    profiles = []
    for index in range(int(engine.num_optimization_profiles)):
        table: dict[str, tuple[Shape, Shape, Shape]] = {}
        for name in inputs:
            if -1 not in tuple(engine.get_tensor_shape(name)):
                continue  # static input: nothing to choose
            low, opt, high = engine.get_tensor_profile_shape(name, index)
            table[name] = (tuple(int(d) for d in low), tuple(int(d) for d in opt), tuple(int(d) for d in high))
        profiles.append(table)
    return profiles or [{}]

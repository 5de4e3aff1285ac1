"""TensorRT backend (``tensorrt_plan``): serialized engines (``model.plan``) on a CUDA GPU.

``tensorrt`` and ``cuda-python`` (the ``gpu`` extra) are imported only when an engine is
inspected or loaded. Without them, or without a GPU, loading fails with a ModelLoadError that
says the model needs a GPU and TensorRT.

**Compatibility first.** An engine only deserializes with the TensorRT version it was built with
and on the GPU family (compute capability) it was built for. ``components/optimize`` writes an
*engine record* next to the engine, ``model.plan.json`` (``tensorrt_version``,
``compute_capability``, ``gpu``, optional ``hardware_compatibility_level`` /
``version_compatible``); publish copies it into the version directory. Before deserializing, the
backend compares the record with the installed TensorRT and the instance's GPU and fails with
an error naming both sides (``check_engine_compatible``, a pure function). Without a record, a
failed deserialization reports TensorRT's own log lines and the installed version.

**Per instance** (one per ``instance_group`` slot): its own deserialized engine (so concurrent
instances never share an optimization profile, which TensorRT forbids for dynamic shapes), one
execution context, one CUDA stream, device buffers and pinned host buffers allocated once and
grown (``cuda.grown_capacity``). ``execute`` picks the optimization profile that covers the
batch (``select_profile``, pure), copies inputs through pinned memory, enqueues the engine with
``execute_async_v3`` and waits only on its own stream, so instances in different scheduler
threads overlap on the GPU (the CUDA calls release the GIL).

**CUDA graphs** (``optimization { cuda { graphs: true } }``): each distinct input shape (batch
size) is captured once into a CUDA graph and replayed after that; ``graph_spec { batch_size: N }``
entries restrict capture to those batch sizes. Buffers are then allocated at the profile's
largest shape up front, because a graph bakes in device addresses.
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

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature, TensorSpec
from shipyard.serving_runtime.backends.cuda import (
    DeviceBuffer,
    PinnedBuffer,
    Stream,
    check,
    compute_capability,
    device_name,
    import_cudart,
)
from shipyard.serving_runtime.datatypes import numpy_to_triton
from shipyard.serving_runtime.devices import gpu_count
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

log = logging.getLogger(__name__)

_NEEDS = "needs a GPU and TensorRT"
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
# TensorRT plumbing (GPU only)
# --------------------------------------------------------------------------------------------


def _import_tensorrt(model_path: Path) -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_path}: a TensorRT engine {_NEEDS}; the tensorrt package is not installed ({exc}). "
            "Install shipyard[gpu] on a GPU machine, or serve the ONNX model instead"
        ) from None
    return tensorrt


def _require_gpu(model_path: Path, index: int = 0) -> None:
    count = gpu_count()
    if count == 0:
        raise ModelLoadError(f"{model_path}: a TensorRT engine {_NEEDS}; no CUDA GPU is visible to this process")
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


def _check_before_deserialize(trt: Any, cudart: Any, model_path: Path, device: int) -> None:
    record = read_engine_record(model_path)
    if record is None:
        return
    try:
        cc = compute_capability(cudart, device)
    except RuntimeError as exc:
        raise ModelLoadError(f"{model_path}: cannot query GPU {device}: {exc}") from None
    check_engine_compatible(record, str(trt.__version__), cc, f"{device} ({device_name(cudart, device)})", model_path)


def _deserialize(trt: Any, model_path: Path) -> tuple[Any, Any, Any]:
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


def _signature(trt: Any, engine: Any, model_path: Path) -> ModelSignature:
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


def _profiles(engine: Any, inputs: Sequence[str]) -> list[dict[str, tuple[Shape, Shape, Shape]]]:
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


class TensorRTInstance:
    """One engine, execution context and stream on one GPU, with buffers reused across batches."""

    def __init__(
        self,
        trt: Any,
        cudart: Any,
        loaded: tuple[Any, Any, Any],
        device_index: int,
        model_path: Path,
        graphs: GraphPolicy,
    ) -> None:
        self._trt = trt
        self._cudart = cudart
        self._logger, self._runtime, self._engine = loaded  # keep logger and runtime alive with the engine
        self._device = device_index
        self._path = model_path
        self._graphs_policy = graphs
        self._graphs: dict[tuple[int, tuple[Shape, ...]], Any] = {}  # (profile, input shapes) -> graph exec
        check(cudart.cudaSetDevice(device_index), "cudaSetDevice")
        engine = self._engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(f"{model_path}: cannot create a TensorRT execution context (out of GPU memory?)")
        self._stream = Stream(cudart)
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
            else:
                self._outputs.append(name)
        self.profiles = _profiles(engine, self._inputs)
        self._profile = 0
        ceilings = self._max_bytes()
        self._device_buffers = {name: DeviceBuffer(cudart, ceilings.get(name)) for name in self._dtypes}
        self._host_buffers = {name: PinnedBuffer(cudart, ceilings.get(name)) for name in self._dtypes}
        if graphs.enabled:
            # A graph bakes in addresses: allocate at the largest shape once, so nothing moves later.
            for name, nbytes in ceilings.items():
                self._device_buffers[name].ensure(nbytes)
                self._host_buffers[name].ensure(nbytes)

    @property
    def device_index(self) -> int:
        return self._device

    @property
    def active_profile(self) -> int:
        """The optimization profile the last batch ran with."""
        return self._profile

    @property
    def graph_count(self) -> int:
        """How many CUDA graphs this instance has captured."""
        return len(self._graphs)

    def _max_bytes(self) -> dict[str, int]:
        """Bytes of every tensor at the largest shape any profile allows (outputs by shape inference)."""
        stream = self._stream.handle
        ceilings: dict[str, int] = {}
        for index, profile in enumerate(self.profiles):
            if len(self.profiles) > 1:
                self._context.set_optimization_profile_async(index, int(stream))
            for name in self._inputs:
                shape = profile[name][2] if name in profile else tuple(self._engine.get_tensor_shape(name))
                if name in profile:
                    self._context.set_input_shape(name, shape)
                ceilings[name] = max(ceilings.get(name, 0), int(np.prod(shape)) * self._dtypes[name].itemsize)
            for name in self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    continue  # data-dependent: no ceiling
                ceilings[name] = max(ceilings.get(name, 0), int(np.prod(shape)) * self._dtypes[name].itemsize)
        if len(self.profiles) > 1:
            self._context.set_optimization_profile_async(0, int(stream))
        self._stream.synchronize()
        return ceilings

    def _drop_graphs(self) -> None:
        for graph_exec in self._graphs.values():
            self._cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs.clear()

    def _capture(self) -> Any:
        cudart = self._cudart
        stream = self._stream.handle
        # enqueue once outside the capture: flushes TensorRT's deferred shape-dependent work.
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = self._context.execute_async_v3(int(stream))
        graph = check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        if not ok:
            cudart.cudaGraphDestroy(graph)
            raise RuntimeError("TensorRT execute_async_v3 failed during CUDA graph capture")
        try:
            result = cudart.cudaGraphInstantiate(graph, 0)
        except TypeError:  # cuda-python 11 signature: (graph, error_node_buffer, size)
            result = cudart.cudaGraphInstantiate(graph, b"", 0)
        values = check(result, "cudaGraphInstantiate")
        graph_exec = values[0] if isinstance(values, tuple) else values
        cudart.cudaGraphDestroy(graph)
        return graph_exec

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        check(cudart.cudaSetDevice(self._device), "cudaSetDevice")
        stream = self._stream.handle
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        missing = [name for name in self._inputs if name not in inputs]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the engine takes {self._inputs}")
        shapes = {name: tuple(int(d) for d in inputs[name].shape) for name in self._inputs}
        profile = select_profile(self.profiles, shapes, self._profile)
        if profile != self._profile:
            if not self._context.set_optimization_profile_async(profile, int(stream)):
                raise RuntimeError(f"TensorRT could not switch to optimization profile {profile}")
            self._profile = profile
        moved = False
        for name in self._inputs:
            if not self._context.set_input_shape(name, shapes[name]):
                raise ValueError(
                    f"input {name!r} shape {list(shapes[name])} is outside the engine's optimization profile {profile}"
                )
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            moved |= self._device_buffers[name].ensure(nbytes)
            self._host_buffers[name].ensure(nbytes)
            staging = self._host_buffers[name].view(self._dtypes[name], shapes[name])
            np.copyto(staging, inputs[name], casting="unsafe")
            if nbytes:
                target = self._device_buffers[name].pointer
                check(cudart.cudaMemcpyAsync(target, staging.ctypes.data, nbytes, h2d, stream), "memcpy host->device")
        out_shapes: dict[str, Shape] = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ValueError(f"output {name!r} has a data-dependent shape {list(shape)}, which is not supported")
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            moved |= self._device_buffers[name].ensure(nbytes)
            self._host_buffers[name].ensure(nbytes)
            out_shapes[name] = shape
        if moved:
            self._drop_graphs()
        for name, buffer in self._device_buffers.items():
            self._context.set_tensor_address(name, buffer.pointer)
        batch = shapes[self._inputs[0]][0] if self._inputs and shapes[self._inputs[0]] else 1
        key = (profile, tuple(shapes[name] for name in self._inputs))
        graph_exec = self._graphs.get(key)
        if graph_exec is None and self._graphs_policy.wants(batch, len(self._graphs)):
            graph_exec = self._graphs[key] = self._capture()
        if graph_exec is not None:
            check(cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name, shape in out_shapes.items():
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            if nbytes:
                check(
                    cudart.cudaMemcpyAsync(
                        self._host_buffers[name].pointer, self._device_buffers[name].pointer, nbytes, d2h, stream
                    ),
                    "cudaMemcpyAsync device->host",
                )
        self._stream.synchronize()
        wanted = outputs or tuple(self._outputs)
        unknown = [name for name in wanted if name not in out_shapes]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; the engine produces {self._outputs}")
        # Copy out of the pinned buffers: they are reused by the next batch.
        return {name: self._host_buffers[name].view(self._dtypes[name], out_shapes[name]).copy() for name in wanted}

    def close(self) -> None:
        if self._engine is None:
            return
        try:
            self._cudart.cudaSetDevice(self._device)
            self._drop_graphs()
            for buffer in self._device_buffers.values():
                buffer.free()
            for pinned in self._host_buffers.values():
                pinned.free()
            self._stream.close()
        finally:
            self._context = None
            self._engine = None
            self._runtime = None


class TensorRTBackend:
    """Serialized TensorRT engines; GPU only."""

    name = "tensorrt"
    platform = "tensorrt_plan"
    default_filename = "model.plan"
    supports_cpu = False
    supports_gpu = True

    def gpu_usable(self) -> bool:
        """TensorRT runs only on GPUs; whether one is there is checked at load."""
        return True

    def inspect(self, model_path: Path) -> ModelSignature:
        """Inputs and outputs as the engine declares them (deserializes the engine on GPU 0).

        Raises: ModelLoadError "needs a GPU and TensorRT" without them; naming the file when it
        cannot be read, or naming both versions / compute capabilities when the engine was built
        for another TensorRT or GPU.
        """
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        trt = _import_tensorrt(model_path)
        _require_gpu(model_path)
        cudart = import_cudart(str(model_path))
        _check_before_deserialize(trt, cudart, model_path, 0)
        _logger, _runtime, engine = _deserialize(trt, model_path)
        return _signature(trt, engine, model_path)

    def load(self, model_path: Path, settings: InstanceSettings) -> TensorRTInstance:
        """Deserialize the engine on ``settings.device`` and create one execution context.

        Raises: ModelLoadError (no GPU or TensorRT, a CPU instance, a bad or incompatible engine),
        ModelConfigError (a bad ``optimization.cuda`` section).
        """
        if settings.device.kind != "gpu":
            raise ModelLoadError(
                f"{model_path}: a TensorRT engine {_NEEDS}; it cannot run on a CPU instance "
                "(use KIND_GPU or KIND_AUTO in instance_group)"
            )
        graphs = graph_policy(settings.optimization, str(model_path))
        trt = _import_tensorrt(model_path)
        index = settings.device.index
        _require_gpu(model_path, index)
        cudart = import_cudart(str(model_path))
        try:
            check(cudart.cudaSetDevice(index), "cudaSetDevice")
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None
        _check_before_deserialize(trt, cudart, model_path, index)
        loaded = _deserialize(trt, model_path)
        try:
            return TensorRTInstance(trt, cudart, loaded, index, model_path, graphs)
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None

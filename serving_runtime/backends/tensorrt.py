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
an error naming both sides (``check_engine_compatible``). The record, that check, the profile
choice and the graph policy are pure functions in ``tensorrt_engine.py``. Without a record, a
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

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature
from shipyard.serving_runtime.backends.cuda import (
    DeviceBuffer,
    PinnedBuffer,
    Stream,
    check,
    import_cudart,
)
from shipyard.serving_runtime.backends.tensorrt_engine import (
    NEEDS,
    GraphPolicy,
    Shape,
    check_before_deserialize,
    deserialize,
    engine_profiles,
    engine_signature,
    graph_policy,
    import_tensorrt,
    require_gpu,
    select_profile,
)
from shipyard.serving_runtime.errors import ModelLoadError

log = logging.getLogger(__name__)


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
        self.profiles = engine_profiles(engine, self._inputs)
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
        trt = import_tensorrt(model_path)
        require_gpu(model_path)
        cudart = import_cudart(str(model_path))
        check_before_deserialize(trt, cudart, model_path, 0)
        _logger, _runtime, engine = deserialize(trt, model_path)
        return engine_signature(trt, engine, model_path)

    def load(self, model_path: Path, settings: InstanceSettings) -> TensorRTInstance:
        """Deserialize the engine on ``settings.device`` and create one execution context.

        Raises: ModelLoadError (no GPU or TensorRT, a CPU instance, a bad or incompatible engine),
        ModelConfigError (a bad ``optimization.cuda`` section).
        """
        if settings.device.kind != "gpu":
            raise ModelLoadError(
                f"{model_path}: a TensorRT engine {NEEDS}; it cannot run on a CPU instance "
                "(use KIND_GPU or KIND_AUTO in instance_group)"
            )
        graphs = graph_policy(settings.optimization, str(model_path))
        trt = import_tensorrt(model_path)
        index = settings.device.index
        require_gpu(model_path, index)
        cudart = import_cudart(str(model_path))
        try:
            check(cudart.cudaSetDevice(index), "cudaSetDevice")
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None
        check_before_deserialize(trt, cudart, model_path, index)
        loaded = deserialize(trt, model_path)
        try:
            return TensorRTInstance(trt, cudart, loaded, index, model_path, graphs)
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None

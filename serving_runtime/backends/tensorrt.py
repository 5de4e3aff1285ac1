"""TensorRT backend (``tensorrt_plan``): serialized engines (``model.plan``) on a CUDA GPU.

``tensorrt`` and ``cuda-python`` (the ``gpu`` extra) are imported only when an engine is
inspected or loaded. Without them, or without a GPU, loading fails with a ModelLoadError that
says the model needs a GPU and TensorRT.

Each instance owns one execution context, one CUDA stream and device buffers that grow to the
largest batch seen. Engines use TensorRT 10's name-based tensor API (``execute_async_v3``).
An engine only deserializes with the TensorRT version (and GPU family, unless built
hardware-compatible) it was built with; the error says so and names both versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature, TensorSpec
from shipyard.serving_runtime.datatypes import numpy_to_triton
from shipyard.serving_runtime.devices import gpu_count
from shipyard.serving_runtime.errors import ModelLoadError

_NEEDS = "needs a GPU and TensorRT"


def _import_tensorrt(model_path: Path) -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(
            f"{model_path}: a TensorRT engine {_NEEDS}; the tensorrt package is not installed ({exc}). "
            "Install shipyard[gpu] on a GPU machine, or serve the ONNX model instead"
        ) from None
    return tensorrt


def _import_cudart(model_path: Path) -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise ModelLoadError(
                f"{model_path}: a TensorRT engine {_NEEDS}; cuda-python is not installed ({exc}). Install shipyard[gpu]"
            ) from None
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...); raise on error, return the value(s)."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _require_gpu(model_path: Path, index: int = 0) -> None:
    count = gpu_count()
    if count == 0:
        raise ModelLoadError(f"{model_path}: a TensorRT engine {_NEEDS}; no CUDA GPU is visible to this process")
    if index >= count:
        raise ModelLoadError(f"{model_path}: instance asks for GPU {index} but only {count} GPU(s) are visible")


def _deserialize(trt: Any, model_path: Path) -> tuple[Any, Any]:
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{model_path}: cannot read engine: {exc.strerror or exc}") from None
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelLoadError(
            f"{model_path}: TensorRT {trt.__version__} cannot deserialize this engine; engines only load with "
            "the TensorRT version and GPU family they were built with. Rebuild the engine on this machine "
            "(components/optimize) or serve the ONNX model"
        )
    return runtime, engine


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


class TensorRTInstance:
    """One execution context and stream on one GPU, with device buffers reused across batches."""

    def __init__(self, trt: Any, cudart: Any, runtime: Any, engine: Any, device_index: int, model_path: Path):
        self._trt = trt
        self._cudart = cudart
        self._runtime = runtime  # keep the runtime alive as long as the engine
        self._engine = engine
        self._device = device_index
        self._path = model_path
        _check(cudart.cudaSetDevice(device_index), "cudaSetDevice")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(f"{model_path}: cannot create a TensorRT execution context (out of GPU memory?)")
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)
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

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes <= capacity and pointer:
            return pointer
        if pointer:
            _check(self._cudart.cudaFree(pointer), "cudaFree")
        size = max(nbytes, 256)
        pointer = int(_check(self._cudart.cudaMalloc(size), "cudaMalloc"))
        self._buffers[name] = (pointer, size)
        return pointer

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        _check(cudart.cudaSetDevice(self._device), "cudaSetDevice")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged: list[np.ndarray] = []  # keep host arrays alive until the stream syncs
        for name in self._inputs:
            if name not in inputs:
                raise ValueError(f"missing input {name!r}; the engine takes {self._inputs}")
            array = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            staged.append(array)
            if not self._context.set_input_shape(name, tuple(array.shape)):
                raise ValueError(
                    f"input {name!r} shape {list(array.shape)} is outside the engine's optimization profile"
                )
            pointer = self._buffer(name, array.nbytes)
            self._context.set_tensor_address(name, pointer)
            if array.nbytes:
                _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self._stream), "memcpy")
        results: dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ValueError(f"output {name!r} has a data-dependent shape {shape}, which is not supported")
            host = np.empty(shape, dtype=self._dtypes[name])
            pointer = self._buffer(name, host.nbytes)
            self._context.set_tensor_address(name, pointer)
            results[name] = host
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name, host in results.items():
            if host.nbytes:
                pointer = self._buffers[name][0]
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, d2h, self._stream), "memcpy")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        wanted = outputs or tuple(self._outputs)
        return {name: results[name] for name in wanted}

    def close(self) -> None:
        cudart = self._cudart
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
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
        cannot be read or was built for another TensorRT version.
        """
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        trt = _import_tensorrt(model_path)
        _require_gpu(model_path)
        _runtime, engine = _deserialize(trt, model_path)
        return _signature(trt, engine, model_path)

    def load(self, model_path: Path, settings: InstanceSettings) -> TensorRTInstance:
        """Deserialize the engine on ``settings.device`` and create one execution context.

        Raises: ModelLoadError (no GPU or TensorRT, a CPU instance, a bad or incompatible engine).
        """
        if settings.device.kind != "gpu":
            raise ModelLoadError(
                f"{model_path}: a TensorRT engine {_NEEDS}; it cannot run on a CPU instance "
                "(use KIND_GPU or KIND_AUTO in instance_group)"
            )
        trt = _import_tensorrt(model_path)
        _require_gpu(model_path, settings.device.index)
        cudart = _import_cudart(model_path)
        try:
            _check(cudart.cudaSetDevice(settings.device.index), "cudaSetDevice")
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None
        runtime, engine = _deserialize(trt, model_path)
        try:
            return TensorRTInstance(trt, cudart, runtime, engine, settings.device.index, model_path)
        except RuntimeError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from None

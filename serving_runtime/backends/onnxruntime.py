"""ONNX Runtime backend (``onnxruntime_onnx``): CPU, plus the CUDA and TensorRT execution providers.

Model ``parameters`` use the keys of Triton's onnxruntime backend:

- ``intra_op_thread_count``, ``inter_op_thread_count``: thread pools (ONNX Runtime's own default,
  one thread per physical core, when not set; ``0`` also means the default).
- ``execution_mode``: ``0`` sequential (default), ``1`` parallel.
- ``enable_mem_pattern``, ``enable_mem_arena``: ``0``/``1`` (both on by default).
- GPU instances also read Triton's (deprecated but common) CUDA keys ``cudnn_conv_algo_search``
  (0 exhaustive, 1 heuristic, 2 default), ``gpu_mem_limit``, ``arena_extend_strategy`` (0/1),
  ``do_copy_in_default_stream``.

``optimization.graph.level``: ``-1`` basic, ``0`` (default) all, ``1`` extended, as Triton.

Execution providers come from ``optimization.execution_accelerators`` in Triton's form
(``execution_providers`` in ``onnxruntime_providers.py``, a pure function):

- GPU instances: ``gpu_execution_accelerator [{ name: "tensorrt" parameters {...} }]`` puts the
  TensorRT EP first (Triton's keys: ``precision_mode`` FP32/FP16/INT8,
  ``max_workspace_size_bytes``, and the ``trt_*`` keys passed through);
  ``{ name: "cuda" parameters {...} }`` passes CUDA EP options (``cudnn_conv_use_max_workspace``,
  ``use_ep_level_unified_stream``...). The CUDA EP (``device_id`` = the instance's GPU) always
  follows, then the CPU EP for nodes neither can run.
- CPU instances: ``cpu_execution_accelerator [{ name: "openvino" }]`` puts the OpenVINO EP first;
  a clear error when this onnxruntime has no OpenVINO EP.

On a GPU instance whose session really uses the CUDA EP, ``execute`` binds inputs from host
memory and outputs on the device (``IOBinding``), then copies the outputs to the host once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.base import InstanceSettings, ModelSignature, TensorSpec
from shipyard.serving_runtime.backends.onnxruntime_providers import execution_providers
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError

_ORT_TO_TRITON = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is in the serve extra
        raise ModelLoadError(f"onnxruntime is not installed ({exc}); install shipyard[serve]") from None
    return onnxruntime


def _dim(value: object) -> int:
    """ORT reports dynamic dims as a name (str) or None; fixed ones as ints."""
    return value if isinstance(value, int) and value >= 0 else -1


def _spec(node: Any, model_path: Path) -> TensorSpec:
    datatype = _ORT_TO_TRITON.get(node.type)
    if datatype is None:
        raise ModelLoadError(
            f"{model_path}: tensor {node.name!r} has type {node.type}, which the runtime cannot serve "
            f"(supported: plain tensors of {', '.join(sorted(set(_ORT_TO_TRITON.values())))})"
        )
    return TensorSpec(node.name, datatype, tuple(_dim(d) for d in node.shape))


def _int_parameter(parameters: Mapping[str, str], key: str, default: int, model_path: Path) -> int:
    raw = parameters.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ModelConfigError(
            f"{model_path}: parameter {key!r} must be an integer, got {raw!r}; fix it in config.pbtxt parameters"
        ) from None


class OnnxRuntimeInstance:
    """One ``InferenceSession``; executes one batch at a time.

    ``bind_device`` (``("cuda", gpu)`` on GPU instances whose session uses the CUDA EP) turns on
    I/O binding: inputs are bound from host numpy arrays, outputs are allocated on that device
    and copied to the host once, after the run.
    """

    def __init__(self, session: Any, string_inputs: frozenset[str], bind_device: tuple[str, int] | None = None):
        self._session = session
        self._string_inputs = string_inputs
        self._output_names = tuple(o.name for o in session.get_outputs())
        # numeric tensors only: ORT returns them as numpy arrays the runtime can use as they are
        types = [o.type for o in session.get_outputs()]
        self._numeric_outputs = all(t.startswith("tensor(") and t != "tensor(string)" for t in types)
        self._bind_device = bind_device if not string_inputs else None
        self._binding: Any = session.io_binding() if self._bind_device is not None else None
        # A CPU-only session may also run tiny batches on the event loop (base.BackendInstance).
        self.inline_safe = self._binding is None and list(session.get_providers()) == ["CPUExecutionProvider"]

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession`` (for inspection: options, providers)."""
        return self._session

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, most preferred first."""
        return list(self._session.get_providers())

    @property
    def uses_io_binding(self) -> bool:
        """True when batches run through I/O binding (GPU instances on the CUDA EP)."""
        return self._binding is not None

    def _run_bound(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        binding = self._binding
        device, device_id = self._bind_device or ("cpu", 0)
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, device, device_id)
        self._session.run_with_iobinding(binding)
        results: list[np.ndarray] = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()  # drop references to this batch's arrays
        return results

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else list(self._output_names)
        if self._binding is not None:
            results = self._run_bound(inputs, names)
            return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}
        if not self._string_inputs and self._numeric_outputs:  # the common case: numbers only
            return dict(zip(names, self._session.run(names, dict(inputs)), strict=True))
        feed: dict[str, np.ndarray] = {}
        for name, array in inputs.items():
            if name in self._string_inputs and array.dtype == np.object_:
                # ORT string tensors take str; the protocol carries bytes.
                array = np.vectorize(
                    lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[np.object_]
                )(array)
            feed[name] = array
        results = self._session.run(names, feed)
        out: dict[str, np.ndarray] = {}
        for name, value in zip(names, results, strict=True):
            array = np.asarray(value)
            if array.dtype.kind in ("U", "O"):
                encoded = np.empty(array.shape, dtype=np.object_)
                encoded.reshape(-1)[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in array.reshape(-1)]
                array = encoded
            out[name] = array
        return out

    def close(self) -> None:
        self._binding = None
        self._session = None


class OnnxRuntimeBackend:
    """ONNX files (``model.onnx``) run by ONNX Runtime."""

    name = "onnxruntime"
    platform = "onnxruntime_onnx"
    default_filename = "model.onnx"
    supports_cpu = True
    supports_gpu = True

    def __init__(self) -> None:
        # inspect() results keyed by (path, mtime_ns, size): config completion and validation of
        # the same file share one session creation.
        self._signatures: OrderedDict[tuple[str, int, int], ModelSignature] = OrderedDict()
        self._lock = Lock()

    def gpu_usable(self) -> bool:
        """True when this onnxruntime build has the CUDA execution provider (KIND_AUTO picks GPU)."""
        return "CUDAExecutionProvider" in _import_ort().get_available_providers()

    def inspect(self, model_path: Path) -> ModelSignature:
        """Inputs and outputs as the ONNX file declares them.

        Raises: ModelLoadError naming the file when it is missing or not a valid ONNX model.
        """
        try:
            stat = model_path.stat()
        except OSError as exc:
            raise ModelLoadError(f"{model_path}: cannot read model file: {exc.strerror or exc}") from None
        key = (str(model_path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._signatures.get(key)
        if cached is not None:
            return cached
        ort = _import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: not a loadable ONNX model: {exc}") from None
        signature = self._signature(session, model_path)
        with self._lock:
            self._signatures[key] = signature
            while len(self._signatures) > 64:
                self._signatures.popitem(last=False)
        return signature

    @staticmethod
    def _signature(session: Any, model_path: Path) -> ModelSignature:
        inputs = tuple(_spec(node, model_path) for node in session.get_inputs())
        outputs = tuple(_spec(node, model_path) for node in session.get_outputs())
        batched = all(len(t.dims) >= 1 and t.dims[0] == -1 for t in (*inputs, *outputs))
        return ModelSignature(inputs, outputs, batched=batched)

    def _session_options(self, model_path: Path, settings: InstanceSettings) -> Any:
        ort = _import_ort()
        params = settings.parameters
        options = ort.SessionOptions()
        intra = _int_parameter(params, "intra_op_thread_count", 0, model_path)
        inter = _int_parameter(params, "inter_op_thread_count", 0, model_path)
        if intra > 0:
            options.intra_op_num_threads = intra
        if inter > 0:
            options.inter_op_num_threads = inter
        mode = _int_parameter(params, "execution_mode", 0, model_path)
        if mode not in (0, 1):
            raise ModelConfigError(
                f"{model_path}: parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got {mode}"
            )
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode == 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_mem_pattern = bool(_int_parameter(params, "enable_mem_pattern", 1, model_path))
        options.enable_cpu_mem_arena = bool(_int_parameter(params, "enable_mem_arena", 1, model_path))
        level = 0
        optimization = settings.optimization
        if optimization is not None and optimization.HasField("graph"):
            level = int(optimization.graph.level)
        levels = {
            -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }
        if level not in levels:
            raise ModelConfigError(f"{model_path}: optimization.graph.level must be -1, 0 or 1, got {level}")
        options.graph_optimization_level = levels[level]
        return options

    def load(self, model_path: Path, settings: InstanceSettings) -> OnnxRuntimeInstance:
        """Create one ``InferenceSession`` on ``settings.device``.

        Raises: ModelLoadError (bad file, no CUDA provider for a GPU instance), ModelConfigError
        (a bad parameter value).
        """
        ort = _import_ort()
        options = self._session_options(model_path, settings)
        providers = execution_providers(
            settings.optimization,
            settings.parameters,
            settings.device.kind,
            settings.device.index,
            ort.get_available_providers(),
            source=str(model_path),
        )
        try:
            session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{model_path}: ONNX Runtime cannot load the model: {exc}") from None
        in_use = session.get_providers()
        if settings.device.kind == "gpu" and "CUDAExecutionProvider" not in in_use:
            raise ModelLoadError(
                f"{model_path}: onnxruntime fell back to CPU for a GPU instance (providers in use: "
                f"{in_use}); check the CUDA and cuDNN libraries or use KIND_CPU"
            )
        strings = frozenset(node.name for node in session.get_inputs() if node.type == "tensor(string)")
        bind = ("cuda", settings.device.index) if settings.device.kind == "gpu" else None
        return OnnxRuntimeInstance(session, strings, bind)

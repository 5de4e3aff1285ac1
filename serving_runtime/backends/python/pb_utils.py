"""Triton's ``triton_python_backend_utils`` API, as a Python model sees it.

The model process (``stub``) registers this module in ``sys.modules`` under the name
``triton_python_backend_utils``, so ``import triton_python_backend_utils as pb_utils`` in a
``model.py`` works unchanged; nothing is installed into site-packages under that name. What needs
the server (BLS, response senders, cancellation, logging) goes through ``_runtime``, which the
stub sets. Parts of Triton's API this backend does not implement raise ``TritonModelException``
naming them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import numpy as np

from shipyard.serving_runtime.backends.python.autocomplete import ModelConfig  # noqa: F401 (re-exported)

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# TRITONSERVER_DataType numbers (1 BOOL ... 13 BYTES, 14 BF16), as Tensor.triton_dtype() returns.
_NUMPY_BY_CODE: dict[int, Any] = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8, 7: np.int16,
    8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64, 13: np.object_,
}  # fmt: skip
_CODE_BY_NUMPY = {np.dtype(t): code for code, t in _NUMPY_BY_CODE.items()}


class _Runtime(Protocol):
    model_config: dict[str, Any]

    def bls(self, request: InferenceRequest, decoupled: bool) -> Any: ...

    def bls_async(self, request: InferenceRequest, decoupled: bool) -> Any: ...

    def send(self, key: int, response: InferenceResponse | None, flags: int) -> None: ...

    def cancelled(self, key: int) -> bool: ...

    def log(self, level: str, message: str) -> None: ...


_runtime: _Runtime | None = None


def _need_runtime(what: str) -> _Runtime:
    if _runtime is None:
        raise TritonModelException(f"{what} is only available inside a Python model served by the server")
    return _runtime


def unsupported(what: str) -> TritonModelException:
    return TritonModelException(f"{what} is not supported by shipyard's Python backend")


class TritonModelException(Exception):
    """An error a model raises; the requests of that execute fail with its message."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg


class TritonError:
    """An error carried by a response (``InferenceResponse(error=...)``), with a status code."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


def triton_to_numpy_type(data_type: int) -> Any:
    return _NUMPY_BY_CODE.get(int(data_type))


def numpy_to_triton_type(data_type: Any) -> int | None:
    dtype = np.dtype(data_type)
    if dtype.kind in ("S", "O"):
        return 13
    return _CODE_BY_NUMPY.get(dtype)


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    """Length-prefixed bytes of a BYTES tensor, as a 1-D uint8 array (None for other dtypes)."""
    from shipyard.serving_runtime.datatypes import serialize_bytes_tensor

    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype.kind not in ("O", "S"):
        return None
    items = np.empty(input_tensor.size, dtype=np.object_)
    items[:] = [x if isinstance(x, bytes) else str(x).encode() for x in input_tensor.reshape(-1)]
    return np.frombuffer(serialize_bytes_tensor(items), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    from shipyard.serving_runtime.datatypes import deserialize_bytes_tensor as decode

    return decode(bytes(encoded_tensor))


class _Capsule:
    """Presents a bare DLPack capsule to ``numpy.from_dlpack`` (CPU memory only)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


class Tensor:
    """A named input or output tensor backed by a numpy array (CPU memory)."""

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        array = np.asarray(numpy_array)
        if array.dtype.kind == "U" or array.dtype == np.void:
            raise TritonModelException(
                "Tensor dtype used for numpy_array is not supported by the Python backend; use np.object_ instead"
            )
        if triton_dtype is not None:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is not None and array.dtype != np.dtype(wanted):
                array = array.view(wanted)
        self._name = str(name)
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._array.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        source = capsule if hasattr(capsule, "__dlpack__") else _Capsule(capsule)
        try:
            array = np.from_dlpack(source)
        except (RuntimeError, TypeError, BufferError) as exc:
            raise TritonModelException(f"Tensor.from_dlpack: only CPU tensors are supported ({exc})") from None
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


def _response_parameters(parameters: Any) -> dict[str, Any]:
    """A response's ``parameters`` (a dict, or its JSON): string keys, bool/int/float/str values,
    which the server sends as the response's parameters (REST ``parameters``, gRPC's map).

    Raises: TritonModelException naming the key and type that cannot be sent.
    """
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except ValueError as exc:
            raise TritonModelException(f"InferenceResponse parameters are not valid JSON: {exc}") from None
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(
            f"InferenceResponse parameters must be a dict (or its JSON), got {type(parameters).__name__}"
        )
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"InferenceResponse parameter keys must be strings, got {key!r}")
        if not isinstance(value, (bool, int, float, str)):
            raise TritonModelException(
                f"InferenceResponse parameter {key!r} has type {type(value).__name__}: "
                "values must be bool, int, float or str"
            )
    return dict(parameters)


class InferenceResponse:
    """A response: output tensors, or an error; ``parameters`` as a dict (``parameters()`` gives JSON)."""

    def __init__(
        self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None, parameters: Any = None
    ) -> None:
        output_tensors = [] if output_tensors is None else output_tensors
        if not isinstance(output_tensors, list):
            raise TritonModelException('"output_tensors" must be a list.')
        self._outputs = output_tensors
        self._error = error
        self._parameters: dict[str, Any] = _response_parameters(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends any number of responses for one request of a decoupled model, then the final flag."""

    def __init__(self, key: int) -> None:
        self._key = key
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is not final"
            )
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        _need_runtime("InferenceResponseSender.send").send(self._key, response, int(flags))

    def is_cancelled(self) -> bool:
        return _need_runtime("is_cancelled").cancelled(self._key)


class InferenceRequest:
    """A request to this model (``execute`` receives a list) or, built by the model, a BLS request
    to any model in the server (``exec``/``async_exec``)."""

    def __init__(
        self,
        model_name: str = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        request_id: str = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        model_version: int = -1,
        preferred_memory: Any = None,
        parameters: Any = None,
        trace: Any = None,
    ) -> None:
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._model_version = int(model_version)
        self._parameters: dict[str, Any] = dict(parameters or {})
        self._key = -1  # the server's handle of an incoming request
        self._sender: InferenceResponseSender | None = None
        self._decoupled = False

    @classmethod
    def _incoming(cls, key: int, decoupled: bool, **fields: Any) -> InferenceRequest:
        request = cls(**fields)
        request._key = key
        request._decoupled = decoupled
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        if self._key < 0:
            return False
        return _need_runtime("is_cancelled").cancelled(self._key)

    def get_response_sender(self) -> InferenceResponseSender:
        if self._key < 0:
            raise TritonModelException("get_response_sender is only available on requests passed to execute")
        if not self._decoupled:
            raise TritonModelException(
                "get_response_sender needs a decoupled model: set model_transaction_policy { decoupled: true }"
            )
        if self._sender is None:
            self._sender = InferenceResponseSender(self._key)
        return self._sender

    def set_release_flags(self, flags: int) -> None:
        raise unsupported("InferenceRequest.set_release_flags (request rescheduling)")

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on ``model_name`` through its scheduler; returns the response (errors
        inside it), or an iterator of responses when ``decoupled``."""
        return _need_runtime("BLS exec").bls(self, decoupled)

    async def async_exec(self, decoupled: bool = False) -> Any:
        future = _need_runtime("BLS async_exec").bls_async(self, decoupled)
        return await asyncio.wrap_future(future)


class Logger:
    """Messages go to the server's log, with the model's name."""

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        name = {0: "INFO", 1: "WARNING", 2: "ERROR", 3: "VERBOSE"}.get(int(level), "INFO")
        _need_runtime("Logger").log(name, str(message))

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, 0)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, 1)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, 2)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, 3)


TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2


class PreferredMemory:
    """Accepted for BLS requests; outputs always come back in CPU memory here."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


def get_model_config() -> dict[str, Any]:
    """The model's completed config as a dict (``json.loads(args['model_config'])``)."""
    return _need_runtime("get_model_config").model_config


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t["name"] == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def __getattr__(name: str) -> Any:
    if name in ("MetricFamily", "Metric", "load_model", "unload_model", "is_model_ready"):
        raise unsupported(f"triton_python_backend_utils.{name}")
    raise AttributeError(f"module 'triton_python_backend_utils' has no attribute {name!r}")

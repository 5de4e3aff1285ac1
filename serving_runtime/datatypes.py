"""Triton datatypes: protocol names (``FP32``), config enum names (``TYPE_FP32``) and numpy dtypes.

BYTES tensors are numpy ``object`` arrays of ``bytes``; on the wire (REST binary, gRPC raw
contents) each element is a 4-byte little-endian length followed by the bytes, as Triton does.
"""

from __future__ import annotations

import struct

import numpy as np

from shipyard.serving_runtime.errors import InvalidArgument

_TRITON_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

# BF16 has no numpy dtype; where ml_dtypes is installed (onnx brings it) we use its bfloat16.
try:  # pragma: no cover - depends on the environment
    import ml_dtypes

    _TRITON_TO_NUMPY["BF16"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    pass

_NUMPY_TO_TRITON: dict[np.dtype, str] = {v: k for k, v in _TRITON_TO_NUMPY.items()}

TRITON_DATATYPES: tuple[str, ...] = tuple(_TRITON_TO_NUMPY)


def triton_to_numpy(datatype: str) -> np.dtype:
    """numpy dtype for a protocol datatype name.

    Raises: InvalidArgument naming the datatype and the supported ones.
    """
    try:
        return _TRITON_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidArgument(f"unsupported datatype {datatype!r}; supported: {', '.join(TRITON_DATATYPES)}") from None


def numpy_to_triton(dtype: np.dtype) -> str:
    """Protocol datatype name for a numpy dtype (``object``, ``bytes_`` and ``str_`` → BYTES).

    Raises: InvalidArgument when the dtype has no Triton datatype.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_TRITON[dtype]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dtype} has no Triton datatype") from None


def config_to_triton(data_type: str | int) -> str:
    """``TYPE_FP32`` (or its enum number) → ``FP32``; ``TYPE_STRING`` → ``BYTES``."""
    if isinstance(data_type, int):
        from tritonclient.grpc import model_config_pb2

        type_name: str = model_config_pb2.DataType.Name(data_type)
    else:
        type_name = data_type
    name = type_name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def triton_to_config(datatype: str) -> str:
    """``FP32`` → ``TYPE_FP32``; ``BYTES`` → ``TYPE_STRING``."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (BYTES has none: raises InvalidArgument)."""
    if datatype == "BYTES":
        raise InvalidArgument("BYTES tensors have no fixed element size")
    return triton_to_numpy(datatype).itemsize


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor: each element as a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Decode length-prefixed BYTES elements into a flat ``object`` array.

    Raises: InvalidArgument when the buffer is truncated or holds a different element count.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidArgument("BYTES tensor data is truncated (incomplete length prefix)")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument("BYTES tensor data is truncated (element shorter than its length)")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(f"BYTES tensor holds {len(items)} elements, shape needs {count}")
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result

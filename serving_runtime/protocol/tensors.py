"""Tensors on the wire <-> numpy, for both transports.

The REST codec (JSON ``data`` and the binary tensor extension) and the gRPC codec (typed
``contents`` and ``raw_*_contents``) decode and encode every tensor here, so a datatype, a size
check or an error message exists once. Raw tensors are decoded with ``numpy.frombuffer`` (no copy,
no per-element Python); BYTES tensors use Triton's 4-byte length-prefixed form
(``datatypes.serialize_bytes_tensor``). Every error is an ``InvalidArgument`` naming the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from shipyard.serving_runtime.datatypes import (
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
    triton_to_numpy,
)
from shipyard.serving_runtime.errors import InvalidArgument

# -- decoding --------------------------------------------------------------------------------


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A shape from JSON: a list of non-negative integers.

    Raises: InvalidArgument naming the input otherwise.
    """
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input {name!r}: 'shape' must be a list of integers, got {shape!r}")
    return check_dims(name, shape)


def check_dims(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple. Raises: InvalidArgument naming the input when a dimension is negative."""
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return tuple(shape)


def dtype_for(name: str, datatype: str) -> np.dtype:
    """The numpy dtype of ``datatype``. Raises: InvalidArgument naming the input when it is unknown."""
    try:
        return triton_to_numpy(datatype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"input {name!r}: {exc.message}") from None


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], buffer: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw bytes (REST binary extension, gRPC raw contents), without copying.

    Raises: InvalidArgument naming the input when the byte size does not fit shape and datatype.
    """
    dtype = dtype_for(name, datatype)
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            flat = deserialize_bytes_tensor(buffer)
        except InvalidArgument as exc:
            raise InvalidArgument(f"input {name!r}: {exc.message}") from None
        if flat.size != count:
            raise InvalidArgument(
                f"input {name!r}: BYTES data holds {flat.size} elements, shape {list(shape)} needs {count}"
            )
        return flat.reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"input {name!r}: unexpected total byte size {len(buffer)} for shape {list(shape)} and "
            f"datatype {datatype}, expecting {expected} bytes"
        )
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _flatten(data: Any, out: list[Any]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


def decode_values(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from a list of values (REST JSON ``data``, flat or nested, BYTES as strings; gRPC
    typed ``contents`` other than BYTES).

    Raises: InvalidArgument naming the input when the values do not fit datatype or shape.
    """
    dtype = dtype_for(name, datatype)
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat: list[Any] = []
        _flatten(data, flat)
        items: list[bytes] = []
        for item in flat:
            if isinstance(item, str):
                items.append(item.encode("utf-8"))
            else:
                raise InvalidArgument(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
    else:
        if datatype == "BOOL":
            flat_bools: list[Any] = []
            _flatten(data, flat_bools)
            if not all(isinstance(v, bool) or v in (0, 1) for v in flat_bools):
                raise InvalidArgument(f"input {name!r}: BOOL data must be true/false")
            data = flat_bools
        try:
            array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"input {name!r}: data is not a list of {datatype} values: {exc}") from None
    if array.size != count:
        raise InvalidArgument(f"input {name!r}: data holds {array.size} elements, shape {list(shape)} needs {count}")
    return array.reshape(shape)


def decode_bytes_list(name: str, shape: tuple[int, ...], values: Sequence[bytes], field: str) -> np.ndarray:
    """A BYTES tensor from a list of byte strings (gRPC ``bytes_contents``, named ``field`` in errors).

    Raises: InvalidArgument naming the input when the count does not fit the shape.
    """
    count = int(np.prod(shape)) if shape else 1
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: {field} holds {len(values)} elements, shape {list(shape)} needs {count}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = list(values)
    return array.reshape(shape)


# -- encoding --------------------------------------------------------------------------------


def json_values(array: np.ndarray) -> list[Any]:
    """A tensor as a flat JSON list (BYTES as UTF-8 strings, BF16 as floats)."""
    flat = array.reshape(-1)
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes | bytearray) else str(item)
            for item in flat
        ]
    if array.dtype.kind == "V" or array.dtype.name == "bfloat16":
        return flat.astype(np.float32).tolist()  # type: ignore[no-any-return]
    return flat.tolist()  # type: ignore[no-any-return]


def raw_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """A tensor's raw wire form, without copying a contiguous array: row-major bytes, or
    length-prefixed elements for BYTES."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    flat: Any = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return memoryview(flat)


def raw_contents(array: np.ndarray, datatype: str) -> bytes:
    """``raw_bytes`` as ``bytes`` (a protobuf ``bytes`` field): C-order bytes of any layout, one copy."""
    return serialize_bytes_tensor(array) if datatype == "BYTES" else array.tobytes()

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


# No tensor has more elements than this (2^40, a tebi-element): a larger shape, even one with a zero
# dimension beside it, is refused before numpy is asked to describe it.
MAX_ELEMENTS = 1 << 40


def check_dims(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple.

    Raises: InvalidArgument naming the input when a dimension is negative or the shape, its zero
    dimensions aside, describes more than ``MAX_ELEMENTS`` elements.
    """
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise InvalidArgument(f"input {name!r}: shape {list(shape)} is too large (at most {MAX_ELEMENTS} elements)")
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
        flat_values: list[Any] = []
        _flatten(data, flat_values)  # nested lists are read row-major, as Triton does
        if datatype == "BOOL":
            if not all(isinstance(v, bool) or v in (0, 1) for v in flat_values):
                raise InvalidArgument(f"input {name!r}: BOOL data must be true/false")
            array = np.asarray(flat_values, dtype=dtype)
        else:
            array = _numbers(name, datatype, dtype, flat_values)
    if array.size != count:
        raise InvalidArgument(f"input {name!r}: data holds {array.size} elements, shape {list(shape)} needs {count}")
    return array.reshape(shape)


def _numbers(name: str, datatype: str, dtype: np.dtype, values: list[Any]) -> np.ndarray:
    """JSON numbers as ``dtype``, refusing what would change silently: booleans, fractions for an integer
    type, values outside the type's range (FP32 ``1e39`` would become inf, INT8 ``300`` would wrap)."""
    kinds = {type(v) for v in values}
    if not kinds <= {int, float}:
        odd = next(v for v in values if type(v) not in (int, float))
        raise InvalidArgument(f"input {name!r}: {datatype} data must be numbers, got {json_repr(odd)}")
    integer = dtype.kind in "iu"
    if integer and float in kinds:
        odd = next(v for v in values if type(v) is float)
        raise InvalidArgument(f"input {name!r}: {datatype} data must be integers, got {odd!r}")
    try:
        array = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        array = None
    if integer:
        if array is None:
            info = np.iinfo(dtype)
            odd = next(v for v in values if not info.min <= v <= info.max)
            raise InvalidArgument(f"input {name!r}: {odd} is outside the range of {datatype}")
        return array
    if array is None:
        raise InvalidArgument(f"input {name!r}: data is not a list of {datatype} values")
    wide = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(wide)
    overflow = finite & ~np.isfinite(array)
    if overflow.any():
        odd = wide[overflow][0]
        raise InvalidArgument(f"input {name!r}: {odd!r} is outside the range of {datatype}")
    return array


def json_repr(value: Any) -> str:
    """``value`` as JSON writes it (true, null, "text") for error messages."""
    import json

    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


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

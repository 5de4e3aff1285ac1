"""REST (Open Inference Protocol v2) JSON and the binary tensor extension <-> numpy.

A binary request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
the raw tensors, in input order, of every input whose ``parameters`` carry ``binary_data_size``.
Binary tensors are decoded with ``numpy.frombuffer`` (no copy, no per-element Python); BYTES
tensors use Triton's 4-byte length-prefixed form. Outputs are binary when the output asks for
``binary_data`` or the request sets ``binary_data_output``; the response then carries its own
``Inference-Header-Content-Length``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from shipyard.serving_runtime.datatypes import (
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
    triton_to_numpy,
)
from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, EncodedOutput, RequestedOutput

try:  # orjson is a kserve dependency; fall back to the standard library without it.
    import orjson

    def json_loads(data: bytes | memoryview) -> Any:
        return orjson.loads(bytes(data) if isinstance(data, memoryview) else data)

    def json_dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment

    def json_loads(data: bytes | memoryview) -> Any:
        return json.loads(bytes(data))

    def json_dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


HEADER_LENGTH = "inference-header-content-length"


def decompress_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo a request's ``Content-Encoding`` (gzip or deflate, as tritonclient sends).

    Raises: InvalidArgument for an unknown encoding or a corrupt compressed body.
    """
    if not content_encoding or content_encoding == "identity":
        return body
    encoding = content_encoding.strip().lower()
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(body)
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding} data: {exc}") from None
    raise InvalidArgument(f"unsupported Content-Encoding {content_encoding!r}; use gzip, deflate or none")


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None: the body is all JSON).

    Raises: InvalidArgument when the value is not an integer in ``[0, body length]``.
    """
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidArgument(f"Inference-Header-Content-Length {value!r} is not an integer") from None
    if not 0 <= length <= body_length:
        raise InvalidArgument(
            f"Inference-Header-Content-Length {length} is outside the request body of {body_length} bytes"
        )
    return length


def parse_json_object(data: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    """Parse a JSON object.

    Raises: InvalidArgument naming ``what`` when the text is not JSON or not an object.
    """
    if len(data) == 0:
        return {}
    try:
        obj = json_loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input {name!r}: 'shape' must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: shape {shape} has a negative dimension")
    return tuple(shape)


def _dtype_for(name: str, datatype: str) -> np.dtype:
    try:
        return triton_to_numpy(datatype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"input {name!r}: {exc.message}") from None


def decode_raw_tensor(name: str, datatype: str, shape: tuple[int, ...], buffer: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw bytes (binary extension, gRPC raw contents), without copying.

    Raises: InvalidArgument naming the input when the byte size does not fit shape and datatype.
    """
    dtype = _dtype_for(name, datatype)
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


def decode_json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from the JSON ``data`` field (flat or nested list; BYTES as strings).

    Raises: InvalidArgument naming the input when the values do not fit datatype or shape.
    """
    dtype = _dtype_for(name, datatype)
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


def _requested_outputs(obj: dict[str, Any]) -> list[RequestedOutput]:
    outputs = obj.get("outputs")
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise InvalidArgument("'outputs' must be a list of {\"name\": ...} objects")
    result: list[RequestedOutput] = []
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidArgument(f"each requested output needs a string 'name', got {out!r}")
        params = out.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"output {out['name']!r}: 'parameters' must be an object")
        if "shared_memory_region" in params:
            raise InvalidArgument(f"output {out['name']!r}: shared memory is not supported by this server")
        if "classification" in params:
            raise InvalidArgument(f"output {out['name']!r}: the classification extension is not supported")
        binary = params.get("binary_data")
        result.append(RequestedOutput(out["name"], None if binary is None else bool(binary)))
    return result


def _request_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"request 'id' must be a string, got {value!r}")
    return value


def decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
    """Decode a REST inference request body (all JSON, or JSON header + binary tensors).

    Raises: InvalidArgument for malformed JSON, missing fields, a shape that does not fit the
    data, a binary size that does not fit shape and datatype, or binary data no input claims.
    """
    view = memoryview(body)
    header = view if header_length is None else view[:header_length]
    obj = parse_json_object(header, "inference request")
    inputs_obj = obj.get("inputs")
    if not isinstance(inputs_obj, list):
        raise InvalidArgument("inference request needs 'inputs': a list of tensors")
    offset = len(header)
    inputs: list[DecodedInput] = []
    for tensor in inputs_obj:
        if not isinstance(tensor, dict):
            raise InvalidArgument(f"each input must be an object, got {tensor!r}")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"input without a string 'name': {str(tensor)[:200]}")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input {name!r}: 'datatype' must be a string such as \"FP32\"")
        shape = _check_shape(name, tensor.get("shape"))
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"input {name!r}: 'parameters' must be an object")
        if "shared_memory_region" in params:
            raise InvalidArgument(f"input {name!r}: shared memory is not supported by this server")
        size = params.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise InvalidArgument(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if not isinstance(size, int) or size < 0 or offset + size > len(view):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {len(view) - offset} bytes "
                    "of binary data left in the request body"
                )
            array = decode_raw_tensor(name, datatype, shape, view[offset : offset + size])
            offset += size
        elif "data" in tensor:
            array = decode_json_tensor(name, datatype, shape, tensor["data"])
        else:
            raise InvalidArgument(f"input {name!r} has no data: give 'data' or parameters.binary_data_size")
        inputs.append(DecodedInput(name, datatype, shape, array))
    if offset != len(view):
        raise InvalidArgument(
            f"request body has {len(view) - offset} bytes of binary data that no input claims "
            "(check binary_data_size and Inference-Header-Content-Length)"
        )
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("request 'parameters' must be an object")
    return DecodedRequest(inputs=inputs, outputs=_requested_outputs(obj), id=_request_id(obj), parameters=params)


def _json_data(array: np.ndarray) -> list[Any]:
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
    """An output's raw wire form: row-major bytes, or length-prefixed elements for BYTES."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    flat: Any = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return memoryview(flat)


def encode_response(
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: Sequence[EncodedOutput],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    An output is binary when its request entry says ``binary_data: true``, or when it says
    nothing and the request's ``binary_data_output`` parameter is true.
    """
    default_binary = bool(request.parameters.get("binary_data_output", False))
    per_output = {out.name: out.binary for out in request.outputs}
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        binary = per_output.get(out.name)
        if binary is None:
            binary = default_binary
        if binary:
            raw = raw_bytes(out.data, out.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(out.data)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = json_dumps(response)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)

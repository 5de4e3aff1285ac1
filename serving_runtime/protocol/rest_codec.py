"""REST (Open Inference Protocol v2) JSON and the binary tensor extension <-> numpy.

A binary request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
the raw tensors, in input order, of every input whose ``parameters`` carry ``binary_data_size``.
Outputs are binary when the output asks for ``binary_data`` or the request sets
``binary_data_output``; the response then carries its own ``Inference-Header-Content-Length``.
The tensors themselves are decoded and encoded by ``tensors.py``, shared with the gRPC codec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.protocol.shared_memory import NO_DATA, parse_ref, shm_parameters
from shipyard.serving_runtime.protocol.tensors import check_shape, decode_raw, decode_values, json_values, raw_bytes
from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, EncodedOutput, RequestedOutput

try:  # orjson is in the serve extra; fall back to the standard library without it.
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
        if "classification" in params:
            raise InvalidArgument(f"output {out['name']!r}: the classification extension is not supported")
        binary = params.get("binary_data")
        shm = parse_ref(f"output {out['name']!r}", params)
        result.append(RequestedOutput(out["name"], None if binary is None else bool(binary), shm))
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
        shape = check_shape(name, tensor.get("shape"))
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"input {name!r}: 'parameters' must be an object")
        shm = parse_ref(f"input {name!r}", params)
        size = params.get("binary_data_size")
        if shm is not None:
            array = NO_DATA  # read from the region when the request binds it (shared_memory.py)
        elif size is not None:
            if header_length is None:
                raise InvalidArgument(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if not isinstance(size, int) or size < 0 or offset + size > len(view):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {len(view) - offset} bytes "
                    "of binary data left in the request body"
                )
            array = decode_raw(name, datatype, shape, view[offset : offset + size])
            offset += size
        elif "data" in tensor:
            array = decode_values(name, datatype, shape, tensor["data"])
        else:
            raise InvalidArgument(f"input {name!r} has no data: give 'data' or parameters.binary_data_size")
        inputs.append(DecodedInput(name, datatype, shape, array, shm))
    if offset != len(view):
        raise InvalidArgument(
            f"request body has {len(view) - offset} bytes of binary data that no input claims "
            "(check binary_data_size and Inference-Header-Content-Length)"
        )
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("request 'parameters' must be an object")
    return DecodedRequest(inputs=inputs, outputs=_requested_outputs(obj), id=_request_id(obj), parameters=params)


def encode_response(
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: Sequence[EncodedOutput],
    parameters: Mapping[str, object] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length; ``parameters``:
    the response's own (set by the model), sent as its ``parameters`` object.

    An output is binary when its request entry says ``binary_data: true``, or when it says
    nothing and the request's ``binary_data_output`` parameter is true.
    """
    default_binary = bool(request.parameters.get("binary_data_output", False))
    per_output = {out.name: out.binary for out in request.outputs}
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.shm is not None:
            entry["parameters"] = shm_parameters(out.shm)
            entries.append(entry)
            continue
        binary = per_output.get(out.name)
        if binary is None:
            binary = default_binary
        if binary:
            raw = raw_bytes(out.data, out.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_values(out.data)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = dict(parameters)
    response["outputs"] = entries
    header = json_dumps(response)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)

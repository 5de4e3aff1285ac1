"""gRPC (``inference.GRPCInferenceService``, tritonclient's schema) <-> numpy.

Inputs come as ``raw_input_contents`` (one entry per input, in input order; decoded with
``numpy.frombuffer``) or as typed ``contents`` (``fp32_contents``...). Outputs always go back as
``raw_output_contents``, as Triton sends them. The tensors themselves are decoded and encoded by
``tensors.py``, shared with the REST codec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from shipyard.serving_runtime.datatypes import numpy_to_triton
from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.protocol.shared_memory import NO_DATA, parse_ref, shm_parameters
from shipyard.serving_runtime.protocol.tensors import (
    check_dims,
    decode_bytes_list,
    decode_raw,
    decode_values,
    raw_contents,
)
from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, EncodedOutput, RequestedOutput
from shipyard.serving_runtime.protocol.validate import ModelRules, shape_matches
from shipyard.serving_runtime.scheduling.api import InferenceRequest

# Which typed ``InferTensorContents`` field carries each datatype (FP16/BF16 have none: raw only).
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_to_dict(parameters: Mapping[str, Any]) -> dict[str, object]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict of Python values."""
    result: dict[str, object] = {}
    for key, param in parameters.items():
        which = param.WhichOneof("parameter_choice")
        result[key] = getattr(param, which) if which else None
    return result


def _set_parameter(target: Any, key: str, value: object) -> None:
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def _typed_contents(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {name!r}: datatype {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if datatype == "BYTES":
        return decode_bytes_list(name, shape, values, field)
    return decode_values(name, datatype, shape, list(values))


def decode_infer_request(request: Any) -> DecodedRequest:
    """Decode a ``ModelInferRequest``.

    Raises: InvalidArgument when raw contents do not match the inputs one to one, a size does
    not fit shape and datatype, an input has no data, or shared-memory parameters are incomplete.
    """
    raw = request.raw_input_contents
    refs = [
        parse_ref(f"input {t.name!r}", parameters_to_dict(t.parameters)) if t.parameters else None
        for t in request.inputs
    ]
    with_data = sum(ref is None for ref in refs)  # inputs in shared memory have no raw entry
    if raw and len(raw) != with_data:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {with_data} inputs; "
            "send one entry per input not in shared memory, in input order"
        )
    inputs: list[DecodedInput] = []
    index = 0
    for tensor, shm in zip(request.inputs, refs, strict=True):
        name = tensor.name
        shape = check_dims(name, tensor.shape)
        if shm is not None:
            array = NO_DATA  # read from the region when the request binds it (shared_memory.py)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input {name!r}: contents field must not be specified when using raw_input_contents"
                )
            array = decode_raw(name, tensor.datatype, shape, raw[index])
            index += 1
        elif tensor.HasField("contents"):
            array = _typed_contents(tensor, shape)
        else:
            raise InvalidArgument(f"input {name!r} has no data: use raw_input_contents or contents")
        inputs.append(DecodedInput(name, tensor.datatype, shape, array, shm))
    outputs: list[RequestedOutput] = []
    for out in request.outputs:
        if "classification" in out.parameters:
            raise InvalidArgument(f"output {out.name!r}: the classification extension is not supported")
        shm = parse_ref(f"output {out.name!r}", parameters_to_dict(out.parameters)) if out.parameters else None
        outputs.append(RequestedOutput(out.name, shm=shm))
    return DecodedRequest(
        inputs=inputs,
        outputs=outputs,
        id=request.id or None,
        parameters=parameters_to_dict(request.parameters),
    )


def fast_request(rules: ModelRules, request: Any) -> InferenceRequest | None:
    """The scheduler's request for the common case, built straight from the proto, or None when
    the request needs the general path (``decode_infer_request`` then ``build_request``).

    The common case: every input in ``raw_input_contents`` with a fixed-size datatype that matches
    the model's, a shape that fits its dims and ``max_batch_size``, the right byte size, every
    required input present once; no parameters on the request, its inputs or its outputs; only
    known outputs. Anything else (including every error) takes the general path, so errors and
    unusual requests behave exactly as there. Never raises.
    """
    tensors = request.inputs
    raw = request.raw_input_contents
    count = len(tensors)
    if not count or len(raw) != count or len(request.parameters):
        return None
    fast = rules.fast_inputs
    mbs = rules.max_batch_size
    inputs: dict[str, np.ndarray] = {}
    batch = 0
    for index in range(count):
        tensor = tensors[index]
        name = tensor.name
        spec = fast.get(name)
        if spec is None or name in inputs or tensor.datatype != spec.datatype or len(tensor.parameters):
            return None
        if tensor.HasField("contents"):
            return None  # both raw and typed contents: the general path refuses it
        shape = tuple(tensor.shape)
        if mbs > 0:
            if len(shape) != len(spec.dims) + 1:
                return None
            size = shape[0]
            if size < 1 or size > mbs or (batch and size != batch):
                return None
            batch = size
            item = shape[1:]
        else:
            item = shape
        if spec.item_count:
            if item != spec.dims:
                return None
            elements = spec.item_count * batch if mbs > 0 else spec.item_count
        else:
            if any(d < 0 for d in shape) or not shape_matches(item, spec.dims):
                return None
            elements = math.prod(shape)
        buffer = raw[index]
        if len(buffer) != elements * spec.dtype.itemsize:
            return None
        inputs[name] = np.ndarray(shape, spec.dtype, buffer)  # a read-only view, as frombuffer gives
    if len(inputs) != len(rules.inputs) and any(name not in inputs for name in rules.required):
        return None
    outputs: tuple[str, ...] = ()
    if request.outputs:
        known = rules.outputs
        requested: list[str] = []
        for out in request.outputs:
            if len(out.parameters) or out.name not in known:
                return None
            if out.name not in requested:
                requested.append(out.name)
        outputs = tuple(requested)
    return InferenceRequest(inputs, outputs, batch or 1, 0, 0, request.id, {})


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[EncodedOutput],
    parameters: Mapping[str, object] | None = None,
) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``; ``parameters``: the
    response's own (set by the model)."""
    response = service_pb2.ModelInferResponse(model_name=model_name, model_version=model_version)
    if request_id:
        response.id = request_id
    for key, value in (parameters or {}).items():
        _set_parameter(response.parameters, key, value)
    add = response.outputs.add
    contents = response.raw_output_contents
    for out in outputs:
        entry = add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.shm is not None:  # written to shared memory: its parameters, and no data
            for key, value in shm_parameters(out.shm).items():
                _set_parameter(entry.parameters, key, value)
            contents.append(b"")  # keeps raw_output_contents aligned with outputs
            continue
        contents.append(raw_contents(out.data, out.datatype))
    return response


def encode_infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray],
    model_version: str = "",
    request_id: str = "",
    outputs: Sequence[str] = (),
    parameters: Mapping[str, object] | None = None,
) -> Any:
    """A ``ModelInferRequest`` with raw contents (for tests and benchmark clients)."""
    request = service_pb2.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, array in inputs.items():
        datatype = numpy_to_triton(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw_contents(array, datatype))
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        _set_parameter(request.parameters, key, value)
    return request

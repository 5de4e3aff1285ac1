"""REST and gRPC codecs and request validation, without a server.

Encoded bodies come from tritonclient's own request builders and are read back with its own
result parsers, so the wire format is the one real clients use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.http._utils import _get_inference_request

from shipyard.serving_runtime.backends.base import TensorSpec
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.protocol import grpc_codec, rest_codec
from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, EncodedOutput, RequestedOutput
from shipyard.serving_runtime.protocol.validate import build_request, collect_outputs

DTYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _client_body(inputs: list[Any], outputs: list[Any] | None = None, request_id: str = "") -> tuple[bytes, int | None]:
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    return (body.encode() if isinstance(body, str) else body), json_size


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if datatype == "BYTES":
        flat = np.array([f"item-{i}-é".encode() for i in range(int(np.prod(shape)))], dtype=np.object_)
        return flat.reshape(shape)
    return (rng.random(shape) * 100).astype(DTYPES[datatype])


@pytest.mark.parametrize("datatype", [*DTYPES, "BYTES"])
@pytest.mark.parametrize("binary", [True, False])
def test_rest_request_from_tritonclient_decodes_exactly(datatype: str, binary: bool) -> None:
    array = _sample(datatype, (2, 3))
    tensor = httpclient.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = _client_body([tensor], request_id="req-7")
    decoded = rest_codec.decode_request(body, json_size)
    assert decoded.id == "req-7"
    [got] = decoded.inputs
    assert (got.name, got.datatype, got.shape) == ("x", datatype, (2, 3))
    if datatype == "BYTES":
        assert got.data.tolist() == array.tolist()
    else:
        assert got.data.dtype == array.dtype
        np.testing.assert_array_equal(got.data, array)


def test_rest_binary_input_is_a_view_of_the_body_not_a_copy() -> None:
    array = np.arange(3 * 224 * 224, dtype=np.float32).reshape(1, 3, 224, 224)
    tensor = httpclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    body, json_size = _client_body([tensor])
    got = rest_codec.decode_request(body, json_size).inputs[0].data
    assert not got.flags.owndata
    assert np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))
    np.testing.assert_array_equal(got, array)


def test_rest_errors_name_the_input_and_the_problem() -> None:
    def decode(obj: dict[str, Any], binary: bytes = b"") -> None:
        header = json.dumps(obj).encode()
        rest_codec.decode_request(header + binary, len(header) if binary else None)

    with pytest.raises(InvalidArgument, match=r"input 'a'.*15 elements.*needs 16"):
        decode({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 16], "data": list(range(15))}]})
    with pytest.raises(InvalidArgument, match=r"input 'b'.*byte size 60.*expecting 64"):
        decode(
            {"inputs": [{"name": "b", "datatype": "FP32", "shape": [16], "parameters": {"binary_data_size": 60}}]},
            b"\0" * 60,
        )
    with pytest.raises(InvalidArgument, match=r"input 'c'.*unsupported datatype 'FP8'"):
        decode({"inputs": [{"name": "c", "datatype": "FP8", "shape": [1], "data": [1]}]})
    with pytest.raises(InvalidArgument, match=r"input 'd' has no data"):
        decode({"inputs": [{"name": "d", "datatype": "FP32", "shape": [1]}]})
    with pytest.raises(InvalidArgument, match=r"4 bytes of binary data that no input claims"):
        decode(
            {"inputs": [{"name": "e", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
            b"\0" * 8,
        )
    with pytest.raises(InvalidArgument, match=r"input 'f'.*INT32 data must be numbers, got \"x\""):
        decode({"inputs": [{"name": "f", "datatype": "INT32", "shape": [2], "data": ["x", "y"]}]})
    with pytest.raises(InvalidArgument, match="malformed JSON"):
        rest_codec.decode_request(b'{"inputs": [', None)
    with pytest.raises(InvalidArgument, match="needs 'inputs'"):
        rest_codec.decode_request(b'{"id": "1"}', None)
    with pytest.raises(InvalidArgument, match="outside the request body"):
        rest_codec.parse_header_length("999", 10)


def test_rest_response_reads_back_in_tritonclient_binary_and_json() -> None:
    outputs = [
        EncodedOutput("OUT_F", "FP32", (2, 2), np.array([[1.5, 2], [3, 4]], dtype=np.float32)),
        EncodedOutput("OUT_S", "BYTES", (2,), np.array([b"ab", b"\xc3\xa9"], dtype=np.object_)),
        EncodedOutput("OUT_H", "FP16", (3,), np.array([0.5, 1, 2], dtype=np.float16)),
    ]
    request = DecodedRequest(inputs=[], outputs=[RequestedOutput("OUT_F", True), RequestedOutput("OUT_S", False)])
    request.id = "abc"
    body, header_length = rest_codec.encode_response("m", "3", request, outputs)
    assert header_length is not None
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    response = result.get_response()
    assert response["id"] == "abc" and response["model_version"] == "3"
    np.testing.assert_array_equal(result.as_numpy("OUT_F"), outputs[0].data)
    assert result.as_numpy("OUT_S").tolist() == ["ab", "é"]  # JSON strings
    np.testing.assert_array_equal(result.as_numpy("OUT_H"), outputs[2].data)  # default: JSON numbers

    request = DecodedRequest(inputs=[], parameters={"binary_data_output": True})
    body, header_length = rest_codec.encode_response("m", "1", request, outputs)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    assert "id" not in result.get_response()  # no id in the request: none in the response, never null
    assert result.as_numpy("OUT_S").tolist() == [b"ab", b"\xc3\xa9"]
    np.testing.assert_array_equal(result.as_numpy("OUT_H"), outputs[2].data)


@pytest.mark.parametrize("datatype", [*DTYPES, "BYTES"])
def test_grpc_raw_round_trip(datatype: str) -> None:
    array = _sample(datatype, (2, 2))
    request = grpc_codec.encode_infer_request(
        "m", {"x": array}, request_id="r1", outputs=["y"], parameters={"priority": 2}
    )
    request = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    decoded = grpc_codec.decode_infer_request(request)
    assert decoded.id == "r1" and decoded.parameters == {"priority": 2} and decoded.outputs[0].name == "y"
    got = decoded.inputs[0].data
    assert got.tolist() == array.tolist() if datatype == "BYTES" else np.array_equal(got, array)
    response = grpc_codec.encode_infer_response("m", "1", "r1", [EncodedOutput("y", datatype, (2, 2), array)])
    assert response.raw_output_contents[0] == bytes(rest_codec.raw_bytes(array, datatype))


def test_grpc_typed_contents_and_errors() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend([1, 2, 3])
    text = request.inputs.add(name="s", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hi")
    decoded = grpc_codec.decode_infer_request(request)
    assert decoded.inputs[0].data.tolist() == [1, 2, 3] and decoded.inputs[0].data.dtype == np.int32
    assert decoded.inputs[1].data.tolist() == [b"hi"]
    assert decoded.id is None

    request.raw_input_contents.append(b"\0" * 12)
    with pytest.raises(InvalidArgument, match="1 entries for 2 inputs"):
        grpc_codec.decode_infer_request(request)
    half = service_pb2.ModelInferRequest(model_name="m")
    half.inputs.add(name="h", datatype="FP16", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidArgument, match="input 'h': datatype FP16 must be sent in raw_input_contents"):
        grpc_codec.decode_infer_request(half)


# -- validation against a model ----------------------------------------------------------------

CONFIG = """
name: "add_sub"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "EXTRA" data_type: TYPE_INT64 dims: [ -1 ] optional: true }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


@dataclass
class _Model:
    """The attributes of ServedModel that validation reads."""

    name: str = "add_sub"
    version: int = 1
    config: Any = field(default_factory=lambda: parse_config_text(CONFIG))
    inputs: tuple[TensorSpec, ...] = (
        TensorSpec("INPUT0", "FP32", (16,)),
        TensorSpec("INPUT1", "FP32", (16,)),
        TensorSpec("EXTRA", "INT64", (-1,)),
    )
    outputs: tuple[TensorSpec, ...] = (TensorSpec("OUTPUT0", "FP32", (16,)), TensorSpec("OUTPUT1", "FP32", (16,)))
    max_batch_size: int = 8


def _inp(name: str, shape: tuple[int, ...], datatype: str = "FP32") -> DecodedInput:
    return DecodedInput(name, datatype, shape, np.zeros(shape, dtype=DTYPES[datatype]))


def test_validation_builds_the_scheduler_request() -> None:
    decoded = DecodedRequest(
        inputs=[_inp("INPUT0", (4, 16)), _inp("INPUT1", (4, 16)), _inp("EXTRA", (4, 5), "INT64")],
        outputs=[RequestedOutput("OUTPUT1")],
        id="q",
        parameters={"priority": 1, "timeout": 5000, "custom": "x", "binary_data_output": True},
    )
    request = build_request(_Model(), decoded)
    assert request.batch_size == 4 and request.outputs == ("OUTPUT1",)
    assert (request.priority, request.timeout_us, request.request_id) == (1, 5000, "q")
    assert request.parameters == {"custom": "x"}
    results = {"OUTPUT0": np.zeros((4, 16), np.float32), "OUTPUT1": np.ones((4, 16), np.float32)}
    [out] = collect_outputs(_Model(), request, results)
    assert (out.name, out.datatype, out.shape) == ("OUTPUT1", "FP32", (4, 16))
    request.outputs = ()
    assert [o.name for o in collect_outputs(_Model(), request, results)] == ["OUTPUT0", "OUTPUT1"]


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([_inp("INPUT0", (1, 16)), _inp("NOPE", (1, 16))], [], r"unexpected inference input 'NOPE'.*INPUT0, INPUT1"),
        ([_inp("INPUT0", (1, 16)), _inp("INPUT1", (1, 16), "INT32")], [], r"'INPUT1'.*datatype INT32, expected FP32"),
        ([_inp("INPUT0", (1, 16)), _inp("INPUT1", (1, 15))], [], r"shape for input 'INPUT1'.*\[-1, 16\].*\[1, 15\]"),
        ([_inp("INPUT0", (16,)), _inp("INPUT1", (1, 16))], [], r"input 'INPUT0'.*expected \[-1, 16\].*got \[16\]"),
        ([_inp("INPUT0", (9, 16)), _inp("INPUT1", (9, 16))], [], r"'INPUT0'.*batch size 9, above max_batch_size 8"),
        ([_inp("INPUT0", (2, 16)), _inp("INPUT1", (3, 16))], [], r"'INPUT1' has batch size 3 but input 'INPUT0' has 2"),
        ([_inp("INPUT0", (1, 16))], [], r"missing input\(s\) 'INPUT1'.*INPUT1 FP32 \[-1, 16\]"),
        ([_inp("INPUT0", (1, 16)), _inp("INPUT0", (1, 16))], [], r"'INPUT0' appears more than once"),
        ([_inp("INPUT0", (1, 16)), _inp("INPUT1", (1, 16))], ["OUT9"], r"unexpected inference output 'OUT9'"),
    ],
)
def test_validation_errors_name_the_input_and_the_expectation(
    inputs: list[DecodedInput], outputs: list[str], message: str
) -> None:
    decoded = DecodedRequest(inputs=inputs, outputs=[RequestedOutput(n) for n in outputs])
    with pytest.raises(InvalidArgument, match=message):
        build_request(_Model(), decoded)


def test_bad_priority_parameter() -> None:
    decoded = DecodedRequest(inputs=[_inp("INPUT0", (1, 16)), _inp("INPUT1", (1, 16))], parameters={"priority": -1})
    with pytest.raises(InvalidArgument, match="'priority' must be a non-negative integer"):
        build_request(_Model(), decoded)

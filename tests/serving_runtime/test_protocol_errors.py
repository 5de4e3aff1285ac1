"""Every bad request gets its documented status and a message naming the problem, over REST
(raw bodies, as any client could send them) and gRPC; the next good request still works."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import ServerProcess, http_get, http_post
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(120)

ONES = [1.0] * 16


def _tensor(name: str, shape: list[int], data: Any = None, datatype: str = "FP32") -> dict[str, Any]:
    count = int(np.prod(shape))
    return {"name": name, "datatype": datatype, "shape": shape, "data": data if data is not None else [1.0] * count}


GOOD = {"inputs": [_tensor("INPUT0", [1, 16]), _tensor("INPUT1", [1, 16])]}


def _good_request_works(server: ServerProcess) -> None:
    status, body = http_post(server.http_url + "/v2/models/simple/versions/1/infer", GOOD)
    assert status == 200, body
    assert body["outputs"][0]["data"] == [2.0] * 16


@pytest.mark.parametrize(
    ("path", "body", "status", "fragments"),
    [
        ("/v2/models/nope/infer", GOOD, 404, ["unknown model 'nope'"]),
        ("/v2/models/simple/versions/9/infer", GOOD, 404, ["no version 9"]),
        ("/v2/models/simple/versions/x/infer", GOOD, 404, ["no version 'x'"]),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [1, 16]), _tensor("WRONG", [1, 16])]},
            400,
            ["'WRONG'", "INPUT0, INPUT1"],
        ),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [1, 16]), _tensor("INPUT1", [1, 15])]},
            400,
            ["'INPUT1'", "[-1, 16]", "[1, 15]"],
        ),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [1, 16]), _tensor("INPUT1", [1, 16], [1] * 16, "INT32")]},
            400,
            ["'INPUT1'", "INT32", "expected FP32"],
        ),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [1, 16])]},
            400,
            ["missing input", "'INPUT1'"],
        ),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [9, 16]), _tensor("INPUT1", [9, 16])]},
            400,
            ["'INPUT0'", "batch size 9", "max_batch_size 8"],
        ),
        (
            "/v2/models/simple/infer",
            {"inputs": [_tensor("INPUT0", [1, 16], ONES[:15]), _tensor("INPUT1", [1, 16])]},
            400,
            ["'INPUT0'", "15 elements", "needs 16"],
        ),
        (
            "/v2/models/simple/infer",
            {**GOOD, "outputs": [{"name": "OUTPUT7"}]},
            400,
            ["'OUTPUT7'"],
        ),
        ("/v2/models/broken/infer", GOOD, 503, ["broken", "not ready"]),
    ],
)
def test_rest_bad_requests(
    served: ServerProcess, path: str, body: dict[str, Any], status: int, fragments: list[str]
) -> None:
    got_status, got = http_post(served.http_url + path, body)
    assert got_status == status, got
    assert set(got) == {"error"}
    for fragment in fragments:
        assert fragment in got["error"], (fragment, got["error"])
    _good_request_works(served)


def test_rest_malformed_and_binary_size_errors(served: ServerProcess) -> None:
    url = served.http_url + "/v2/models/simple/infer"
    status, got = http_post(url, b'{"inputs": [ {"name": ', {"Content-Type": "application/json"})
    assert status == 400 and "malformed JSON" in got["error"]
    status, got = http_post(url, b"[1, 2]")
    assert status == 400 and "JSON object" in got["error"]

    header = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 60}},
                _tensor("INPUT1", [1, 16]),
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    status, got = http_post(url, header + b"\0" * 60, headers)
    assert status == 400
    assert "'INPUT0'" in got["error"] and "60" in got["error"] and "expecting 64" in got["error"]
    _good_request_works(served)


def test_unknown_endpoint_is_json_404(served: ServerProcess) -> None:
    status, body = http_get(served.http_url + "/v2/nothing/here")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]


def test_tritonclient_http_sees_status_and_message(served: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(served.http_host)
    tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", [tensor])
    assert info.value.status() == "400" and "missing input" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"


def _grpc_inputs(
    shape: tuple[int, ...], datatype: str = "FP32", names: tuple[str, ...] = ("INPUT0", "INPUT1")
) -> list[Any]:
    inputs = []
    for name in names:
        tensor = grpcclient.InferInput(name, list(shape), datatype)
        tensor.set_data_from_numpy(np.ones(shape, dtype=np.float32 if datatype == "FP32" else np.int32))
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(
    ("model", "version", "inputs", "code", "fragment"),
    [
        ("nope", "", _grpc_inputs((1, 16)), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ("simple", "5", _grpc_inputs((1, 16)), grpc.StatusCode.NOT_FOUND, "no version 5"),
        ("simple", "", _grpc_inputs((1, 15)), grpc.StatusCode.INVALID_ARGUMENT, "[1, 15]"),
        ("simple", "", _grpc_inputs((1, 16), "INT32"), grpc.StatusCode.INVALID_ARGUMENT, "expected FP32"),
        ("simple", "", _grpc_inputs((9, 16)), grpc.StatusCode.INVALID_ARGUMENT, "max_batch_size 8"),
        ("simple", "", _grpc_inputs((1, 16), names=("INPUT0",)), grpc.StatusCode.INVALID_ARGUMENT, "'INPUT1'"),
        ("simple", "", _grpc_inputs((1, 16), names=("INPUT0", "X")), grpc.StatusCode.INVALID_ARGUMENT, "'X'"),
        ("broken", "", _grpc_inputs((1, 16)), grpc.StatusCode.UNAVAILABLE, "broken"),
    ],
)
def test_grpc_bad_requests(
    served: ServerProcess, model: str, version: str, inputs: list[Any], code: grpc.StatusCode, fragment: str
) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_host)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, model_version=version)
    assert info.value.status() == str(code)
    assert fragment in info.value.message()
    result = client.infer("simple", _grpc_inputs((2, 16)))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((2, 16), np.float32))


def test_grpc_raw_byte_size_error(served: ServerProcess) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
    request.raw_input_contents.extend([b"\0" * 64, b"\0" * 63])
    with grpc.insecure_channel(served.grpc_host) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'INPUT1'" in info.value.details() and "63" in info.value.details()

"""A real server over the hand-written repository, driven by tritonclient (http binary, http JSON,
grpc) and curl: results, metadata, configs, repository index, statistics, datatypes."""

from __future__ import annotations

import asyncio
import json
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import TYPED_DATATYPES, ServerProcess, http_get

pytestmark = pytest.mark.timeout(120)

A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.full((1, 16), 2.0, dtype=np.float32)


def _http_infer(server: ServerProcess, binary: bool, version: str = "", batch: int = 1) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(server.http_host)
    a, b = np.repeat(A, batch, axis=0), np.repeat(B, batch, axis=0)
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    return client.infer("simple", inputs, model_version=version, outputs=outputs, request_id="req-1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infer_latest_and_given_version(served: ServerProcess, binary: bool) -> None:
    result = _http_infer(served, binary, batch=3)
    assert result.get_response()["model_version"] == "2" and result.get_response()["id"] == "req-1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), np.repeat(A + B + 100, 3, axis=0))
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), np.repeat(A - B, 3, axis=0))
    result = _http_infer(served, binary, version="1")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B)


def test_tritonclient_http_without_requested_outputs_gets_all_binary(served: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(served.http_host)
    x = np.ones((2, 4), dtype=np.float32)
    tensor = httpclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("double", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    assert "id" not in result.get_response()


def test_tritonclient_grpc_infer(served: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_host)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    result = client.infer("simple", inputs, request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B + 100)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), A - B)
    result = client.infer("simple", inputs, model_version="1", outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B)
    assert result.as_numpy("OUTPUT1") is None


async def test_tritonclient_grpc_more_concurrent_calls_than_streams_per_connection(served: ServerProcess) -> None:
    """300 calls at once on one client connection, past the server's 128 streams per connection:
    the excess waits in the client (none refused) and every call gets its own answer."""
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(served.grpc_host)

    async def one(i: int) -> np.ndarray:
        inputs = [aioclient.InferInput("INPUT0", [1, 16], "FP32"), aioclient.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_data_from_numpy(np.full((1, 16), float(i), dtype=np.float32))
        inputs[1].set_data_from_numpy(B)
        return (await client.infer("simple", inputs)).as_numpy("OUTPUT0")

    try:
        results = await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await client.close()
    for i, out in enumerate(results):
        np.testing.assert_allclose(out, np.full((1, 16), i + 2.0 + 100))


def test_curl_json(served: ServerProcess) -> None:
    body = {
        "id": "curl-1",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": A.ravel().tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [[2.0] * 16]},
        ],
    }
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", json.dumps(body),
         "-w", "\n%{http_code}", f"{served.http_url}/v2/models/simple/versions/1/infer"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    text, status = out.stdout.rsplit("\n", 1)
    assert status == "200"
    response = json.loads(text)
    assert response["id"] == "curl-1" and response["model_name"] == "simple"
    assert response["outputs"][0]["name"] == "OUTPUT0" and response["outputs"][0]["shape"] == [1, 16]
    assert response["outputs"][0]["data"] == (A + B).ravel().tolist()
    meta = json.loads(subprocess.run(["curl", "-sS", f"{served.http_url}/v2/models/simple"], capture_output=True,
                                     text=True, check=True, timeout=30).stdout)  # fmt: skip
    assert meta["versions"] == ["1", "2"]


def test_health_and_server_metadata(served: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(served.http_host)
    grpc = grpcclient.InferenceServerClient(served.grpc_host)
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert http.get_server_metadata()["name"] == "shipyard"
    assert "model_repository" in grpc.get_server_metadata().extensions


def test_model_metadata_and_readiness(served: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(served.http_host)
    grpc = grpcclient.InferenceServerClient(served.grpc_host)
    meta = http.get_model_metadata("simple")
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    assert http.get_model_metadata("simple", "1")["name"] == "simple"
    gmeta = grpc.get_model_metadata("double")
    assert [(t.name, t.datatype, list(t.shape)) for t in gmeta.inputs] == [("x", "FP32", [-1, 4])]
    assert http.is_model_ready("simple") and http.is_model_ready("simple", "1")
    assert grpc.is_model_ready("simple", "2")
    assert not http.is_model_ready("broken") and not grpc.is_model_ready("broken")
    assert not http.is_model_ready("simple", "7") and not grpc.is_model_ready("nope")


def test_model_config_as_triton_returns_it(served: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(served.http_host)
    grpc = grpcclient.InferenceServerClient(served.grpc_host)
    config = http.get_model_config("simple")
    assert config["name"] == "simple" and config["max_batch_size"] == 8  # numbers, not strings
    assert config["input"][0]["dims"] == [16] and config["input"][0]["data_type"] == "TYPE_FP32"
    completed = http.get_model_config("double")  # no config.pbtxt: completed from the ONNX file
    assert completed["max_batch_size"] > 0 and completed["input"][0]["name"] == "x"
    assert completed["input"][0]["dims"] == [4] and completed["output"][0]["dims"] == [4]
    gconfig = grpc.get_model_config("simple", "1").config
    assert gconfig.max_batch_size == 8 and list(gconfig.output[1].dims) == [16]


def test_broken_model_is_unavailable_with_its_reason_and_others_serve(served: ServerProcess) -> None:
    index = httpclient.InferenceServerClient(served.http_host).get_model_repository_index()
    states = {(e["name"], e.get("version")): e for e in index}
    assert states[("broken", "1")]["state"] == "UNAVAILABLE"
    assert "model.onnx" in states[("broken", "1")]["reason"]
    assert states[("simple", "2")]["state"] == "READY"
    gindex = grpcclient.InferenceServerClient(served.grpc_host).get_model_repository_index()
    assert {m.name for m in gindex.models} == {"broken", "double", "simple", "typed"}
    status, body = http_get(served.http_url + "/v2/models/broken/ready")
    assert status == 503 and "broken" in json.loads(body)["error"]
    status, body = http_get(served.http_url + "/v2/health/ready")
    assert status == 200  # --strict-readiness=false


def _typed_inputs(module: object, n: int, binary: bool | None) -> tuple[list[object], dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    data: dict[str, np.ndarray] = {
        "FP16": rng.random(n).astype(np.float16),
        "FP32": rng.random(n).astype(np.float32),
        "FP64": rng.random(n),
        "INT8": rng.integers(-128, 127, n).astype(np.int8),
        "INT16": rng.integers(-30000, 30000, n).astype(np.int16),
        "INT32": rng.integers(-(2**31), 2**31 - 1, n).astype(np.int32),
        "INT64": rng.integers(-(2**62), 2**62, n).astype(np.int64),
        "UINT8": rng.integers(0, 255, n).astype(np.uint8),
        "BOOL": rng.integers(0, 2, n).astype(bool),
        "BYTES": np.array([f"s{i}-é".encode() for i in range(n)], dtype=np.object_),
    }
    inputs = []
    for datatype, array in data.items():
        tensor = module.InferInput(f"IN_{datatype}", [n], datatype)  # type: ignore[attr-defined]
        if binary is None:
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs, data


@pytest.mark.parametrize("mode", ["http-binary", "http-json", "grpc"])
def test_datatypes_round_trip(served: ServerProcess, mode: str) -> None:
    n = 5
    if mode == "grpc":
        inputs, data = _typed_inputs(grpcclient, n, None)
        result = grpcclient.InferenceServerClient(served.grpc_host).infer("typed", inputs)
    else:
        binary = mode == "http-binary"
        inputs, data = _typed_inputs(httpclient, n, binary)
        outputs = [httpclient.InferRequestedOutput(f"OUT_{t}", binary_data=binary) for t in TYPED_DATATYPES]
        result = httpclient.InferenceServerClient(served.http_host).infer("typed", inputs, outputs=outputs)
    for datatype, array in data.items():
        got = result.as_numpy(f"OUT_{datatype}")
        assert got is not None, datatype
        if datatype == "BYTES":
            expected = [s.decode() for s in array] if mode == "http-json" else list(array)
            assert list(got) == expected
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_statistics(served: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(served.http_host)
    before = http.get_inference_statistics("simple", "1")["model_stats"][0]["inference_count"]
    _http_infer(served, True, version="1", batch=4)
    stats = http.get_inference_statistics("simple", "1")["model_stats"]
    assert len(stats) == 1 and stats[0]["version"] == "1"
    assert stats[0]["inference_count"] == before + 4
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    everything = {(s["name"], s["version"]) for s in http.get_inference_statistics()["model_stats"]}
    assert {("simple", "1"), ("simple", "2"), ("typed", "1")} <= everything
    both = http.get_inference_statistics("simple")["model_stats"]
    assert {s["version"] for s in both} == {"1", "2"}
    gstats = grpcclient.InferenceServerClient(served.grpc_host).get_inference_statistics("simple", "1")
    assert gstats.model_stats[0].inference_count == before + 4


def test_metrics_endpoint(served: ServerProcess) -> None:
    _http_infer(served, True, version="1")
    status, body = http_get(served.http_url + "/metrics")
    assert status == 200
    text = body.decode()
    assert 'nv_inference_request_success{model="simple",version="1"}' in text
    assert "nv_cpu_utilization" in text
    # the standard process and Python metrics, for memory and GC dashboards
    rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes ")]
    assert rss and float(rss[0].split()[1]) > 10e6
    assert 'python_gc_collections_total{generation="0"}' in text


def test_grpc_stream_infer(served: ServerProcess) -> None:
    import queue

    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_host)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        good = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in good:
            tensor.set_data_from_numpy(A)
        bad = [grpcclient.InferInput("INPUT0", [1, 16], "FP32")]
        bad[0].set_data_from_numpy(A)
        client.async_stream_infer("simple", good, request_id="s1", model_version="1")
        client.async_stream_infer("simple", bad, request_id="s2")
        client.async_stream_infer("simple", good, request_id="s3", model_version="1")
        got = [results.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    errors = [str(error) for _, error in got if error is not None]
    answers = {r.get_response().id: r for r, error in got if error is None}  # type: ignore[attr-defined]
    assert len(errors) == 1 and "missing input" in errors[0]  # the stream survives a bad request
    assert set(answers) == {"s1", "s3"}  # responses come in completion order, matched by id
    np.testing.assert_allclose(answers["s3"].as_numpy("OUTPUT0"), 2 * A)

"""Explicit model control through tritonclient's load_model/unload_model (http and grpc), and
the repository API refused in the other modes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import ServerProcess, http_post, start_server
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory, triton_repository: Path) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("explicit"),
        [triton_repository],
        "--model-control-mode",
        "explicit",
        "--load-model",
        "simple",
        wait_models=("simple",),
    )
    yield server
    server.stop()


def _double(client: httpclient.InferenceServerClient) -> np.ndarray:
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    result = client.infer("double", [tensor]).as_numpy("y")
    assert result is not None
    return result


def test_only_requested_models_load_and_index_lists_the_rest(explicit: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(explicit.http_host)
    assert client.is_server_ready()  # strict readiness counts the models asked for, not all on disk
    assert client.is_model_ready("simple") and not client.is_model_ready("double")
    names = {entry["name"] for entry in client.get_model_repository_index()}
    assert names == {"broken", "double", "simple", "typed"}
    with pytest.raises(InferenceServerException) as info:
        _double(client)
    assert info.value.status() in ("404", "503")


def test_http_load_and_unload(explicit: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(explicit.http_host)
    client.load_model("double")
    assert client.is_model_ready("double")
    np.testing.assert_array_equal(_double(client), [[0, 2, 4, 6]])
    client.unload_model("double")
    assert not client.is_model_ready("double")
    states = {e["name"]: e.get("state") for e in client.get_model_repository_index()}
    assert states["double"] != "READY" and states["simple"] == "READY"


def test_grpc_load_with_config_override_and_unload(explicit: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(explicit.grpc_host)
    config = {
        "name": "double",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 2,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    client.load_model("double", config=json.dumps(config))
    assert client.is_model_ready("double")
    assert client.get_model_config("double").config.max_batch_size == 2
    client.unload_model("double")
    assert not client.is_model_ready("double")


def test_load_failures_are_reported(explicit: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(explicit.http_host)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("broken")
    assert info.value.status() == "400" and "model.onnx" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.load_model("absent")
    assert info.value.status() == "404" and "absent" in info.value.message()
    status, body = http_post(explicit.http_url + "/v2/repository/models/..%2F..%2Fetc/load", {})
    assert status in (400, 404), body
    gclient = grpcclient.InferenceServerClient(explicit.grpc_host)
    with pytest.raises(InferenceServerException) as ginfo:
        gclient.load_model("../etc")
    assert ginfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready("simple")


def test_repository_api_refused_outside_explicit_mode(served: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(served.http_host)
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("simple")
    assert info.value.status() == "400" and "explicit" in info.value.message()
    assert client.is_model_ready("simple")

"""The native fast path for ModelInfer (``protocol/native_fast.py``, ``native/fast_infer.h``).

Real servers on loopback, real tritonclient: the same requests against a server with the fast
path (the default with the native frontend) and one without (``--no-grpc-fast-path``) must get
byte-identical responses and identical errors; concurrent requests each get their own rows;
statistics and Prometheus count every request; a reload or unload never serves a stale version.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import SIMPLE_CONFIG, ServerProcess, http_get, simple_onnx, start_server, write_model
from tritonclient.utils import InferenceServerException

BATCHED_CONFIG = SIMPLE_CONFIG.replace('name: "simple"', 'name: "batched"').replace(
    "instance_group", "dynamic_batching { }\ninstance_group"
)


BOUNDED_CONFIG = BATCHED_CONFIG.replace('name: "batched"', 'name: "bounded"').replace(
    "dynamic_batching { }", "dynamic_batching { default_queue_policy { max_queue_size: 3 } }"
)


VARLEN_CONFIG = """
name: "varlen"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
"""


def _varlen_onnx() -> bytes:
    """y = x + x, FP32 [batch, n] with n free: requests group only with requests of their own width."""
    from onnx import TensorProto, helper
    from onnx_models import finish_model

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "n"])

    return finish_model(
        helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "varlen", [tensor("x")], [tensor("y")])
    )


def _native_or_skip() -> None:
    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)


def _repository(root: Path) -> Path:
    write_model(root, "batched", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, BATCHED_CONFIG)
    write_model(root, "simple", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, SIMPLE_CONFIG)  # default scheduler
    write_model(root, "bounded", {1: simple_onnx(100.0)}, BOUNDED_CONFIG)
    write_model(root, "varlen", {1: _varlen_onnx()}, VARLEN_CONFIG)
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(fast path on, fast path off) over the same repository."""
    _native_or_skip()
    repo = _repository(tmp_path_factory.mktemp("repo"))
    started: list[ServerProcess] = []
    try:
        for flags in ((), ("--no-grpc-fast-path",)):
            started.append(
                start_server(
                    tmp_path_factory.mktemp("fast"),
                    [repo],
                    "--grpc-frontend",
                    "native",
                    *flags,
                    wait_models=("batched", "simple", "bounded", "varlen"),
                )
            )
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def _inputs(batch: int, seed: float, names: tuple[str, ...] = ("INPUT0", "INPUT1")) -> list[Any]:
    inputs = []
    for k, name in enumerate(names):
        tensor = grpcclient.InferInput(name, [batch, 16], "FP32")
        tensor.set_data_from_numpy(np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) * (k + 1) + seed)
        inputs.append(tensor)
    return inputs


def _infer(server: ServerProcess, model: str, **kwargs: Any) -> bytes | tuple[str, str]:
    """The serialized response, or (status, message) of the error."""
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        return bytes(client.infer(model, **kwargs).get_response().SerializeToString())
    except InferenceServerException as exc:
        return (str(exc.status()), str(exc.message()))
    finally:
        client.close()


CASES: list[tuple[str, dict[str, Any]]] = [
    ("batched", {"inputs": _inputs(1, 0.5)}),
    ("batched", {"inputs": _inputs(3, 1.0), "request_id": "id-3"}),
    ("batched", {"inputs": _inputs(2, 2.0), "model_version": "1"}),
    ("batched", {"inputs": _inputs(2, 2.0), "outputs": [grpcclient.InferRequestedOutput("OUTPUT1")]}),
    ("batched", {"inputs": list(reversed(_inputs(2, 6.0)))}),  # inputs in another order
    (
        "batched",
        {
            "inputs": _inputs(1, 3.0),
            "outputs": [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT1", "OUTPUT0", "OUTPUT1")],
        },
    ),
    ("simple", {"inputs": _inputs(4, 4.0), "request_id": "s"}),
    ("simple", {"inputs": _inputs(1, 5.0), "model_version": "1"}),
    # errors: the Python path answers them, on both servers
    ("batched", {"inputs": _inputs(9, 0.0)}),  # above max_batch_size
    ("batched", {"inputs": _inputs(1, 0.0, ("INPUT0",))}),  # a missing input
    ("batched", {"inputs": _inputs(1, 0.0, ("INPUT0", "INPUT1", "INPUT2"))}),  # an unknown input
    ("batched", {"inputs": _inputs(1, 0.0), "outputs": [grpcclient.InferRequestedOutput("NOPE")]}),
    ("batched", {"inputs": _inputs(1, 0.0), "model_version": "7"}),
    ("batched", {"inputs": _inputs(1, 0.0), "parameters": {"priority": -1}}),
    ("batched", {"inputs": _inputs(1, 0.0), "parameters": {"custom": "kept"}}),  # valid, Python path
    ("missing", {"inputs": _inputs(1, 0.0)}),
]


def test_fast_path_is_used(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, slow = servers
    for _ in range(2):
        for model, version in (("batched", ""), ("simple", "1")):
            _infer(fast, model, inputs=_inputs(1, 0.0), model_version=version)
    log = fast.log()
    assert "ModelInfer fast path on" in log
    assert "model 'batched' version (default): gRPC ModelInfer takes the native fast path" in log
    assert "model 'simple' version 1: gRPC ModelInfer takes the native fast path" in log
    assert "fast path" not in slow.log()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_answers_as_the_python_path(servers: tuple[ServerProcess, ServerProcess], case: int) -> None:
    fast, slow = servers
    model, kwargs = CASES[case]
    for _ in range(2):  # the first request of a model registers it; the second takes the fast path
        got, want = _infer(fast, model, **kwargs), _infer(slow, model, **kwargs)
        assert got == want


def _rows(server: ServerProcess, model: str, count: int, batch: int, refused: list[str] | None = None) -> None:
    """``count`` concurrent requests of ``batch`` items, each checked against its own inputs;
    QueueFull answers are collected in ``refused`` when given (else they fail the test)."""

    def one(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_host)
        try:
            try:
                result = client.infer(model, _inputs(batch, float(i)), request_id=str(i))
            except InferenceServerException as exc:
                if refused is None or exc.status() != "StatusCode.UNAVAILABLE":
                    raise
                refused.append(str(exc.message()))
                return
            assert result.get_response().id == str(i)
            base = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), base * 3 + 2 * i + 100)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), -base)
        finally:
            client.close()

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(count)))


def _stats(server: ServerProcess, model: str, version: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    stats = client.get_inference_statistics(model, version, as_json=True)
    client.close()
    return dict(stats["model_stats"][0])


def _metric(server: ServerProcess, name: str, model: str, version: str) -> float:
    status, body = http_get(server.http_url + "/metrics")
    assert status == 200
    match = re.search(rf'^{name}{{model="{model}",version="{version}"}} (\S+)$', body.decode(), re.M)
    assert match, f"no {name} for {model} {version}"
    return float(match.group(1))


def test_concurrent_requests_get_their_own_rows_and_are_counted(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers
    _infer(fast, "batched", inputs=_inputs(1, 0.0))  # registered
    before = _stats(fast, "batched", "2")
    success_before = _metric(fast, "nv_inference_request_success", "batched", "2")
    _rows(fast, "batched", 300, 2)
    after = _stats(fast, "batched", "2")
    done = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert done == 300
    assert int(after["inference_count"]) - int(before["inference_count"]) == 600
    assert int(after["inference_stats"]["queue"]["count"]) - int(before["inference_stats"]["queue"]["count"]) == 300
    assert _metric(fast, "nv_inference_request_success", "batched", "2") - success_before == 300


@pytest.fixture
def explicit(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    _native_or_skip()
    repo = tmp_path / "repo"
    write_model(
        repo, "batched", {1: simple_onnx(0.0)}, BATCHED_CONFIG.replace("{ all { } }", "{ latest { num_versions: 1 } }")
    )
    server = start_server(
        tmp_path,
        [repo],
        "--grpc-frontend",
        "native",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "batched",
        wait_models=("batched",),
    )
    yield server, repo
    server.stop(signal.SIGTERM)


def test_reload_and_unload_never_serve_a_stale_version(explicit: tuple[ServerProcess, Path]) -> None:
    server, repo = explicit
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        for _ in range(3):
            assert client.infer("batched", _inputs(6, 0.0)).get_response().model_version == "1"
        # a new version with a smaller max_batch_size: the registered signature (8) must not be used
        write_model(
            repo, "batched", {2: simple_onnx(100.0)}, BATCHED_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4")
        )
        client.load_model("batched")
        with pytest.raises(InferenceServerException, match="above max_batch_size 4"):
            client.infer("batched", _inputs(6, 0.0))
        for _ in range(3):
            result = client.infer("batched", _inputs(2, 0.0))
            assert result.get_response().model_version == "2"
            assert result.as_numpy("OUTPUT0")[0, 0] == 100.0
        client.unload_model("batched")
        with pytest.raises(InferenceServerException) as failed:
            client.infer("batched", _inputs(2, 0.0))
        assert failed.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


def test_a_bounded_queue_counts_each_request(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers
    _infer(fast, "bounded", inputs=_inputs(1, 0.0))
    assert "model 'bounded' version (default): gRPC ModelInfer takes the native fast path" in fast.log()
    before = _stats(fast, "bounded", "1")
    refused: list[str] = []
    _rows(fast, "bounded", 200, 1, refused)
    after = _stats(fast, "bounded", "1")

    def count(stats: dict[str, Any], kind: str) -> int:
        return int(stats["inference_stats"][kind].get("count", 0))

    assert set(refused) <= {
        "queue for priority level 1 is full (3 requests, max_queue_size); retry later or raise max_queue_size"
    }
    assert count(after, "success") - count(before, "success") == 200 - len(refused)
    assert count(after, "fail") - count(before, "fail") == len(refused)


def _raw_call(server: ServerProcess, payload: bytes) -> tuple[str, bytes | str]:
    """Send ``payload`` as a ModelInfer message as it is; (status, response bytes or message)."""
    import grpc

    with grpc.insecure_channel(server.grpc_host) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            return "OK", call(payload, timeout=10)
        except grpc.RpcError as exc:
            return str(exc.code()), str(exc.details())


def test_mutated_messages_get_the_python_paths_answers(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """The C++ parser takes only what the Python path reads the same way: byte flips, truncations and
    insertions in a valid request get identical answers with and without the fast path."""
    from shipyard.serving_runtime.protocol.grpc_codec import encode_infer_request

    fast, slow = servers
    base = np.arange(32, dtype=np.float32).reshape(2, 16)
    valid = encode_infer_request(
        "batched", {"INPUT0": base, "INPUT1": base + 1}, request_id="x", outputs=["OUTPUT1"]
    ).SerializeToString()
    assert _raw_call(fast, valid) == _raw_call(slow, valid)
    rng = np.random.default_rng(21)
    accepted = 0
    for _ in range(150):
        data = bytearray(valid)
        kind = rng.integers(3)
        at = int(rng.integers(len(data)))
        if kind == 0:
            data[at] = int(rng.integers(256))
        elif kind == 1:
            del data[at:]
        else:
            data[at:at] = bytes(rng.integers(256, size=int(rng.integers(1, 4)), dtype=np.uint8))
        got, want = _raw_call(fast, bytes(data)), _raw_call(slow, bytes(data))
        assert got == want, f"mutation {kind} at {at}: {bytes(data)!r}"
        accepted += got[0] == "OK"
    assert accepted > 0


def test_variable_dims_group_only_with_their_own_shape(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers

    def one(i: int) -> None:
        width, batch = 3 + 2 * (i % 3), 1 + i % 2
        x = np.arange(batch * width, dtype=np.float32).reshape(batch, width) + i
        tensor = grpcclient.InferInput("x", [batch, width], "FP32")
        tensor.set_data_from_numpy(x)
        client = grpcclient.InferenceServerClient(fast.grpc_host)
        try:
            np.testing.assert_array_equal(client.infer("varlen", [tensor]).as_numpy("y"), x + x)
        finally:
            client.close()

    one(0)
    assert "model 'varlen' version (default): gRPC ModelInfer takes the native fast path" in fast.log()
    before = _stats(fast, "varlen", "1")
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(150)))
    after = _stats(fast, "varlen", "1")
    assert int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"]) == 150

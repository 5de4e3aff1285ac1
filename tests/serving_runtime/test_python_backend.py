"""Python models (Triton's Python backend API) on a real server, through tritonclient http and grpc.

One server serves ``python_repo/`` (see each ``model.py``) plus the ONNX ``simple`` model for BLS.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import SIMPLE_CONFIG, ServerProcess, simple_onnx, start_server, write_model

REPO = Path(__file__).parent / "python_repo"
MODELS = ("py_add", "py_fail", "py_sleep", "py_bls", "py_stream", "py_info", "simple")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("python_repo")
    shutil.copytree(REPO, repo, dirs_exist_ok=True)
    write_model(repo, "simple", {1: simple_onnx(0.0)}, SIMPLE_CONFIG)
    server = start_server(tmp_path_factory.mktemp("py_server"), [repo], wait_models=MODELS, timeout=120)
    yield server
    server.stop()


def _http(server: ServerProcess) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.http_host, network_timeout=30)


def _grpc(server: ServerProcess) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_host)


def _inputs(module: Any, **arrays: np.ndarray) -> list[Any]:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == np.object_ else module.np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _add_inputs(module: Any, value: float) -> list[Any]:
    return _inputs(module, INPUT0=np.full((1, 4), value, np.float32), INPUT1=np.ones((1, 4), np.float32))


def _mode(module: Any, mode: str) -> list[Any]:
    return _inputs(module, MODE=np.array([mode.encode()], dtype=np.object_))


def test_execute_over_rest_and_grpc(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    for module, client in ((httpclient, _http(server)), (grpcclient, _grpc(server))):
        result = client.infer("py_add", _add_inputs(module, 2.0))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 4), 3.0, np.float32))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((1, 4), 1.0, np.float32))
    assert "triton_python_backend_utils" not in __import__("sys").modules


def test_dynamic_batching_hands_execute_the_list_of_requests(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    client = _grpc(server)
    answers: queue.Queue[Any] = queue.Queue()
    for i in range(8):
        inputs = _add_inputs(grpcclient, float(i))
        client.async_infer("py_add", inputs, lambda result, error: answers.put((result, error)))
    batches = []
    for _ in range(8):
        result, error = answers.get(timeout=30)
        assert error is None
        batches.append(int(result.as_numpy("BATCH")[0, 0]))
        value = result.as_numpy("OUTPUT1")[0, 0] + 1.0
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 4), value + 1.0, np.float32))
    assert max(batches) > 1, f"execute never got more than one request: {batches}"


def test_two_instances_compute_at_the_same_time(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    client = _grpc(server)
    answers: queue.Queue[Any] = queue.Queue()
    for _ in range(2):
        seconds = _inputs(grpcclient, SECONDS=np.array([0.3]))
        client.async_infer("py_sleep", seconds, lambda result, error: answers.put((result, error)))
    spans = []
    for _ in range(2):
        result, error = answers.get(timeout=30)
        assert error is None
        spans.append(result.as_numpy("SPAN"))
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = spans
    assert pid_a != pid_b, "both requests ran in the same process"
    assert max(start_a, start_b) < min(end_a, end_b), f"the two executions did not overlap: {spans}"


def test_initialize_args_auto_complete_and_request_api(server: ServerProcess) -> None:
    import tritonclient.http as httpclient

    client = _http(server)
    config = client.get_model_config("py_info")
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [o["name"] for o in config["output"]] == ["INFO", "EXTRA"]
    x = _inputs(httpclient, X=np.ones((2, 2), np.float32))
    result = client.infer("py_info", x, parameters={"colour": "red"})
    info = json.loads(result.as_numpy("INFO")[0, 0])
    args = info["args"]
    assert set(args) >= {
        "model_config", "model_instance_kind", "model_instance_name", "model_instance_device_id",
        "model_repository", "model_version", "model_name",
    }  # fmt: skip
    assert args["model_name"] == "py_info" and args["model_version"] == "1" and args["model_instance_kind"] == "CPU"
    assert json.loads(args["model_config"])["max_batch_size"] == 4
    assert args["model_repository"].endswith("py_info")
    assert info["parameters"] == {"colour": "red"}
    assert info["requested"] == ["INFO", "EXTRA"] and info["cancelled"] is False
    assert info["config_name"] == "py_info" and info["code"] == 11
    np.testing.assert_array_equal(result.as_numpy("EXTRA"), np.full((2, 1), 7, np.int64))
    assert "py_info_0: initialized py_info_0" in server.log()


def test_model_errors_fail_only_their_requests(server: ServerProcess) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = _http(server)
    before = client.infer("py_fail", _mode(httpclient, "ok")).as_numpy("OUT")[0]
    with pytest.raises(InferenceServerException) as raised:
        client.infer("py_fail", _mode(httpclient, "raise"))
    assert raised.value.status() == "500"
    assert "ValueError: the model refused this input" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("py_fail", _mode(httpclient, "error"))
    assert raised.value.status() == "400" and "MODE 'error' is not accepted" in raised.value.message()
    after = client.infer("py_fail", _mode(httpclient, "ok")).as_numpy("OUT")[0]
    assert before == after  # same process: nothing was restarted


def test_response_parameters_reach_rest_and_grpc(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    body = json.dumps({"inputs": [{"name": "MODE", "datatype": "BYTES", "shape": [1], "data": ["params"]}]})
    request = urllib.request.Request(f"http://{server.http_host}/v2/models/py_fail/infer", data=body.encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        got = json.loads(answer.read())
    assert got["parameters"] == {"a_string": "text", "an_int": 7, "a_bool": True, "a_float": 0.5}
    response = _grpc(server).infer("py_fail", _mode(grpcclient, "params")).get_response()
    params = response.parameters
    assert params["a_string"].string_param == "text" and params["an_int"].int64_param == 7
    assert params["a_bool"].bool_param is True and params["a_float"].double_param == 0.5
    plain = _grpc(server).infer("py_fail", _mode(grpcclient, "ok")).get_response()
    assert len(plain.parameters) == 0


def test_response_parameters_that_cannot_be_sent_fail_the_call_naming_the_key(server: ServerProcess) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        _http(server).infer("py_fail", _mode(httpclient, "bad-params"))
    assert raised.value.status() == "500"
    assert "parameter 'a_list' has type list: values must be bool, int, float or str" in raised.value.message()


def test_model_sees_the_client_cancel_a_plain_call(server: ServerProcess) -> None:
    """``request.is_cancelled()`` turns true in a non-decoupled model when the gRPC call's deadline
    passes (as in Triton 2.51; the conformance suite compares it with Triton)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        _grpc(server).infer("py_fail", _mode(grpcclient, "wait-cancel"), client_timeout=0.3)
    assert "DEADLINE_EXCEEDED" in str(raised.value.status())
    server.wait_until(lambda: "py_fail_0: saw is_cancelled()" in server.log(), 10, "the model to see is_cancelled()")


class _Background:
    """Keeps another model busy from a thread; counts what failed."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient

        client = _grpc(self.server)
        while not self._stop.is_set():
            try:
                client.infer("py_add", _add_inputs(grpcclient, 1.0))
                client.infer("simple", _inputs(grpcclient, INPUT0=np.ones((1, 16), np.float32),
                                               INPUT1=np.ones((1, 16), np.float32)))  # fmt: skip
                self.done += 1
            except Exception as exc:
                self.failures.append(str(exc))

    def __enter__(self) -> _Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("crash", "ended with exit code 7"),
        ("segfault", "ended with signal SIGSEGV"),
        ("exit", "ended with exit code 3"),
        ("hang", "did not finish execute within 2 s"),
    ],
)
def test_dead_process_fails_its_requests_restarts_and_others_keep_serving(
    server: ServerProcess, mode: str, reason: str
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = _grpc(server)
    pid_before = client.infer("py_fail", _mode(grpcclient, "ok")).as_numpy("OUT")[0]
    with _Background(server) as background:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("py_fail", _mode(grpcclient, mode))
        assert "INTERNAL" in str(raised.value.status())
        assert reason in raised.value.message() and "restarted" in raised.value.message()
        pid_after = client.infer("py_fail", _mode(grpcclient, "ok")).as_numpy("OUT")[0]
        time.sleep(0.2)
    assert pid_after != pid_before
    assert background.done > 0 and background.failures == []
    assert "Python model instance py_fail_0 restarted" in server.log()


@pytest.mark.parametrize(
    "target, expected, error",
    [
        ("py_add", [0, 2, 4, 6], ""),
        ("py_add_async", [0, 2, 4, 6, 0, 20, 40, 60], ""),
        ("simple", [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4, ""),
        ("py_stream", [0, 1, 2], ""),
        ("nope", [0], "unknown model 'nope'"),
    ],
)
def test_bls_calls_other_models(server: ServerProcess, target: str, expected: list[float], error: str) -> None:
    import tritonclient.grpc as grpcclient

    inputs = _inputs(grpcclient, INPUT0=np.arange(4, dtype=np.float32), TARGET=np.array([target.encode()], np.object_))
    result = _grpc(server).infer("py_bls", inputs)
    np.testing.assert_array_equal(result.as_numpy("SUM"), np.array(expected, np.float32))
    assert error in result.as_numpy("ERROR")[0].decode()


def _stream(server: ServerProcess, count: int, **options: Any) -> list[tuple[Any, Any]]:
    import tritonclient.grpc as grpcclient

    client = _grpc(server)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        n = _inputs(grpcclient, N=np.array([count], np.int32))
        client.async_stream_infer("py_stream", n, request_id="req-7", **options)
        got = []
        while True:
            try:
                got.append(answers.get(timeout=2))
            except queue.Empty:
                return got
    finally:
        client.stop_stream()


def test_decoupled_model_streams_responses(server: ServerProcess) -> None:
    got = _stream(server, 4)
    assert [int(r.as_numpy("OUT")[0]) for r, _ in got] == [0, 1, 2, 3]
    assert all(e is None and r.get_response().id == "req-7" for r, e in got)
    assert [r.get_response().parameters["index"].int64_param for r, _ in got] == [0, 1, 2, 3]
    flagged = _stream(server, 2, enable_empty_final_response=True)
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in flagged]
    assert finals == [False, False, True] and flagged[-1][0].as_numpy("OUT") is None
    failed = _stream(server, -1)
    assert len(failed) == 1 and "N must be >= 0, got -1" in str(failed[0][1])


def test_decoupled_model_refuses_unary_calls(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        _grpc(server).infer("py_stream", _inputs(grpcclient, N=np.array([1], np.int32)))
    assert "UNIMPLEMENTED" in str(raised.value.status())
    assert raised.value.message() == "ModelInfer RPC doesn't support models with decoupled transaction policy"
    with pytest.raises(InferenceServerException) as raised:
        _http(server).infer("py_stream", _inputs(httpclient, N=np.array([1], np.int32)))
    assert raised.value.status() == "501"
    assert "HTTP end point doesn't support models with decoupled transaction policy" in raised.value.message()


def test_decoupled_model_sees_the_client_cancel(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    client = _grpc(server)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("py_stream", _inputs(grpcclient, N=np.array([100_000], np.int32)))
    answers.get(timeout=10)
    client.stop_stream(cancel_requests=True)
    server.wait_until(lambda: "py_stream_0: cancelled after" in server.log(), 10, "the model to see is_cancelled()")

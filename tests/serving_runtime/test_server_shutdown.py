"""SIGTERM: the server stops accepting, finishes every request it accepted, then exits 0."""

from __future__ import annotations

import math
import signal
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import SLOW_CONFIG, ServerProcess, slow_onnx, start_server, write_model

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

X = np.random.default_rng(0).random((64, 512)).astype(np.float32)


def _http_infer(server: ServerProcess) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_host, network_timeout=120, connection_timeout=120)
    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("slow", [tensor]).as_numpy("y")
    assert result is not None
    return result


def _grpc_infer(server: ServerProcess) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("slow", [tensor], client_timeout=120).as_numpy("y")
    assert result is not None
    return result


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_drains_accepted_requests_then_exits_0(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", {1: slow_onnx()}, SLOW_CONFIG)
    server = start_server(tmp_path, [repo], wait_models=("slow",))
    try:
        expected = _http_infer(server)  # warm, and the reference answer
        start = time.monotonic()
        _http_infer(server)
        one = time.monotonic() - start
        # Requests run one at a time (no dynamic batching): enough of them to keep it busy ~3 s.
        count = max(4, min(16, math.ceil(3.0 / max(one, 1e-3))))
        with ThreadPoolExecutor(count) as pool:
            futures: list[Future[np.ndarray]] = [
                pool.submit(_http_infer if i % 2 else _grpc_infer, server) for i in range(count)
            ]
            time.sleep(min(0.5, one))  # every request is on the server by now (loopback)
            assert sum(f.done() for f in futures) < count
            server.process.send_signal(signal.SIGTERM)

            deadline = time.monotonic() + 10
            while not _refuses_connections(server.http_port) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _refuses_connections(server.http_port), "still accepting HTTP connections after SIGTERM"
            in_flight_when_closed = count - sum(f.done() for f in futures)
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do: UNAVAILABLE or connection error
                grpcclient.InferenceServerClient(server.grpc_host).is_server_live(client_timeout=5)

            for future in futures:
                np.testing.assert_allclose(future.result(timeout=120), expected, rtol=1e-5)
        assert in_flight_when_closed > 0, "the test meant to close the port while requests were running"
        assert server.process.wait(60) == 0
        assert "stopping: no new requests" in server.log()
    finally:
        server.stop(signal.SIGKILL)

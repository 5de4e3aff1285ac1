"""Coalescing arrivals on the native ModelInfer fast path (``native/grpc_frontend.cc``, ``SignalFast``).

Under load a request that joins a group is held (up to ``SHIPYARD_GRPC_COALESCE_US``) so that the event
loop takes groups at most about once per that window; a request with no other call in flight is
never held. Real server, real tritonclient; the window is set to 100 ms here (the most it takes) so that a held request
is plain to see.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import SIMPLE_CONFIG, ServerProcess, http_get, simple_onnx, start_server, write_model

HOLD_US = 100_000
CONFIG = (
    SIMPLE_CONFIG.replace('name: "simple"', 'name: "batched"')
    .replace("max_batch_size: 8", "max_batch_size: 64")
    .replace("instance_group", "dynamic_batching { }\ninstance_group")
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    if not hasattr(native_grpc.load_extension().Frontend, "set_coalesce_us"):
        pytest.skip("the native module predates coalescing: rebuild it with `make native`")
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "batched", {1: simple_onnx(0.0)}, CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_GRPC_COALESCE_US", str(HOLD_US))
        started = start_server(tmp_path_factory.mktemp("coalesce"), [repo], "--grpc-frontend", "native",
                               wait_models=["batched"])  # fmt: skip
    try:
        yield started
    finally:
        started.stop()


def _inputs(seed: float) -> tuple[list[Any], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16) + seed
    b = np.full((1, 16), 0.5, dtype=np.float32) * seed
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs, a + b, a - b


def _executions(server: ServerProcess) -> tuple[int, int]:
    """(executions, items) of ``batched`` so far."""
    stats = json.loads(http_get(server.http_url + "/v2/models/batched/stats")[1])["model_stats"][0]
    runs = [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in stats.get("batch_stats", [])]
    return sum(c for _, c in runs), sum(s * c for s, c in runs)


def _check(client: grpcclient.InferenceServerClient, seed: float) -> float:
    inputs, total, difference = _inputs(seed)
    start = time.monotonic()
    result = client.infer("batched", inputs)
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), total)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), difference)
    return elapsed


def test_a_request_alone_is_never_held(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        _check(client, 0.0)  # the first takes the Python path and registers the model
        time.sleep(0.2)
        latencies = [_check(client, float(i)) for i in range(30)]
    finally:
        client.close()
    assert "requests under load are held up to 100000 µs" in server.log()
    # held, each would wait up to 100 ms after the loop's last take, i.e. nearly all of it
    assert statistics.median(latencies) < HOLD_US / 2e6, f"serial requests took {sorted(latencies)} s"


def test_concurrent_requests_are_coalesced_into_groups(server: ServerProcess) -> None:
    _check(grpcclient.InferenceServerClient(server.grpc_host), 0.0)  # registered
    executions0, items0 = _executions(server)

    def client_loop(worker: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_host)
        try:
            for i in range(8):
                _check(client, worker * 100.0 + i)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_loop, range(16)))
    executions, items = (a - b for a, b in zip(_executions(server), (executions0, items0), strict=True))
    assert items == 16 * 8
    # each client's requests are answered right (above) and arrive together: held for the window,
    # they run as a few big groups, not one execution per request
    assert executions <= items / 4, f"{items} requests ran as {executions} executions"


def test_a_bad_window_is_reported_and_the_default_used(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from shipyard.serving_runtime.protocol import native_grpc

    monkeypatch.setenv("SHIPYARD_GRPC_COALESCE_US", "soon")
    assert native_grpc.coalesce_us() == native_grpc.DEFAULT_COALESCE_US
    assert "SHIPYARD_GRPC_COALESCE_US='soon' is not a number of microseconds" in caplog.text
    monkeypatch.setenv("SHIPYARD_GRPC_COALESCE_US", "300")
    assert native_grpc.coalesce_us() == 300

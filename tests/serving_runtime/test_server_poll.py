"""Poll mode under load: while clients send requests without pause, adding a version, removing a
model and replacing configs give zero failed requests for the models that stay."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import (
    SIMPLE_CONFIG,
    ServerProcess,
    double_onnx,
    http_get,
    simple_onnx,
    start_server,
    typed_config,
    typed_identity_onnx,
    write_model,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

A = np.arange(16, dtype=np.float32).reshape(1, 16)


class Load:
    """Client threads that send requests back to back and record every failure."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self.seen_offsets: set[float] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run(self, name: str, call: Callable[[], None]) -> None:
        def loop() -> None:
            while not self.stop.is_set():
                try:
                    call()
                except Exception as exc:
                    with self._lock:
                        self.failures.append(f"{name}: {exc}")
                else:
                    with self._lock:
                        self.ok[name] = self.ok.get(name, 0) + 1

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def total(self) -> int:
        with self._lock:
            return sum(self.ok.values())

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)


def _simple_http(server: ServerProcess, load: Load) -> Callable[[], None]:
    client = httpclient.InferenceServerClient(server.http_host)
    inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(A)

    def call() -> None:
        out = client.infer("simple", inputs).as_numpy("OUTPUT0")
        assert out is not None
        offset = float(out[0, 0] - 2 * A[0, 0])
        assert offset in (100.0, 300.0), f"unexpected OUTPUT0 {out[0, :3]}"
        load.seen_offsets.add(offset)

    return call


def _simple_grpc(server: ServerProcess) -> Callable[[], None]:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(A)

    def call() -> None:
        out = client.infer("simple", inputs, model_version="1").as_numpy("OUTPUT1")
        assert out is not None and not out.any()

    return call


def _double_http(server: ServerProcess) -> Callable[[], None]:
    client = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))

    def call() -> None:
        out = client.infer("double", [tensor]).as_numpy("y")
        assert out is not None and out.tolist() == [[2.0] * 4]

    return call


def _wait(check: Callable[[], bool], what: str, server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{server.log()[-3000:]}")


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def test_poll_mode_changes_under_load_fail_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "simple", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, SIMPLE_CONFIG)
    write_model(repo, "double", {1: double_onnx()}, None)
    write_model(repo, "typed", {1: typed_identity_onnx()}, typed_config())
    server = start_server(
        tmp_path,
        [repo],
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.5",
        wait_models=("simple", "double", "typed"),
    )
    http = httpclient.InferenceServerClient(server.http_host)
    load = Load()
    try:
        load.run("simple-latest-http", _simple_http(server, load))
        load.run("simple-v1-grpc", _simple_grpc(server))
        load.run("double-http", _double_http(server))
        _wait(lambda: load.total() > 20, "the clients to get going", server)

        # 1. A new version of "simple" appears (staged outside, then renamed in: one atomic step).
        staging = tmp_path / "staging"
        write_model(staging, "simple", {3: simple_onnx(300.0)}, None)
        os.rename(staging / "simple" / "3", repo / "simple" / "3")
        _wait(lambda: "3" in http.get_model_metadata("simple")["versions"], "version 3", server)
        _wait(lambda: 300.0 in load.seen_offsets, "latest requests to reach version 3", server)
        before = load.total()

        # 2. "typed" is removed.
        shutil.move(str(repo / "typed"), str(tmp_path / "typed-removed"))
        _wait(lambda: http_get(server.http_url + "/v2/models/typed")[0] == 404, "typed to be removed", server)

        # 3. Configs replaced: "double" gets one (it had none), "simple" gets two instances.
        _write_atomically(
            repo / "double" / "config.pbtxt",
            'name: "double"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
        )
        _write_atomically(
            repo / "simple" / "config.pbtxt",
            SIMPLE_CONFIG.replace("{ count: 1 kind: KIND_CPU }", "{ count: 2 kind: KIND_CPU }"),
        )
        _wait(lambda: http.get_model_config("double")["max_batch_size"] == 2, "the new double config", server)
        _wait(
            lambda: http.get_model_config("simple")["instance_group"][0]["count"] == 2,
            "the new simple config",
            server,
        )
        _wait(lambda: load.total() > before + 20, "more requests after the changes", server)
    finally:
        load.join()
        code = server.stop()
    assert not load.failures, f"{len(load.failures)} failed requests, first: {load.failures[:5]}"
    assert all(load.ok.get(name, 0) > 0 for name in ("simple-latest-http", "simple-v1-grpc", "double-http"))
    assert code == 0

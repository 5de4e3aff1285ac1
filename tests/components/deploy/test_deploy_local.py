"""The local target: a real runtime process on a published repository, queried with tritonclient."""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
from helpers import free_port

from shipyard.components.deploy import DeployError, LocalTarget, deploy_local
from shipyard.components.deploy.local import is_ready, port_is_free
from shipyard.zoo import onnx_model

pytestmark = pytest.mark.slow


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "add_sub" / "1").mkdir(parents=True)
    shutil.copy(onnx_model("add_sub"), repo / "add_sub" / "1" / "model.onnx")
    return repo


@pytest.fixture
def target(tmp_path: Path) -> Iterator[LocalTarget]:
    target = LocalTarget(tmp_path / "state")
    yield target
    for name in target.names():  # never leave a runtime behind
        target.stop(name)


def test_deploy_local_serves_and_stops_cleanly(repository: Path, target: LocalTarget) -> None:
    http_port, grpc_port = free_port(), free_port()
    result = deploy_local(
        "add-sub", repository, http_port=http_port, grpc_port=grpc_port, state_dir=target.state_dir, timeout_s=60
    )
    assert result.url == f"http://127.0.0.1:{http_port}"
    assert result.grpc_url == f"127.0.0.1:{grpc_port}"

    client = httpclient.InferenceServerClient(result.url.removeprefix("http://"))
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "FP32"), httpclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    answer = client.infer("add_sub", inputs)
    np.testing.assert_allclose(answer.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(answer.as_numpy("OUTPUT1"), a - b)

    # a second process finds it through the state file
    found = LocalTarget(target.state_dir).get("add-sub")
    assert found.is_running() and found.http_url == result.url
    assert [d.name for d in target.list()] == ["add-sub"]
    with pytest.raises(DeployError, match="already running"):
        target.start("add-sub", repository, http_port=free_port(), grpc_port=free_port())

    pid = found.pid
    assert target.stop("add-sub") is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not is_ready(result.url, timeout_s=0.5)
    assert port_is_free("127.0.0.1", http_port)
    assert target.names() == []
    with pytest.raises(DeployError, match="no local deployment named 'add-sub'"):
        target.stop("add-sub")


def test_a_model_that_fails_to_load_fails_the_deploy_at_once_with_its_reason(
    repository: Path, target: LocalTarget
) -> None:
    config = 'name: "add_sub"\nplatform: "onnxruntime_onnx"\nbogus_field: 1\n'
    (repository / "add_sub" / "config.pbtxt").write_text(config)
    started = time.monotonic()
    with pytest.raises(DeployError) as raised:
        target.start("broken", repository, http_port=free_port(), grpc_port=free_port(), timeout_s=120)
    # the runtime logged the load failure and exited: no wait for the timeout, one line with the reason
    assert time.monotonic() - started < 60
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(r"exited with code \d+ during start-up: .*bogus_field.*\(full log: .*broken\.log\)", message)
    assert target.names() == []


def test_refuses_a_missing_repository_and_a_taken_port(tmp_path: Path, repository: Path, target: LocalTarget) -> None:
    with pytest.raises(DeployError, match="is not a directory: publish a model into it first"):
        target.start("x", tmp_path / "nowhere")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is in use"):
            target.start("x", repository, http_port=port, grpc_port=free_port())
    with pytest.raises(ValueError, match="not a valid Kubernetes name"):
        target.start("Bad_Name", repository)

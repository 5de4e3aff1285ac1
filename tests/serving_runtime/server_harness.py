"""Test harness for the serving runtime: tiny ONNX models built with onnx.helper, a hand-written
Triton repository, and a real server subprocess (``python -m shipyard.serving_runtime``) on free
loopback ports. Fixtures using it live in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import free_port
from onnx_models import double_onnx, finish_model, simple_onnx, typed_identity_onnx

# -- models ------------------------------------------------------------------------------------

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all { } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# Identity per datatype; no batching, one dynamic dimension.
TYPED_DATATYPES: dict[str, str] = {
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "BOOL": "TYPE_BOOL",
    "BYTES": "TYPE_STRING",
}


def typed_config() -> str:
    inputs = ",\n".join(f'  {{ name: "IN_{t}" data_type: {c} dims: [ -1 ] }}' for t, c in TYPED_DATATYPES.items())
    outputs = ",\n".join(f'  {{ name: "OUT_{t}" data_type: {c} dims: [ -1 ] }}' for t, c in TYPED_DATATYPES.items())
    header = 'name: "typed"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    return f"{header}input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"


def slow_onnx(width: int = 512, depth: int = 1000) -> bytes:
    """``depth`` chained MatMuls with one shared [width, width] weight: slow enough to watch a
    request in flight (tens to hundreds of ms at batch 64 on a small CPU), small on disk."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.eye(width, dtype=np.float32) * 0.5 + 0.5 / width).astype(np.float32)
    nodes = []
    previous = "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return finish_model(graph)


SLOW_CONFIG = """
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 512 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 512 ] } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def write_model(repo: Path, name: str, versions: dict[int, bytes], config: str | None) -> Path:
    """Write ``<repo>/<name>/[config.pbtxt]`` and ``<version>/model.onnx`` for each version."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version, data in versions.items():
        (model_dir / str(version)).mkdir(exist_ok=True)
        (model_dir / str(version) / "model.onnx").write_bytes(data)
    return model_dir


def build_repository(repo: Path) -> Path:
    """The hand-written Triton repository of the acceptance tests.

    - ``simple``: config.pbtxt, versions 1 and 2 (version 2 adds 100 to OUTPUT0), max_batch_size 8
    - ``double``: no config.pbtxt (completed from the ONNX file)
    - ``broken``: config.pbtxt and a model.onnx that is not ONNX
    - ``typed``: identity for FP16, FP32, FP64, INT8..INT64, UINT8, BOOL, BYTES
    """
    write_model(repo, "simple", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, SIMPLE_CONFIG)
    write_model(repo, "double", {1: double_onnx()}, None)
    write_model(
        repo,
        "broken",
        {1: b"this is not an onnx file"},
        'name: "broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
    )
    write_model(repo, "typed", {1: typed_identity_onnx()}, typed_config())
    return repo


# -- server process ----------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@dataclass
class ServerProcess:
    """A running ``python -m shipyard.serving_runtime``; ``log()`` returns what it printed."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_host(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_host(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}) waiting for {what}:\n{self.log()}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log()[-4000:]}")

    def model_ready(self, name: str, version: int | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        return http_get(self.http_url + path, timeout=2)[0] == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def start_server(
    tmp_path: Path,
    repositories: Sequence[Path],
    *extra: str,
    wait_ready: bool = True,
    wait_models: Sequence[str] = (),
    timeout: float = 60.0,
    python: str = sys.executable,
) -> ServerProcess:
    """Start a server on free ports and wait until it is live (and ready, and ``wait_models`` are).
    ``python``: the interpreter (another environment's, to run the shipyard installed there)."""
    http_port, grpc_port = free_port(), free_port()
    args = [python, "-m", "shipyard.serving_runtime"]
    for repo in repositories:
        args += ["--model-repository", str(repo)]
    args += ["--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]
    log_path = tmp_path / f"server-{http_port}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, http_port, grpc_port, log_path, args)
    try:
        server.wait_until(lambda: http_get(server.http_url + "/v2/health/live", 1)[0] == 200, timeout, "live")
        if wait_ready:
            server.wait_until(lambda: http_get(server.http_url + "/v2/health/ready", 1)[0] == 200, timeout, "ready")
        for name in wait_models:
            server.wait_until(lambda name=name: server.model_ready(name), timeout, f"model {name} ready")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def grpc_answer(server: ServerProcess, model: str, **kwargs: Any) -> bytes | tuple[str, str]:
    """One ModelInfer through tritonclient: the serialized response, or (status, message) of the error."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        return bytes(client.infer(model, **kwargs).get_response().SerializeToString())
    except InferenceServerException as exc:
        return (str(exc.status()), str(exc.message()))
    finally:
        client.close()


def metric_value(server: ServerProcess, name: str, model: str, version: str) -> float:
    """One Prometheus sample of ``server``'s /metrics for (``model``, ``version``); fails when absent."""
    status, body = http_get(server.http_url + "/metrics")
    assert status == 200
    match = re.search(rf'^{name}{{model="{model}",version="{version}"}} (\S+)$', body.decode(), re.M)
    assert match, f"no {name} for {model} {version}"
    return float(match.group(1))


def python_instance(tmp_path: Path, name: str, source: str) -> Any:
    """A ``PythonInstance`` of the model ``source`` named ``name`` (max_batch_size 8, output ``y``) in
    ``tmp_path``: its own process, no server."""
    from shipyard.serving_runtime.backends.python.instance import PythonInstance

    model = tmp_path / name / "1" / "model.py"
    model.parent.mkdir(parents=True)
    model.write_text(source)
    args = {
        "model_config": json.dumps({"name": name, "backend": "python", "max_batch_size": 8}),
        "model_instance_kind": "CPU", "model_instance_name": f"{name}_0", "model_instance_device_id": "0",
        "model_repository": str(tmp_path), "model_version": "1", "model_name": name,
    }  # fmt: skip
    return PythonInstance(model, args, {}, ["y"])

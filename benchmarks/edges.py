"""A served repository for the fuzz and soak runs (``benchmarks/fuzz.py``, ``benchmarks/soak.py``).

``runtime(workdir, *flags)`` starts ``python -m shipyard.serving_runtime`` on free loopback ports over a
repository of the zoo's ``add_sub`` (dynamic batching) and yields a ``Runtime`` (urls, pid, RSS); the
process is stopped on exit, even on error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ADD_SUB_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
          {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
dynamic_batching {{ }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_add_sub(repository: Path, name: str) -> Path:
    """``<repository>/<name>/`` with config.pbtxt and version 1 of the zoo's add_sub model."""
    from shipyard.zoo import onnx_model

    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(ADD_SUB_CONFIG.format(name=name))
    shutil.copyfile(onnx_model("add_sub"), model_dir / "1" / "model.onnx")
    return model_dir


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_host(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def rss_mb(self) -> float:
        import psutil

        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/v2/health/live", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def runtime(workdir: Path, *flags: str, models: tuple[str, ...] = ("add_sub",)) -> Iterator[Runtime]:
    """A runtime over a fresh repository holding ``models`` (each the zoo's add_sub), ready to serve."""
    repository = workdir / "repository"
    for name in models:
        write_add_sub(repository, name)
    http_port, grpc_port = free_port(), free_port()
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(repository),
               "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port), *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    served = Runtime(process, http_port, grpc_port, log_path)
    try:
        deadline = time.monotonic() + 90
        while not served.alive():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the runtime did not start:\n{served.log()[-3000:]}")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

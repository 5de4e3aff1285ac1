"""The servers the conformance suite compares (a plain module; fixtures are in conftest.py)."""

from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # the benchmarks package (tritonserver's launcher) lives at the repository root
    sys.path.insert(0, ROOT)

from benchmarks.common import LOOPBACK, ServerProcess, free_port  # noqa: E402
from benchmarks.servers.triton import TritonUnavailable, find_triton  # noqa: E402


@dataclass
class Served:
    """One server under comparison."""

    name: str
    http_port: int
    grpc_port: int
    repository: Path
    process: ServerProcess

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"


def require_triton() -> None:
    try:
        find_triton()
    except TritonUnavailable as exc:
        if os.environ.get("SHIPYARD_REQUIRE_TRITON") == "1":
            pytest.fail(f"the reference Triton server is required here: {exc}")
        pytest.skip(f"the reference Triton server is not installed: {exc}")


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v2/health/ready", timeout=2) as resp:
        return bool(resp.status == 200)


def start_shipyard(repository: Path, log_path: Path, *extra: str) -> Served:
    """``python -m shipyard.serving_runtime`` on free ports, ready."""
    http_port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "shipyard.serving_runtime", "--model-repository", str(repository)]
    argv += ["--host", LOOPBACK, "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]
    process = ServerProcess("shipyard", argv, log_path, env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    process.start()
    try:
        process.wait_ready(lambda: _ready(http_port), 90)
    except BaseException:
        process.stop()
        raise
    return Served("shipyard", http_port, grpc_port, repository, process)

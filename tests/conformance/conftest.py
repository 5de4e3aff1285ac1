"""Fixtures of the differential conformance suite: the same repository served by the real Triton
server (``make triton-env``) and by shipyard, each on free loopback ports, once per session.

Without ``.venv-triton`` the suite is skipped with the command that installs it, unless
``SHIPYARD_REQUIRE_TRITON=1`` (``make test`` sets it), where that is a failure.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # the benchmarks package (tritonserver's launcher) lives at the repository root
    sys.path.insert(0, ROOT)

from conformance_repo import build_repository, python_backend_available  # noqa: E402

from benchmarks.common import LOOPBACK, ServerProcess, free_port  # noqa: E402
from benchmarks.servers.triton import TritonUnavailable, find_triton, start_triton  # noqa: E402


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


def _require_triton() -> None:
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


@pytest.fixture(scope="session")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Triton's repository, shipyard's): the same directory once shipyard has a Python backend."""
    root = tmp_path_factory.mktemp("conformance")
    triton_repo = build_repository(root / "python", python=True)
    if python_backend_available():
        return triton_repo, triton_repo
    return triton_repo, build_repository(root / "onnx", python=False)


@pytest.fixture(scope="session")
def servers(
    repositories: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Served]]:
    """(triton, shipyard), both serving the conformance repository."""
    _require_triton()
    logs = tmp_path_factory.mktemp("conformance-logs")
    triton_repo, shipyard_repo = repositories
    triton = start_triton([triton_repo], logs / "tritonserver.log")
    try:
        shipyard = start_shipyard(shipyard_repo, logs / "shipyard.log")
    except BaseException:
        triton.stop()
        raise
    try:
        yield (
            Served("triton", triton.http_port, triton.grpc_port, triton_repo, triton.process),
            shipyard,
        )
    finally:
        shipyard.process.stop()
        triton.stop()

"""Fixtures of the differential conformance suite: the same repository served by the real Triton
server (``make triton-env``) and by shipyard, each on free loopback ports, once per session.

Without ``.venv-triton`` the suite is skipped with the command that installs it, unless
``SHIPYARD_REQUIRE_TRITON=1`` (``make test`` sets it), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_repo import add_python_behaviours, build_repository, python_backend_available
from conformance_servers import Served, require_triton, start_shipyard

from benchmarks.servers.triton import start_triton


@pytest.fixture(scope="session")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Triton's repository, shipyard's): the same directory once shipyard has a Python backend."""
    root = tmp_path_factory.mktemp("conformance")
    triton_repo = build_repository(root / "python", python=True)
    if python_backend_available():
        return add_python_behaviours(triton_repo), triton_repo
    return triton_repo, build_repository(root / "onnx", python=False)


@pytest.fixture(scope="session")
def servers(
    repositories: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Served]]:
    """(triton, shipyard), both serving the conformance repository."""
    require_triton()
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

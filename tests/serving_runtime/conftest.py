"""Fixtures for serving runtime tests: the hand-written Triton repository and a real server
subprocess over it (helpers in server_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerProcess, build_repository, start_server


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written repository (read-only: tests that change files make their own)."""
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module", params=["native", "aio"], ids=lambda frontend: f"grpc-{frontend}")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, triton_repository: Path
) -> Iterator[ServerProcess]:
    """One server over ``triton_repository`` (control mode none; broken model -> not strictly ready),
    once per gRPC frontend: clients must not be able to tell them apart."""
    # imported here: both pytest sessions load this file, and native_grpc loads tritonclient's protos
    from shipyard.serving_runtime.protocol import native_grpc

    if request.param == "native" and (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    server = start_server(
        tmp_path_factory.mktemp("served"),
        [triton_repository],
        "--strict-readiness=false",
        "--grpc-frontend",
        request.param,
        wait_models=("simple", "double", "typed"),
    )
    assert f"({request.param} frontend)" in server.log()
    yield server
    server.stop()

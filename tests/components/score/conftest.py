"""Fixtures for the ``shipyard score`` tests (helpers in score_harness.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from score_harness import (
    AFFINE_CONFIG,
    PRIO_CONFIG,
    SLICED_CONFIG,
    TIGHT_CONFIG,
    Runtime,
    affine_onnx,
    start_runtime,
    write_model,
)


@pytest.fixture(scope="session")
def score_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("score-repo")
    models = (("affine", AFFINE_CONFIG), ("prio", PRIO_CONFIG), ("tight", TIGHT_CONFIG), ("sliced", SLICED_CONFIG))
    for name, config in models:
        write_model(repo, name, affine_onnx(), config)
    return repo


@pytest.fixture(scope="module")
def runtime(score_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    served = start_runtime(score_repository, tmp_path_factory.mktemp("runtime") / "server.log")
    yield served
    served.process.terminate()
    try:
        served.process.wait(20)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait(10)

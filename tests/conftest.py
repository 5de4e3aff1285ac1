"""Shared pytest hooks and fixtures.

Tests marked ``gpu`` need a CUDA GPU; without one they are skipped and the reason is printed
(``-ra`` in the pytest options lists skip reasons in the summary). Plain helper functions shared by
several test folders live in ``tests/helpers.py``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest


@functools.cache
def _no_gpu_reason() -> str | None:
    """Why CUDA is not usable here, or None when a GPU is visible. Checked once, lazily."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no CUDA GPU: nvidia-smi not found on PATH"
    try:
        result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no CUDA GPU: nvidia-smi failed ({exc})"
    if result.returncode != 0 or "GPU" not in result.stdout:
        return f"no CUDA GPU: nvidia-smi -L lists none ({(result.stderr or result.stdout).strip()[:200]})"
    return None


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh embedded MLflow store (sqlite + fixed artifact location) for one test."""
    monkeypatch.setenv("SHIPYARD_MLFLOW_HOME", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from shipyard.registry import resolve_tracking_uri  # lazily: both pytest sessions load this file

    return resolve_tracking_uri()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _no_gpu_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(marker)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Keep the two pytest sessions apart (kserve's and tritonclient.grpc's protos clash in one process).

    ``-m kserve_sdk`` collects only modules that mention the marker; ``-m "not kserve_sdk"`` skips
    modules marked kserve_sdk as a whole. Collecting a module imports it, so without this the
    kserve session would import every other test module's tritonclient.grpc first.
    """
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    markexpr = " ".join((config.getoption("markexpr") or "").split())
    if markexpr not in ("kserve_sdk", "not kserve_sdk"):
        return None
    text = collection_path.read_text(encoding="utf-8", errors="replace")
    if markexpr == "kserve_sdk":
        return "kserve_sdk" not in text or None
    return "pytestmark = pytest.mark.kserve_sdk" in text or None

"""Shared pytest hooks.

Tests marked ``gpu`` need a CUDA GPU; without one they are skipped and the reason is printed
(``-ra`` in the pytest options lists skip reasons in the summary).
"""

from __future__ import annotations

import functools
import shutil
import subprocess

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

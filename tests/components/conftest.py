"""Shared fixtures for the pipeline step tests: the digits CNN, its data, and its exported ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits() -> object:
    from shipyard.zoo import digits_data

    return digits_data()


@pytest.fixture(scope="session")
def digits_module() -> object:
    from shipyard.zoo import torch_model

    return torch_model("digits_cnn")


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory, digits_module: object, digits: object) -> Path:
    """The digits CNN exported by our exporter (max batch 64)."""
    from shipyard.components.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    x = np.asarray(digits.x_test[:1])  # type: ignore[attr-defined]
    export_onnx(digits_module, x, out, max_batch_size=64, output_names=["logits"])  # type: ignore[arg-type]
    return out

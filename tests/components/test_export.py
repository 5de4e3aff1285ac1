"""torch -> ONNX: dynamic batch works at 1 and max, checked against torch; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from shipyard.components.errors import ExportError
from shipyard.components.export import export_onnx


def test_digits_export_dynamic_batch(tmp_path: Path, digits_module: torch.nn.Module, digits: object) -> None:
    x = digits.x_test  # type: ignore[attr-defined]
    result = export_onnx(digits_module, x[:1], tmp_path / "m.onnx", max_batch_size=32, output_names=["logits"])
    assert result.checked_batches == (1, 32) and result.max_abs_diff < 1e-4
    assert result.input_names == ("input",) and result.output_names == ("logits",)
    model = onnx.load(str(result.path))
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # symbolic batch
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 32):
        got = session.run(["logits"], {"input": x[:batch]})[0]
        with torch.no_grad():
            want = digits_module(torch.from_numpy(x[:batch])).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_multi_input_model_and_name_errors(tmp_path: Path) -> None:
    from shipyard.zoo import torch_model

    add_sub = torch_model("add_sub")
    example = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.full((1, 16), 2, np.float32)}
    result = export_onnx(add_sub, example, tmp_path / "as.onnx", max_batch_size=8, output_names=["OUTPUT0", "OUTPUT1"])
    assert result.input_names == ("INPUT0", "INPUT1")
    with pytest.raises(ExportError, match="2 outputs but 1 output names"):
        export_onnx(add_sub, example, tmp_path / "bad.onnx", output_names=["only_one"])
    with pytest.raises(ExportError, match="batch-first"):
        export_onnx(add_sub, {"INPUT0": np.float32(1), "INPUT1": np.float32(1)}, tmp_path / "bad2.onnx")

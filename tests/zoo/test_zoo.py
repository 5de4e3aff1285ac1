"""The zoo builds its models from code; the digits CNN learns the real digits data set."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from shipyard import zoo
from shipyard.zoo.api import example_input


def test_digits_cnn_reaches_95_percent_test_accuracy() -> None:
    from shipyard.zoo.torch_models import accuracy

    data = zoo.digits_data()
    model = zoo.torch_model("digits_cnn")
    acc = accuracy(model, data.x_test, data.y_test)
    print(f"digits CNN test accuracy: {acc:.4f} on {len(data.y_test)} held-out images")
    assert acc >= 0.95


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_onnx_models_have_a_dynamic_batch_axis_and_match_torch(name: str) -> None:
    import torch

    session = ort.InferenceSession(str(zoo.onnx_model(name)), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        feeds = example_input(name, batch)
        outputs = session.run(None, feeds)
        assert all(o.shape[0] == batch for o in outputs)
        with torch.inference_mode():
            expected = zoo.torch_model(name)(*(torch.from_numpy(v) for v in feeds.values()))
        expected_list = list(expected) if isinstance(expected, tuple) else [expected]
        for got, want in zip(outputs, expected_list, strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


def test_add_sub_is_tritons_simple_model() -> None:
    session = ort.InferenceSession(str(zoo.onnx_model("add_sub")), providers=["CPUExecutionProvider"])
    a = np.arange(16, dtype=np.float32)[None, :]
    b = np.ones((1, 16), dtype=np.float32)
    total, diff = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(total, a + 1)
    np.testing.assert_array_equal(diff, a - 1)


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="digits_cnn"):
        zoo.onnx_model("bert")


def test_models_are_cached_not_rebuilt() -> None:
    first = zoo.onnx_model("add_sub")
    mtime = first.stat().st_mtime_ns
    assert zoo.onnx_model("add_sub") == first
    assert first.stat().st_mtime_ns == mtime

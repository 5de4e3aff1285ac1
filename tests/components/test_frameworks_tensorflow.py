"""Issue 17, TF SavedModels: a TF2 ``tf.Module`` built and trained here, registered in MLflow (the ``tensorflow``
flavor stores a SavedModel), exported with tf2onnx through its ``serving_default`` signature, run through the deploy
pipeline and served by the runtime with TensorFlow's own answers (<= 1e-4 FP32); a TF op tf2onnx cannot translate
is one error naming it and the fallback.

TensorFlow is the ``tensorflow`` extra (about 1.3 GB installed): without it these tests skip and say how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import tensorflow as tf
except ImportError:
    pytest.skip("tensorflow is not installed: pip install 'shipyard[tensorflow]' (or make test-tensorflow)",
                allow_module_level=True)  # fmt: skip

from helpers import served_in_process

from shipyard import registry
from shipyard.components.errors import ExportError
from shipyard.components.flow import deploy_flow

pytestmark = pytest.mark.slow


class DigitsNet(tf.Module):  # type: ignore[misc]
    """64 -> 32 (relu) -> 10 (softmax), trained on the digits with plain TF (GradientTape)."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w1 = tf.Variable(rng.standard_normal((64, 32)).astype(np.float32) * 0.2, name="w1")
        self.b1 = tf.Variable(np.zeros(32, np.float32), name="b1")
        self.w2 = tf.Variable(rng.standard_normal((32, 10)).astype(np.float32) * 0.2, name="w2")
        self.b2 = tf.Variable(np.zeros(10, np.float32), name="b2")

    def logits(self, x: Any) -> Any:
        return tf.matmul(tf.nn.relu(tf.matmul(x, self.w1) + self.b1), self.w2) + self.b2

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="pixels")])
    def __call__(self, x: Any) -> Any:
        return {"probabilities": tf.nn.softmax(self.logits(x))}


def _train(x: np.ndarray, y: np.ndarray) -> DigitsNet:
    """Full-batch gradient descent in plain TF (no Keras: its backend may be torch in this session)."""
    net = DigitsNet()
    variables = [net.w1, net.b1, net.w2, net.b2]
    for _ in range(200):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=net.logits(x)))
        for variable, grad in zip(variables, tape.gradient(loss, variables), strict=True):
            variable.assign_sub(0.5 * grad)
    return net


async def test_tf_savedmodel_trained_here_served_like_tensorflow(tmp_path: Path, tracking_uri: str) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    net = _train(x[:1200], y[:1200].astype(np.int64))
    reg = registry.register_module(net, x[:4], "digits-tf", tracking_uri=tracking_uri)
    assert registry.register_module(net, x[:4], "digits-tf", tracking_uri=tracking_uri).created is False
    result = deploy_flow(reg.uri, name="digits-tf", repository=tmp_path / "repo", work_dir=tmp_path / "work",
                         target="onnxruntime", max_batch_size=16, tracking_uri=tracking_uri, profile=False)  # fmt: skip
    assert result.export.input_names == ("pixels",) and result.export.output_names == ("probabilities",)
    assert result.export.max_abs_diff <= 1e-4
    assert registry.get_lineage(reg.uri, tracking_uri)["shipyard.export.flavor"] == "tensorflow"

    probe = x[1200:1216]
    got = await served_in_process(tmp_path / "repo", "digits-tf", {"pixels": probe})
    want = net(tf.constant(probe))["probabilities"].numpy()
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-4)
    assert (got["probabilities"].argmax(1) == y[1200:1216]).mean() > 0.8  # it learned something


class WithUnsupportedOp(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x: Any) -> Any:
        # complex numbers and FFT have no tf2onnx handler
        return {"y": tf.math.real(tf.signal.fft(tf.complex(x, x)))}


def test_an_op_without_onnx_translation_is_named_with_the_fallback(tmp_path: Path, tracking_uri: str) -> None:
    example = np.ones((2, 4), np.float32)
    reg = registry.register_module(WithUnsupportedOp(), example, "fft-tf", tracking_uri=tracking_uri)
    with pytest.raises(ExportError, match=r"tensorflow model: TF op Complex cannot be converted to ONNX.*fallback"):
        deploy_flow(reg.uri, name="fft-tf", repository=tmp_path / "repo", work_dir=tmp_path / "work",
                    target="onnxruntime", max_batch_size=4, tracking_uri=tracking_uri, profile=False)  # fmt: skip


async def test_savedmodel_folder_registered_by_the_cli_is_served_like_tensorflow(
    tmp_path: Path, tracking_uri: str
) -> None:
    """A SavedModel folder as teams have them on disk (tf.saved_model.save): `shipyard register FOLDER` logs it with
    its own serving_default signature; registering the same folder again finds the same version."""
    import subprocess
    import sys

    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    net = DigitsNet()
    folder = tmp_path / "saved_model"
    tf.saved_model.save(net, str(folder), signatures={"serving_default": net.__call__})
    example = tmp_path / "example.npy"
    np.save(example, x[:2])
    command = [sys.executable, "-m", "shipyard", "register", str(folder), "--name", "digits-savedmodel",
               "--input-example", str(example), "--tracking-uri", tracking_uri]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    versions = registry.get_client(tracking_uri).search_model_versions("name='digits-savedmodel'")
    assert [str(v.version) for v in versions] == ["1"]  # the same folder again: the same version
    result = deploy_flow("models:/digits-savedmodel/1", name="digits-savedmodel", repository=tmp_path / "repo",
                         work_dir=tmp_path / "work", target="onnxruntime", max_batch_size=16,
                         tracking_uri=tracking_uri, profile=False)  # fmt: skip
    assert result.export.input_names == ("pixels",) and result.export.max_abs_diff <= 1e-4
    got = await served_in_process(tmp_path / "repo", "digits-savedmodel", {"pixels": x})
    np.testing.assert_allclose(got["probabilities"], net(tf.constant(x))["probabilities"].numpy(), atol=1e-4)


def test_a_folder_without_serving_default_is_one_clear_error(tmp_path: Path, tracking_uri: str) -> None:
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "bare"))
    from shipyard.registry.errors import RegistryError

    with pytest.raises(RegistryError, match=r"has no 'serving_default' signature: save it with tf.saved_model.save"):
        registry.register_file(tmp_path / "bare", "bare", input_example=np.ones((1, 4)), tracking_uri=tracking_uri)

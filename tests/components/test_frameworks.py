"""Issue 17: every flavor a team trains in, built or trained here, registered in MLflow, exported to ONNX, run
through the deploy pipeline (optimize -> validate -> publish) and served by the runtime with the framework's
own answers (<= 1e-4 FP32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import served_in_process

from shipyard import registry
from shipyard.components.errors import ExportError
from shipyard.components.flow import deploy_flow


def _deploy(tmp_path: Path, uri: str, name: str, tracking_uri: str) -> Any:
    return deploy_flow(uri, name=name, repository=tmp_path / "repo", work_dir=tmp_path / "work",
                       target="onnxruntime", max_batch_size=16, tracking_uri=tracking_uri, profile=False)  # fmt: skip


@pytest.mark.slow
async def test_sklearn_pipeline_on_digits_served_like_sklearn(tmp_path: Path, tracking_uri: str) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x[:1200], y[:1200])
    reg = registry.register_module(model, x[:4], "digits-sklearn", tracking_uri=tracking_uri)
    assert registry.register_module(model, x[:4], "digits-sklearn", tracking_uri=tracking_uri).created is False
    result = _deploy(tmp_path, reg.uri, "digits-sklearn", tracking_uri)
    assert result.export.output_names == ("label", "probabilities")
    assert result.export.max_abs_diff <= 1e-4
    assert registry.get_lineage(reg.uri, tracking_uri)["shipyard.export.flavor"] == "sklearn"

    got = await served_in_process(tmp_path / "repo", "digits-sklearn", {"input": x[1200:1216]})
    np.testing.assert_array_equal(got["label"], model.predict(x[1200:1216]))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x[1200:1216]), atol=1e-4)


@pytest.mark.slow
async def test_keras3_model_trained_here_served_like_keras(tmp_path: Path, tracking_uri: str) -> None:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1200], y[:1200], epochs=10, batch_size=32, verbose=0)
    reg = registry.register_module(model, x[:4], "digits-keras", tracking_uri=tracking_uri)
    result = _deploy(tmp_path, reg.uri, "digits-keras", tracking_uri)
    assert result.export.input_names == ("input",) and result.export.output_names == ("output",)
    assert result.export.max_abs_diff <= 1e-4

    probe = x[1200:1216]
    got = await served_in_process(tmp_path / "repo", "digits-keras", {"input": probe})
    want = keras.ops.convert_to_numpy(model(probe))
    np.testing.assert_allclose(got["output"], want, atol=1e-4)
    assert (got["output"].argmax(1) == y[1200:1216]).mean() > 0.8  # it learned something


def _tiny_text_classifier() -> dict[str, Any]:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "the", "movie", "is", "good", "bad", "great", "awful", "plot", "not"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    return {"model": transformers.BertForSequenceClassification(config).eval(), "tokenizer": tokenizer,
            "task": "text-classification"}  # fmt: skip


@pytest.mark.slow
async def test_tiny_transformers_classifier_dynamic_batch_and_sequence(tmp_path: Path, tracking_uri: str) -> None:
    import torch

    parts = _tiny_text_classifier()
    texts = ["the movie is good", "awful plot", "not great", "the plot is not bad"]
    reg = registry.register_module(parts, texts, "text-clf", tracking_uri=tracking_uri)
    result = _deploy(tmp_path, reg.uri, "text-clf", tracking_uri)
    assert result.export.output_names == ("logits",) and "input_ids" in result.export.input_names
    assert result.export.max_abs_diff <= 1e-4

    # a batch and a sequence length the export never saw
    enc = parts["tokenizer"](["good", "the movie is not good and the plot is awful", "bad"], padding=True,
                             return_tensors="np")  # fmt: skip
    feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in result.export.input_names}
    got = await served_in_process(tmp_path / "repo", "text-clf", feeds)
    with torch.no_grad():
        want = parts["model"](**{n: torch.from_numpy(a) for n, a in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(got["logits"], want, atol=1e-4)


@pytest.mark.slow
async def test_onnx_flavor_passes_through_checked(tmp_path: Path, tracking_uri: str, digits_onnx: Path) -> None:
    import onnx
    import onnxruntime as ort

    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    reg = registry.register_module(onnx.load(str(digits_onnx)), x, "digits-onnx", tracking_uri=tracking_uri)
    result = _deploy(tmp_path, reg.uri, "digits-onnx", tracking_uri)
    assert result.export.exporter.startswith("onnx")
    got = await served_in_process(tmp_path / "repo", "digits-onnx", {"input": x})
    want = ort.InferenceSession(str(digits_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got["logits"], want, atol=1e-5)


def test_unsupported_estimator_names_it_and_the_fallback(tmp_path: Path, tracking_uri: str) -> None:
    from sklearn.semi_supervised import LabelSpreading

    from shipyard.components.export import export_registered

    x = np.random.default_rng(0).random((8, 3), dtype=np.float32)
    model = LabelSpreading().fit(x, np.array([0, 1, 1, 1, 0, 1, 1, 1]))
    reg = registry.register_module(model, x[:2], "spreading", tracking_uri=tracking_uri)
    with pytest.raises(ExportError, match=r"LabelSpreading cannot be converted to ONNX.*fallback: serve the MLflow"):
        export_registered(reg.uri, tmp_path / "m.onnx", tracking_uri=tracking_uri)


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from shipyard.components.export.frameworks import require

    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # what an environment without the extra sees
    with pytest.raises(ExportError, match=r"the sklearn flavor needs skl2onnx.*pip install 'shipyard\[sklearn\]'"):
        require("sklearn")

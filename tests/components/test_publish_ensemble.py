"""publish_with_processing: a model with its Python pre/post-processing and the ensemble joining
them, in a real repository directory (the example's processing models; a tiny ONNX model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shipyard.components.errors import PublishError
from shipyard.components.publish.ensemble import publish_with_processing
from shipyard.serving_runtime.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_ensemble" / "models"


def _cnn_like_onnx(path: Path) -> Path:
    """input [N,1,8,8] -> logits [N,10] (a Flatten and a MatMul), like the digits CNN's signature."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.ones((64, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "cnn_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, path)
    return path


def test_publishes_the_model_its_processing_and_the_ensemble(tmp_path: Path) -> None:
    onnx = _cnn_like_onnx(tmp_path / "cnn.onnx")
    repo = tmp_path / "repo"
    kwargs = {"preprocess": EXAMPLE / "preprocess", "postprocess": EXAMPLE / "postprocess", "max_batch_size": 8}
    first = publish_with_processing(onnx, repo, "cnn", **kwargs)
    assert (first.model.version, first.preprocess.version, first.ensemble.version) == (1, 1, 1)
    assert (repo / "preprocess" / "1" / "model.py").read_text() == (
        EXAMPLE / "preprocess" / "1" / "model.py"
    ).read_text()
    ensemble = load_config(repo / "cnn_pipeline" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [t.name for t in ensemble.input] == ["IMAGE"]
    assert [t.name for t in ensemble.output] == ["LABELS", "SCORES"]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocess", "cnn", "postprocess"]
    assert dict(steps[1].input_map) == {"input": "preprocess_PIXELS"}
    assert dict(steps[2].input_map) == {"LOGITS": "cnn_logits"}
    assert all(s.model_version == -1 for s in steps)
    second = publish_with_processing(onnx, repo, "cnn", **kwargs)  # a new version of each, atomically
    assert (second.model.version, second.postprocess.version, second.ensemble.version) == (2, 2, 2)


def test_refuses_what_cannot_be_joined(tmp_path: Path) -> None:
    onnx = _cnn_like_onnx(tmp_path / "cnn.onnx")
    repo = tmp_path / "repo"
    with pytest.raises(PublishError, match=r"no config\.pbtxt"):
        publish_with_processing(onnx, repo, "cnn", preprocess=tmp_path, postprocess=EXAMPLE / "postprocess")
    assert not repo.exists()  # nothing written
    with pytest.raises(PublishError, match=r"step 1 \(model 'cnn'\) input 'input' has dims \[-1, 1, 8, 8\]"):
        # no max_batch_size: the model's config lists the batch dim, the preprocessing's does not
        publish_with_processing(
            onnx, repo, "cnn", preprocess=EXAMPLE / "preprocess", postprocess=EXAMPLE / "postprocess"
        )
    two_inputs = tmp_path / "post2"
    shutil.copytree(EXAMPLE / "postprocess", two_inputs)
    config = (
        (two_inputs / "config.pbtxt")
        .read_text()
        .replace(
            'input [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]',
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 10 ] },\n'
            '        { name: "B" data_type: TYPE_FP32 dims: [ 10 ] } ]',
        )
    )
    (two_inputs / "config.pbtxt").write_text(config)
    with pytest.raises(PublishError, match=r"cannot connect model 'cnn' \(outputs logits\) to model 'postprocess'"):
        publish_with_processing(
            onnx, repo, "cnn", preprocess=EXAMPLE / "preprocess", postprocess=two_inputs, max_batch_size=8
        )
    wrong_dims = tmp_path / "post3"
    shutil.copytree(EXAMPLE / "postprocess", wrong_dims)
    text = (
        (wrong_dims / "config.pbtxt")
        .read_text()
        .replace('name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ]', 'name: "LOGITS" data_type: TYPE_FP32 dims: [ 12 ]')
    )
    (wrong_dims / "config.pbtxt").write_text(text)
    with pytest.raises(PublishError, match=r"step 2 \(model 'postprocess'\) input 'LOGITS' has dims \[12\]"):
        publish_with_processing(
            onnx, repo, "cnn", preprocess=EXAMPLE / "preprocess", postprocess=wrong_dims, max_batch_size=8
        )
    assert not (repo / "postprocess").exists() and not (repo / "cnn_pipeline").exists()

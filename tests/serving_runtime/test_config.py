"""Config completion (as Triton's autocomplete) and validation against real ONNX files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_builders import add_model, scale_model, write_config

from shipyard.serving_runtime.backends.registry import get_backend
from shipyard.serving_runtime.config import (
    DEFAULT_MAX_BATCH_SIZE,
    config_from_json,
    config_to_dict,
    load_config,
    new_config,
    render_config,
)
from shipyard.serving_runtime.config_model import complete_config
from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.repository import ModelDefinition, prepare_model, scan_repositories


def _prepare(repo: Path, name: str = "m", gpu_count: int = 0) -> ModelDefinition:
    return prepare_model(scan_repositories([repo]).models[name], gpu_count=gpu_count)


def test_missing_config_is_completed_from_the_onnx_file(tmp_path: Path) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx", width=3)
    config = _prepare(tmp_path).config
    assert config.name == "m"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    # Every tensor has a dynamic first dim: the model batches, with Triton's default size.
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 4
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("A", 9, [3]), ("B", 9, [3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("SUM", [3])]
    assert [(g.kind, g.count) for g in config.instance_group] == [(2, 1)]  # KIND_CPU, one instance


def test_completion_puts_instances_on_every_gpu_when_there_are_gpus(tmp_path: Path) -> None:
    path = scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    signature = get_backend("onnxruntime").inspect(path)
    config = complete_config(new_config(), name="m", backend_name="onnxruntime", signature=signature, gpu_count=2)
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(1, [0, 1])]  # KIND_GPU
    # A backend that cannot use the GPUs (onnxruntime without its CUDA provider) stays on CPU.
    config = complete_config(
        new_config(), name="m", backend_name="onnxruntime", signature=signature, gpu_count=2, supports_gpu=False
    )
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(2, [])]  # KIND_CPU


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="CUDA EP present"
)
def test_kind_auto_stays_on_cpu_when_onnxruntime_has_no_cuda_provider(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    config = _prepare(tmp_path, gpu_count=1).config
    assert [g.kind for g in config.instance_group] == [2]  # KIND_CPU


def test_unbatched_model_keeps_full_dims_and_no_batching(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0, batched=False)
    config = _prepare(tmp_path).config
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4]


def test_full_rank_dims_with_max_batch_size_zero_mean_no_batching(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    write_config(tmp_path / "m", 'input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]')
    config = _prepare(tmp_path).config
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 4]
    assert [(t.name, list(t.dims)) for t in config.output] == [("OUT", [-1, 4])]


def test_partial_config_keeps_what_it_sets(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    write_config(
        tmp_path / "m",
        'max_batch_size: 16\nparameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
    )
    config = _prepare(tmp_path).config
    assert config.max_batch_size == 16
    assert not config.HasField("dynamic_batching")  # only added when max_batch_size was completed
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.instance_group[0].count == 2
    assert [t.name for t in config.input] == ["IN"] and list(config.input[0].dims) == [4]


def test_broken_config_error_names_file_and_line(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    path = write_config(tmp_path / "m", 'name: "m"\nmax_batch_size: 8\ninput [ { name: "IN" data_typo: TYPE_FP32 } ]\n')
    with pytest.raises(ModelConfigError) as info:
        _prepare(tmp_path)
    assert str(info.value).startswith(f"{path}:3:")
    assert "data_typo" in str(info.value)


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        (
            'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_INT32 dims: [ 4 ] } ]',
            r"input 'IN' has data_type TYPE_INT32 but .*model.onnx declares FP32",
        ),
        (
            'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 5 ] } ]',
            r"input 'IN' dims \[5\] do not match .*model.onnx, which declares \[4\]",
        ),
        (
            'max_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            r"input 'INPUT0' is not an input of .*model.onnx; the model's inputs are: IN \(FP32 \[-1,4\]\)",
        ),
        (
            'max_batch_size: 8\noutput [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]',
            r"output 'OUT' dims \[2,3\] do not match",
        ),
        ('platform: "tensorflow_savedmodel"', r"platform 'tensorflow_savedmodel' is not supported; supported"),
        ('backend: "tensorflow"', r"backend 'tensorflow' is not supported"),
        ('platform: "onnxruntime_onnx"\nbackend: "pytorch"', r"disagree"),
        ("max_batch_size: -2", r"max_batch_size must be >= 0"),
        (
            'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 5 ] reshape: { shape: [ 4 ] } } ]',
            r"dims \[5\] \(5 elements\) cannot be reshaped to \[4\] \(4 elements\)",
        ),
        (
            'max_batch_size: 8\nmodel_warmup [ { name: "w" batch_size: 1 inputs { key: "NOPE" '
            "value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]",
            r"model_warmup 'w' input 'NOPE' is not a model input",
        ),
    ],
)
def test_config_errors_name_the_file_and_the_problem(tmp_path: Path, config_text: str, expected: str) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    path = write_config(tmp_path / "m", config_text)
    with pytest.raises(ModelConfigError, match=expected) as info:
        _prepare(tmp_path)
    assert str(path) in str(info.value)


def test_model_without_dynamic_batch_dim_cannot_batch(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0, batched=False)
    write_config(tmp_path / "m", 'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ ] } ]')
    with pytest.raises(ModelConfigError, match="needs a dynamic first dimension"):
        _prepare(tmp_path)


def test_reshape_is_accepted_when_the_element_counts_agree(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    write_config(
        tmp_path / "m",
        'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]',
    )
    config = _prepare(tmp_path).config
    assert list(config.input[0].dims) == [2, 2] and list(config.input[0].reshape.shape) == [4]


def test_config_dict_matches_tritons_json(tmp_path: Path) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx", width=3)
    data = config_to_dict(_prepare(tmp_path).config)
    assert data["name"] == "m" and data["max_batch_size"] == 4
    assert data["input"][0]["dims"] == [3]  # type: ignore[index]
    assert data["input"][0]["data_type"] == "TYPE_INT64"  # type: ignore[index]
    assert data["instance_group"][0]["kind"] == "KIND_CPU"  # type: ignore[index]
    json.dumps(data)


def test_config_json_round_trip_and_errors() -> None:
    config = config_from_json(json.dumps({"name": "m", "max_batch_size": 2, "input": [{"name": "X", "dims": ["3"]}]}))
    assert config.max_batch_size == 2 and list(config.input[0].dims) == [3]
    with pytest.raises(ModelConfigError, match="load request: invalid model config JSON"):
        config_from_json('{"max_batch_size": "many"}', source="load request")


def test_load_config_and_render_round_trip(tmp_path: Path) -> None:
    scale_model(tmp_path / "m" / "1" / "model.onnx", 2.0)
    config = _prepare(tmp_path).config
    path = write_config(tmp_path / "copy", render_config(config))
    assert load_config(path) == config

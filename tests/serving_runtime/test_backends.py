"""Backends on real files: ONNX Runtime and TorchScript on CPU here; TensorRT on a GPU machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from repo_builders import add_model, scale_model

from shipyard.serving_runtime.backends.base import Device, InstanceSettings, TensorSpec
from shipyard.serving_runtime.backends.registry import get_backend, resolve_backend_name
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError
from shipyard.serving_runtime.model import placements

CPU = InstanceSettings(device=Device("cpu"))
# torch 2.13 deprecates TorchScript; Triton's pytorch backend serves exactly that format.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# ------------------------------------------------------------------ registry


def test_backend_is_picked_by_backend_then_platform_then_file() -> None:
    assert resolve_backend_name("", "pytorch") == "pytorch"
    assert resolve_backend_name("tensorrt_plan", "") == "tensorrt"
    assert resolve_backend_name("", "", "resnet.onnx") == "onnxruntime"
    assert resolve_backend_name("", "", "", files=["model.pt", "notes.txt"]) == "pytorch"
    with pytest.raises(ModelConfigError, match="several model files"):
        resolve_backend_name("", "", "", files=["model.pt", "model.onnx"])
    with pytest.raises(ModelConfigError, match="no model file found"):
        resolve_backend_name("", "", "", files=["notes.txt"])
    with pytest.raises(ModelConfigError, match=r"cannot tell the backend from default_model_filename 'x\.bin'"):
        resolve_backend_name("", "", "x.bin")


def test_backends_are_imported_lazily_and_shared() -> None:
    assert get_backend("onnxruntime") is get_backend("onnxruntime")
    assert get_backend("onnxruntime").platform == "onnxruntime_onnx"
    with pytest.raises(ModelConfigError, match="backend 'tensorflow' is not supported"):
        get_backend("tensorflow")


# ------------------------------------------------------------------ ONNX Runtime


def test_onnx_inspect_reports_names_types_and_dynamic_dims(tmp_path: Path) -> None:
    signature = get_backend("onnxruntime").inspect(add_model(tmp_path / "m.onnx", width=3))
    assert signature.inputs == (TensorSpec("A", "INT64", (-1, 3)), TensorSpec("B", "INT64", (-1, 3)))
    assert signature.outputs == (TensorSpec("SUM", "INT64", (-1, 3)),)
    assert signature.batched


def test_onnx_instance_executes_a_batch_on_cpu(tmp_path: Path) -> None:
    instance = get_backend("onnxruntime").load(add_model(tmp_path / "m.onnx", width=3), CPU)
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    out = instance.execute({"A": a, "B": a * 10}, ())
    np.testing.assert_array_equal(out["SUM"], a * 11)
    assert list(out) == ["SUM"]
    instance.close()


def test_onnx_thread_parameters_reach_the_session(tmp_path: Path) -> None:
    path = scale_model(tmp_path / "m.onnx", 2.0)
    backend = get_backend("onnxruntime")
    default = backend.load(path, CPU)
    # Not set: ONNX Runtime's own default (0 = one thread per core), not a forced 1.
    assert default.session.get_session_options().intra_op_num_threads == 0  # type: ignore[attr-defined]
    params = {"intra_op_thread_count": "1", "inter_op_thread_count": "2", "execution_mode": "1"}
    tuned = backend.load(path, InstanceSettings(device=Device("cpu"), parameters=params))
    options = tuned.session.get_session_options()  # type: ignore[attr-defined]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert "PARALLEL" in str(options.execution_mode)
    np.testing.assert_allclose(tuned.execute({"IN": np.ones((1, 4), np.float32)}, ("OUT",))["OUT"], 2.0)


def test_onnx_bad_parameter_value_names_the_parameter(tmp_path: Path) -> None:
    path = scale_model(tmp_path / "m.onnx", 2.0)
    settings = InstanceSettings(device=Device("cpu"), parameters={"intra_op_thread_count": "lots"})
    with pytest.raises(ModelConfigError, match="'intra_op_thread_count' must be an integer, got 'lots'"):
        get_backend("onnxruntime").load(path, settings)


def test_onnx_broken_file_is_a_load_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not an onnx protobuf")
    with pytest.raises(ModelLoadError, match=r"model\.onnx: not a loadable ONNX model"):
        get_backend("onnxruntime").inspect(path)
    with pytest.raises(ModelLoadError, match=r"model\.onnx: ONNX Runtime cannot load the model"):
        get_backend("onnxruntime").load(path, CPU)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="CUDA EP present"
)
def test_onnx_gpu_instance_without_cuda_provider_says_what_to_install(tmp_path: Path) -> None:
    path = scale_model(tmp_path / "m.onnx", 2.0)
    with pytest.raises(ModelLoadError, match=r"CUDAExecutionProvider.*onnxruntime-gpu.*KIND_CPU"):
        get_backend("onnxruntime").load(path, InstanceSettings(device=Device("gpu", 0)))


# ------------------------------------------------------------------ instance placement


def _groups(text: str):  # type: ignore[no-untyped-def]
    return parse_config_text(text)


def test_kind_gpu_without_a_gpu_is_a_clear_load_error() -> None:
    config = _groups("instance_group [ { name: 'g' kind: KIND_GPU count: 1 } ]")
    with pytest.raises(ModelLoadError, match=r"'g' is KIND_GPU but no CUDA GPU is visible.*KIND_CPU"):
        placements(config, gpu_count=0, source="config.pbtxt")


def test_placements_count_instances_per_gpu() -> None:
    config = _groups("instance_group [ { kind: KIND_GPU count: 2 gpus: [0, 1] }, { kind: KIND_CPU count: 1 } ]")
    devices = placements(config, gpu_count=2, source="config.pbtxt")
    assert [str(d) for d in devices] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cpu"]
    with pytest.raises(ModelLoadError, match=r"GPU\(s\) \[3\] but only 2"):
        placements(_groups("instance_group [ { kind: KIND_GPU gpus: [3] } ]"), gpu_count=2, source="c")


# ------------------------------------------------------------------ PyTorch (TorchScript)


def _torchscript(path: Path) -> Path:
    import torch

    class AddMul(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + y, x * y

    torch.jit.save(torch.jit.script(AddMul()), str(path))
    return path


def test_torchscript_inputs_map_by_index_suffix(tmp_path: Path) -> None:
    path = _torchscript(tmp_path / "model.pt")
    backend = get_backend("pytorch")
    assert backend.inspect(path).inputs == ()  # TorchScript declares no tensor types
    settings = InstanceSettings(
        device=Device("cpu"),
        inputs=(TensorSpec("INPUT__1", "FP32", (2,)), TensorSpec("INPUT__0", "FP32", (2,))),
        outputs=(TensorSpec("OUTPUT__1", "FP32", (2,)), TensorSpec("OUTPUT__0", "FP32", (2,))),
    )
    instance = backend.load(path, settings)
    x, y = np.array([[1.0, 2.0]], np.float32), np.array([[10.0, 20.0]], np.float32)
    out = instance.execute({"INPUT__0": x, "INPUT__1": y}, ())
    np.testing.assert_allclose(out["OUTPUT__0"], x + y)
    np.testing.assert_allclose(out["OUTPUT__1"], x * y)
    assert list(instance.execute({"INPUT__0": x, "INPUT__1": y}, ("OUTPUT__1",))) == ["OUTPUT__1"]
    instance.close()


def test_torchscript_inputs_map_by_forward_argument_names(tmp_path: Path) -> None:
    path = _torchscript(tmp_path / "model.pt")
    settings = InstanceSettings(
        device=Device("cpu"),
        inputs=(TensorSpec("y", "FP32", (2,)), TensorSpec("x", "FP32", (2,))),
        outputs=(TensorSpec("SUM", "FP32", (2,)), TensorSpec("PRODUCT", "FP32", (2,))),
    )
    instance = get_backend("pytorch").load(path, settings)
    x, y = np.array([[3.0, 4.0]], np.float32), np.array([[1.0, 1.0]], np.float32)
    out = instance.execute({"x": x, "y": y}, ())
    np.testing.assert_allclose(out["SUM"], x + y)
    np.testing.assert_allclose(out["PRODUCT"], x * y)


def test_torchscript_broken_file_and_missing_cuda_errors(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="not a TorchScript file"):
        get_backend("pytorch").inspect(bad)
    if not torch.cuda.is_available():
        path = _torchscript(tmp_path / "ok.pt")
        with pytest.raises(ModelLoadError, match=r"sees no CUDA device.*KIND_CPU"):
            get_backend("pytorch").load(path, InstanceSettings(device=Device("gpu", 0)))


# ------------------------------------------------------------------ TensorRT

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the no-TensorRT error cannot be shown here")
def test_tensorrt_without_tensorrt_or_gpu_says_it_needs_both(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 64)
    backend = get_backend("tensorrt")
    with pytest.raises(ModelLoadError, match="needs a GPU and TensorRT"):
        backend.inspect(plan)
    with pytest.raises(ModelLoadError, match="needs a GPU and TensorRT"):
        backend.load(plan, InstanceSettings(device=Device("gpu", 0)))


def test_tensorrt_on_a_cpu_instance_says_it_needs_a_gpu(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"needs a GPU and TensorRT.*KIND_GPU"):
        get_backend("tensorrt").load(plan, CPU)


def _build_engine(onnx_path: Path, plan_path: Path) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    profile = builder.create_optimization_profile()
    profile.set_shape("IN", (1, 4), (4, 4), (8, 4))
    build_config = builder.create_builder_config()
    build_config.add_optimization_profile(profile)
    plan_path.write_bytes(bytes(builder.build_serialized_network(network, build_config)))
    return plan_path


@pytest.mark.gpu
def test_tensorrt_engine_runs_on_gpu(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install shipyard[gpu])")
    plan = _build_engine(scale_model(tmp_path / "m.onnx", 3.0), tmp_path / "model.plan")
    backend = get_backend("tensorrt")
    signature = backend.inspect(plan)
    assert signature.inputs == (TensorSpec("IN", "FP32", (-1, 4)),) and signature.batched
    instance = backend.load(plan, InstanceSettings(device=Device("gpu", 0)))
    for batch in (1, 8, 3):  # buffers grow and are reused
        x = np.random.default_rng(batch).random((batch, 4), dtype=np.float32)
        np.testing.assert_allclose(instance.execute({"IN": x}, ())["OUT"], x * 3.0, rtol=1e-5)
    with pytest.raises(ValueError, match="optimization profile"):
        instance.execute({"IN": np.zeros((9, 4), np.float32)}, ())
    instance.close()


@pytest.mark.gpu
def test_tensorrt_rejects_a_corrupt_engine_naming_versions(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install shipyard[gpu])")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 4096)
    with pytest.raises(ModelLoadError, match="cannot deserialize this engine"):
        get_backend("tensorrt").inspect(plan)


# ------------------------------------------------------------------ CUDA paths (GPU machines)


@pytest.mark.gpu
def test_onnxruntime_cuda_instance_matches_cpu(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    path = scale_model(tmp_path / "m.onnx", 2.5)
    instance = get_backend("onnxruntime").load(path, InstanceSettings(device=Device("gpu", 0)))
    assert instance.providers[0] == "CUDAExecutionProvider"  # type: ignore[attr-defined]
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    np.testing.assert_allclose(instance.execute({"IN": x}, ())["OUT"], x * 2.5, rtol=1e-6)


@pytest.mark.gpu
def test_torchscript_on_cuda(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} is a CPU build or sees no GPU")
    path = _torchscript(tmp_path / "model.pt")
    settings = InstanceSettings(
        device=Device("gpu", 0),
        inputs=(TensorSpec("INPUT__0", "FP32", (2,)), TensorSpec("INPUT__1", "FP32", (2,))),
        outputs=(TensorSpec("OUTPUT__0", "FP32", (2,)), TensorSpec("OUTPUT__1", "FP32", (2,))),
    )
    instance = get_backend("pytorch").load(path, settings)
    x = np.ones((2, 2), np.float32)
    out = instance.execute({"INPUT__0": x, "INPUT__1": x}, ())
    np.testing.assert_allclose(out["OUTPUT__0"], 2 * x)
    instance.close()

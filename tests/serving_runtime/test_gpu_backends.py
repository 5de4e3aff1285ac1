"""Every GPU backend against the CPU answer, on a real GPU (marked ``gpu``; skipped elsewhere with
the reason printed). ONNX Runtime CUDA (I/O binding) and TensorRT EP, TensorRT engines (profile
selection, buffer growth, CUDA graphs, concurrent instances on their own streams, version and
compute-capability mismatch errors), PyTorch on CUDA (streams, half precision), and a model
served by ModelManager on KIND_GPU instances.

NOTE: written in a session without a GPU; none of these has run yet. A GPU session runs
``.venv/bin/python -m pytest -m gpu tests/serving_runtime -q`` (see docs/gpu.md).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from repo_builders import scale_model, write_config

from shipyard.serving_runtime.backends.base import Device, InstanceSettings, TensorSpec
from shipyard.serving_runtime.backends.registry import get_backend
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import ModelLoadError

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]

GPU0 = InstanceSettings(device=Device("gpu", 0))


def _close_enough(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    """GPU math (TF32, FP16, other kernels) differs from CPU: compare relative to the output's scale."""
    scale = float(np.max(np.abs(expected))) or 1.0
    worst = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert worst <= rel * scale + 1e-5, f"max abs diff {worst} > {rel} x {scale}"


def _ort_gpu() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")


def _need_tensorrt() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install shipyard[gpu])")


# ------------------------------------------------------------------ ONNX Runtime on GPU


def test_onnxruntime_cuda_matches_cpu_through_io_binding() -> None:
    _ort_gpu()
    from shipyard.zoo import onnx_model

    path = Path(onnx_model("wide_mlp"))
    backend = get_backend("onnxruntime")
    cpu = backend.load(path, InstanceSettings(device=Device("cpu")))
    gpu = backend.load(path, GPU0)
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.uses_io_binding  # type: ignore[attr-defined]
    for batch in (1, 64, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 512), dtype=np.float32)
        _close_enough(gpu.execute({"input": x}, ())["output"], cpu.execute({"input": x}, ())["output"], 1e-2)
    gpu.close()


def test_onnxruntime_tensorrt_accelerator_fp16_matches_cpu(tmp_path: Path) -> None:
    _ort_gpu()
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no TensorrtExecutionProvider (onnxruntime-gpu with TensorRT libraries)")
    from shipyard.zoo import onnx_model

    path = Path(onnx_model("wide_mlp"))
    optimization = parse_config_text(
        'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } '
        f'parameters {{ key: "trt_engine_cache_path" value: "{tmp_path}" }} '
        'parameters { key: "trt_engine_cache_enable" value: "1" } } ] } }'
    ).optimization
    backend = get_backend("onnxruntime")
    trt = backend.load(path, InstanceSettings(device=Device("gpu", 0), optimization=optimization))
    assert trt.providers[0] == "TensorrtExecutionProvider"  # type: ignore[attr-defined]
    cpu = backend.load(path, InstanceSettings(device=Device("cpu")))
    x = np.random.default_rng(0).standard_normal((8, 512), dtype=np.float32)
    _close_enough(trt.execute({"input": x}, ())["output"], cpu.execute({"input": x}, ())["output"], 5e-2)


# ------------------------------------------------------------------ TensorRT engines


def _two_profile_engine(tmp_path: Path) -> Path:
    """``OUT = IN * 3`` with profiles [1..8] (opt 4) and [1..64] (opt 32)."""
    import tensorrt as trt

    onnx_path = scale_model(tmp_path / "m.onnx", 3.0)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    for low, opt, high in ((1, 4, 8), (1, 32, 64)):
        profile = builder.create_optimization_profile()
        profile.set_shape("IN", (low, 4), (opt, 4), (high, 4))
        config.add_optimization_profile(profile)
    plan = tmp_path / "model.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))
    return plan


def test_tensorrt_picks_the_profile_that_covers_the_batch_and_grows_buffers(tmp_path: Path) -> None:
    _need_tensorrt()
    instance = get_backend("tensorrt").load(_two_profile_engine(tmp_path), GPU0)
    assert len(instance.profiles) == 2
    for batch, profile in ((3, 0), (50, 1), (3, 1), (64, 1), (1, 1)):  # stays on 1 while it covers
        x = np.random.default_rng(batch).random((batch, 4), dtype=np.float32)
        np.testing.assert_allclose(instance.execute({"IN": x}, ())["OUT"], x * 3.0, rtol=1e-6)
        assert instance.active_profile == profile, (batch, instance.active_profile)
    with pytest.raises(ValueError, match="optimization profile"):
        instance.execute({"IN": np.zeros((65, 4), np.float32)}, ())
    instance.close()


def test_tensorrt_cuda_graphs_for_listed_batch_sizes(tmp_path: Path) -> None:
    _need_tensorrt()
    optimization = parse_config_text(
        "optimization { cuda { graphs: true graph_spec [ { batch_size: 4 }, { batch_size: 16 } ] } }"
    ).optimization
    settings = InstanceSettings(device=Device("gpu", 0), optimization=optimization)
    instance = get_backend("tensorrt").load(_two_profile_engine(tmp_path), settings)
    # 4 and 2 run on profile 0, 16 switches to profile 1 (and later batches stay there while it covers).
    for step, batch in enumerate((4, 4, 2, 16, 16, 2)):
        x = np.random.default_rng(step).random((batch, 4), dtype=np.float32)
        np.testing.assert_allclose(instance.execute({"IN": x}, ())["OUT"], x * 3.0, rtol=1e-6)
    assert instance.graph_count == 2  # (profile 0, batch 4) and (profile 1, batch 16), each captured once
    instance.close()


def test_tensorrt_instances_run_concurrently_on_their_own_streams(tmp_path: Path) -> None:
    _need_tensorrt()
    plan = _two_profile_engine(tmp_path)
    instances = [get_backend("tensorrt").load(plan, GPU0) for _ in range(2)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        rng = np.random.default_rng(index)
        try:
            for _ in range(200):
                x = rng.random((int(rng.integers(1, 65)), 4), dtype=np.float32)
                np.testing.assert_allclose(instances[index].execute({"IN": x}, ())["OUT"], x * 3.0, rtol=1e-6)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert instances[0]._stream.handle != instances[1]._stream.handle
    for instance in instances:
        instance.close()


def test_tensorrt_version_and_compute_capability_mismatch_fail_before_deserializing(tmp_path: Path) -> None:
    _need_tensorrt()
    import tensorrt as trt

    from shipyard.components.optimize.tensorrt_build import build_tensorrt_engine
    from shipyard.serving_runtime.backends.tensorrt_engine import EngineRecord, read_engine_record, write_engine_record

    plan = tmp_path / "model.plan"
    build_tensorrt_engine(scale_model(tmp_path / "m.onnx", 2.0), plan, precision="fp32", max_batch_size=8)
    record = read_engine_record(plan)
    assert record is not None and record.tensorrt_version == trt.__version__ and record.compute_capability
    backend = get_backend("tensorrt")
    instance = backend.load(plan, GPU0)  # the record matches this machine
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(instance.execute({"IN": x}, ())["OUT"], x * 2.0)
    instance.close()
    write_engine_record(plan, EngineRecord("9.0.1", record.compute_capability, record.gpu))
    with pytest.raises(ModelLoadError, match=rf"built with TensorRT 9\.0\.1.*TensorRT {trt.__version__} is installed"):
        backend.load(plan, GPU0)
    write_engine_record(plan, EngineRecord(trt.__version__, (1, 0), "an imaginary GPU"))
    with pytest.raises(ModelLoadError, match=r"GPU mismatch.*compute capability 1\.0"):
        backend.inspect(plan)


def test_tensorrt_engine_built_by_optimize_is_served_on_kind_gpu_instances(tmp_path: Path) -> None:
    _need_tensorrt()
    import asyncio

    from shipyard.components.optimize.tensorrt_build import build_tensorrt_engine
    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling import InferenceRequest

    model_dir = tmp_path / "repo" / "scale_trt"
    build_tensorrt_engine(scale_model(tmp_path / "m.onnx", 2.0), model_dir / "1" / "model.plan", max_batch_size=16)
    write_config(
        model_dir,
        'platform: "tensorrt_plan"\nmax_batch_size: 16\ndynamic_batching { }\n'
        "instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] } ]\n",
    )

    async def run() -> None:
        manager = ModelManager([tmp_path / "repo"], "none")
        await manager.start()
        served = manager.get("scale_trt")
        assert len(served.instances) == 2
        xs = [np.full((1, 4), float(i), np.float32) for i in range(64)]
        outs = await asyncio.gather(*(served.infer(InferenceRequest(inputs={"IN": x}, batch_size=1)) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["OUT"], x * 2.0, rtol=1e-3)  # FP16 engine
        await manager.shutdown()

    asyncio.run(run())


# ------------------------------------------------------------------ PyTorch on GPU


def _torchscript(tmp_path: Path, name: str) -> tuple[Path, object]:
    import torch

    from shipyard.zoo import torch_model

    module = torch_model(name)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return path, module


def test_pytorch_cuda_matches_cpu_with_a_stream_per_instance_and_half_precision(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA (the CPU build); install a CUDA build of torch")
    path, _module = _torchscript(tmp_path, "resnet_cnn")
    specs = {
        "inputs": (TensorSpec("INPUT__0", "FP32", (3, 64, 64)),),
        "outputs": (TensorSpec("OUTPUT__0", "FP32", (10,)),),
    }
    backend = get_backend("pytorch")
    cpu = backend.load(path, InstanceSettings(device=Device("cpu"), **specs))  # type: ignore[arg-type]
    gpus = [backend.load(path, InstanceSettings(device=Device("gpu", 0), **specs)) for _ in range(2)]  # type: ignore[arg-type]
    half = backend.load(
        path,
        InstanceSettings(device=Device("gpu", 0), parameters={"HALF_PRECISION": "true"}, **specs),  # type: ignore[arg-type]
    )
    assert gpus[0].stream is not None and gpus[0].stream != gpus[1].stream
    x = np.random.default_rng(0).standard_normal((16, 3, 64, 64), dtype=np.float32)
    expected = cpu.execute({"INPUT__0": x}, ())["OUTPUT__0"]
    for instance in gpus:
        _close_enough(instance.execute({"INPUT__0": x}, ())["OUTPUT__0"], expected, 1e-2)
    out = half.execute({"INPUT__0": x}, ())["OUTPUT__0"]
    assert out.dtype == np.float32
    _close_enough(out, expected, 5e-2)

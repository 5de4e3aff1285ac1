"""The GPU path's decisions, tested without a GPU: provider lists, profile selection, engine
compatibility, buffer growth, CUDA graph policy, placement, half precision and torch.export on
CPU, and that the GPU modules import where CUDA is absent. (Runs everywhere; the same code on a
real GPU is in test_gpu_backends.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_builders import scale_model

from shipyard.serving_runtime.backends.base import Device, InstanceSettings, TensorSpec
from shipyard.serving_runtime.backends.cuda import ALIGNMENT, MIN_CAPACITY, grown_capacity
from shipyard.serving_runtime.backends.onnxruntime import OnnxRuntimeInstance, execution_providers
from shipyard.serving_runtime.backends.registry import get_backend, resolve_backend_name
from shipyard.serving_runtime.backends.tensorrt_engine import (
    EngineRecord,
    GraphPolicy,
    check_engine_compatible,
    graph_policy,
    parse_engine_record,
    read_engine_record,
    select_profile,
    write_engine_record,
)
from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.config_model import complete_config
from shipyard.serving_runtime.errors import ModelConfigError, ModelLoadError
from shipyard.serving_runtime.model import placements

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

CUDA_ONLY = ["CUDAExecutionProvider", "CPUExecutionProvider"]
ALL_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _optimization(text: str) -> object:
    return parse_config_text(f"optimization {{ {text} }}").optimization


# ------------------------------------------------------------------ ONNX Runtime providers


def test_cpu_instance_gets_the_cpu_provider_only() -> None:
    assert execution_providers(None, {}, "cpu", 0, ALL_GPU) == ["CPUExecutionProvider"]


def test_tensorrt_accelerator_goes_first_with_triton_keys_translated() -> None:
    optimization = _optimization(
        'execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } '
        'parameters { key: "max_workspace_size_bytes" value: "1073741824" } '
        'parameters { key: "trt_engine_cache_enable" value: "1" } '
        'parameters { key: "trt_engine_cache_path" value: "/cache" } } ] }'
    )
    providers = execution_providers(optimization, {}, "gpu", 1, ALL_GPU)
    assert providers == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": "1",
                "trt_fp16_enable": "True",
                "trt_max_workspace_size": "1073741824",
                "trt_engine_cache_enable": "True",  # ORT wants True/False; "1" would silently fall back
                "trt_engine_cache_path": "/cache",
            },
        ),
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]


def test_cuda_accelerator_and_triton_cuda_parameters_become_cuda_options() -> None:
    optimization = _optimization(
        'execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" '
        'parameters { key: "cudnn_conv_use_max_workspace" value: "0" } } ] }'
    )
    params = {"cudnn_conv_algo_search": "1", "gpu_mem_limit": "4294967296", "arena_extend_strategy": "1"}
    providers = execution_providers(optimization, params, "gpu", 0, CUDA_ONLY)
    assert providers == [
        (
            "CUDAExecutionProvider",
            {
                "device_id": "0",
                "cudnn_conv_algo_search": "HEURISTIC",
                "gpu_mem_limit": "4294967296",
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_use_max_workspace": "0",
            },
        ),
        "CPUExecutionProvider",
    ]


def test_missing_providers_say_what_to_install() -> None:
    trt = _optimization('execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] }')
    with pytest.raises(ModelLoadError, match=r"no TensorrtExecutionProvider.*remove the accelerator"):
        execution_providers(trt, {}, "gpu", 0, CUDA_ONLY)
    with pytest.raises(ModelLoadError, match=r"CUDAExecutionProvider.*onnxruntime-gpu.*KIND_CPU"):
        execution_providers(None, {}, "gpu", 0, ["CPUExecutionProvider"])
    openvino = _optimization('execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] }')
    with pytest.raises(ModelLoadError, match=r"no OpenVINOExecutionProvider.*onnxruntime-openvino"):
        execution_providers(openvino, {}, "cpu", 0, ["CPUExecutionProvider"])
    providers = execution_providers(openvino, {}, "cpu", 0, ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert providers == [("OpenVINOExecutionProvider", {}), "CPUExecutionProvider"]


def test_bad_accelerator_settings_are_config_errors() -> None:
    cases = {
        'gpu_execution_accelerator: [ { name: "rocm" } ]': "gpu_execution_accelerator 'rocm' is not supported",
        'cpu_execution_accelerator: [ { name: "dnnl" } ]': "cpu_execution_accelerator 'dnnl' is not supported",
        'gpu_execution_accelerator: [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP8" } } ]': (
            "precision_mode must be FP32, FP16 or INT8"
        ),
        'gpu_execution_accelerator: [ { name: "tensorrt" parameters { key: "speed" value: "max" } } ]': (
            "parameter 'speed' is not known"
        ),
    }
    for text, message in cases.items():
        kind = "cpu" if "cpu_execution" in text else "gpu"
        with pytest.raises(ModelConfigError, match=message):
            execution_providers(_optimization(f"execution_accelerators {{ {text} }}"), {}, kind, 0, ALL_GPU)
    with pytest.raises(ModelConfigError, match="cudnn_conv_algo_search"):
        execution_providers(None, {"cudnn_conv_algo_search": "7"}, "gpu", 0, CUDA_ONLY)


def test_io_binding_path_gives_the_plain_answers(tmp_path: Path) -> None:
    """The I/O binding code path (taken on CUDA) run with CPU binding: same results, any output subset."""
    session = get_backend("onnxruntime").load(scale_model(tmp_path / "m.onnx", 1.5), InstanceSettings(Device()))
    bound = OnnxRuntimeInstance(session.session, frozenset(), ("cpu", 0))
    assert bound.uses_io_binding and not session.uses_io_binding
    for batch in (1, 5, 2):
        x = np.random.default_rng(batch).random((batch, 4), dtype=np.float32)
        np.testing.assert_allclose(bound.execute({"IN": x}, ())["OUT"], x * 1.5, rtol=1e-6)
        np.testing.assert_allclose(bound.execute({"IN": x}, ("OUT",))["OUT"], session.execute({"IN": x}, ())["OUT"])


# ------------------------------------------------------------------ TensorRT: profiles, compatibility, graphs

PROFILES = [
    {"IN": ((1, 4), (8, 4), (16, 4))},
    {"IN": ((1, 4), (64, 4), (128, 4))},
]


def test_profile_selection_prefers_current_then_tightest() -> None:
    assert select_profile(PROFILES, {"IN": (4, 4)}) == 0
    assert select_profile(PROFILES, {"IN": (100, 4)}) == 1
    assert select_profile(PROFILES, {"IN": (4, 4)}, current=1) == 1  # no switch when the active one covers
    assert select_profile(PROFILES, {"IN": (16, 4)}, current=5) == 0  # tightest among covering
    assert select_profile([{}], {"IN": (3, 4)}) == 0  # static engine: one implicit profile


def test_profile_selection_names_shapes_and_ranges_when_none_covers() -> None:
    with pytest.raises(ValueError, match=r"IN \[129, 4\].*optimization profile.*profile 1: IN \[1, 4\]\.\.\[128, 4\]"):
        select_profile(PROFILES, {"IN": (129, 4)})
    with pytest.raises(ValueError, match="optimization profile"):
        select_profile(PROFILES, {"IN": (2, 5)})


def test_engine_record_round_trip_and_cc_from_the_gpu_description(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    assert read_engine_record(plan) is None
    record = parse_engine_record(
        {"tensorrt_version": "10.3.0", "gpu": "NVIDIA L4 (compute capability 8.9)"}, "optimize details"
    )
    assert record.compute_capability == (8, 9)
    path = write_engine_record(plan, record)
    assert path.name == "model.plan.json" and json.loads(path.read_text())["compute_capability"] == "8.9"
    assert read_engine_record(plan) == record
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"model\.plan\.json: unreadable engine record"):
        read_engine_record(plan)
    with pytest.raises(ModelLoadError, match="no 'tensorrt_version'"):
        parse_engine_record({"gpu": "x"}, "record.json")


def test_version_and_compute_capability_checks_name_both_sides() -> None:
    plan = Path("m/1/model.plan")
    built = EngineRecord("10.3.0.26", (8, 9), "NVIDIA L4")
    check_engine_compatible(built, "10.3.0.26", (8, 9), "0 (NVIDIA L4)", plan)
    check_engine_compatible(built, "10.3.0", (8, 9), "0", plan)  # build number does not matter
    with pytest.raises(ModelLoadError, match=r"TensorRT version mismatch.*built with TensorRT 10\.3\.0\.26.*10\.5\.0"):
        check_engine_compatible(built, "10.5.0", (8, 9), "0", plan)
    with pytest.raises(ModelLoadError, match=r"GPU mismatch.*compute capability 8\.9 \(NVIDIA L4\).*H100.*9\.0"):
        check_engine_compatible(built, "10.3.0", (9, 0), "0 (NVIDIA H100)", plan)
    portable = EngineRecord("10.3.0", (8, 6), hardware_compatibility_level="AMPERE_PLUS", version_compatible=True)
    check_engine_compatible(portable, "10.7.0", (9, 0), "0", plan)
    with pytest.raises(ModelLoadError, match=r"8\.0 or newer \(AMPERE_PLUS\)"):
        check_engine_compatible(portable, "10.7.0", (7, 5), "0", plan)
    with pytest.raises(ModelLoadError, match="same or a later TensorRT of the same major"):
        check_engine_compatible(portable, "10.1.0", (9, 0), "0", plan)
    check_engine_compatible(EngineRecord("10.3.0"), "10.3.0", (7, 5), "0", plan)  # no CC recorded: not checked


def test_cuda_graph_policy_from_config() -> None:
    assert graph_policy(None) == GraphPolicy()
    assert graph_policy(_optimization("cuda { graphs: true }")) == GraphPolicy(True, None)
    spec = graph_policy(_optimization("cuda { graphs: true graph_spec [ { batch_size: 1 }, { batch_size: 8 } ] }"))
    assert spec.batch_sizes == frozenset({1, 8})
    assert spec.wants(8, captured=10) and not spec.wants(4, captured=0)
    assert not GraphPolicy().wants(1, 0)
    assert GraphPolicy(True).wants(3, 0) and not GraphPolicy(True).wants(3, 64)
    with pytest.raises(ModelConfigError, match="graphs is false"):
        graph_policy(_optimization("cuda { graph_spec [ { batch_size: 1 } ] }"))


def test_buffers_grow_geometrically_never_shrink_and_stop_at_the_profile_max() -> None:
    assert grown_capacity(0, 10) == MIN_CAPACITY
    assert grown_capacity(8192, 100) == 8192  # never shrinks
    assert grown_capacity(8192, 8193) == 16384  # at least doubles
    assert grown_capacity(0, 100_000) == 131072  # next power of two
    assert grown_capacity(0, 100_000, ceiling=120_000) == 120_064  # capped at the profile max (aligned)
    assert grown_capacity(0, 200_000, ceiling=120_000) == 200_192  # a bigger need still wins
    sizes, capacity = [], 0
    for batch in range(1, 257):  # a batch growing one by one reallocates O(log n) times
        new = grown_capacity(capacity, batch * 2048)
        if new != capacity:
            sizes.append(new)
        capacity = new
    assert len(sizes) <= 10 and all(size % ALIGNMENT == 0 for size in sizes)
    with pytest.raises(ValueError):
        grown_capacity(-1, 5)


# ------------------------------------------------------------------ placement


def _config(text: str) -> object:
    return parse_config_text(text)


def test_kind_gpu_places_count_instances_on_each_listed_gpu() -> None:
    config = _config("instance_group [ { kind: KIND_GPU count: 2 gpus: [0, 1] } ]")
    devices = placements(config, gpu_count=4, source="c")
    assert [str(d) for d in devices] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    with pytest.raises(ModelLoadError, match=r"asks for GPU\(s\) \[3\].*2 GPU"):
        placements(_config("instance_group [ { kind: KIND_GPU gpus: [0, 3] } ]"), gpu_count=2, source="c")


def test_kind_auto_and_empty_gpus_resolve_against_the_gpu_count() -> None:
    config = _config("instance_group [ { kind: KIND_AUTO count: 3 } ]")
    on_gpus = complete_config(config, name="m", backend_name="onnxruntime", signature=None, gpu_count=2)
    assert [str(d) for d in placements(on_gpus, 2, "c")] == ["cuda:0"] * 3 + ["cuda:1"] * 3
    on_cpu = complete_config(config, name="m", backend_name="onnxruntime", signature=None, gpu_count=0)
    assert [str(d) for d in placements(on_cpu, 0, "c")] == ["cpu"] * 3  # the same repository on a CPU node
    no_cuda_ep = complete_config(
        config, name="m", backend_name="onnxruntime", signature=None, gpu_count=2, supports_gpu=False
    )
    assert {d.kind for d in placements(no_cuda_ep, 2, "c")} == {"cpu"}
    every_gpu = complete_config(
        _config("instance_group [ { kind: KIND_GPU } ]"), name="m", backend_name="tensorrt", signature=None, gpu_count=3
    )
    assert [str(d) for d in placements(every_gpu, 3, "c")] == ["cuda:0", "cuda:1", "cuda:2"]


# ------------------------------------------------------------------ PyTorch: half precision and torch.export on CPU


def _add_sub_program(path: Path) -> Path:
    import torch

    from shipyard.zoo import torch_model

    batch = torch.export.Dim("batch", min=1, max=64)
    a, b = torch.randn(2, 16), torch.randn(2, 16)
    program = torch.export.export(torch_model("add_sub"), (a, b), dynamic_shapes={"a": {0: batch}, "b": {0: batch}})
    torch.export.save(program, str(path))
    return path


def _pt_settings(inputs: list[str], outputs: list[str], **parameters: str) -> InstanceSettings:
    return InstanceSettings(
        device=Device("cpu"),
        parameters=parameters,
        max_batch_size=64,
        inputs=tuple(TensorSpec(n, "FP32", (16,)) for n in inputs),
        outputs=tuple(TensorSpec(n, "FP32", (16,)) for n in outputs),
    )


def test_torch_export_program_is_served_with_inputs_matched_by_argument_name(tmp_path: Path) -> None:
    path = _add_sub_program(tmp_path / "model.pt2")
    assert resolve_backend_name("", "", "model.pt2") == "pytorch"
    backend = get_backend("pytorch")
    assert backend.inspect(path).inputs == ()
    instance = backend.load(path, _pt_settings(["b", "a"], ["OUTPUT__0", "OUTPUT__1"]))
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 16), dtype=np.float32), rng.random((5, 16), dtype=np.float32)
    out = instance.execute({"a": a, "b": b}, ())
    np.testing.assert_allclose(out["OUTPUT__0"], a + b, rtol=1e-6)
    np.testing.assert_allclose(out["OUTPUT__1"], a - b, rtol=1e-6)
    (tmp_path / "bad.pt2").write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match=r"not a torch\.export program"):
        backend.inspect(tmp_path / "bad.pt2")


def test_half_precision_runs_float16_and_answers_in_the_config_dtype(tmp_path: Path) -> None:
    path = _add_sub_program(tmp_path / "model.pt2")
    backend = get_backend("pytorch")
    instance = backend.load(path, _pt_settings(["a", "b"], ["OUTPUT__0", "OUTPUT__1"], HALF_PRECISION="true"))
    assert instance.half and instance.stream is None
    a = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    out = instance.execute({"a": a, "b": a}, ("OUTPUT__0",))
    assert out["OUTPUT__0"].dtype == np.float32
    np.testing.assert_allclose(out["OUTPUT__0"], a * 2, rtol=1e-3)
    assert backend.load(path, _pt_settings(["a", "b"], ["OUTPUT__0"], half="1")).half
    with pytest.raises(ModelConfigError, match="'HALF_PRECISION' must be true or false"):
        backend.load(path, _pt_settings(["a", "b"], ["OUTPUT__0"], HALF_PRECISION="maybe"))


# ------------------------------------------------------------------ imports without CUDA


def test_gpu_modules_import_without_cuda_or_torch() -> None:
    code = (
        "import sys\n"
        "import shipyard.serving_runtime.backends.tensorrt, shipyard.serving_runtime.backends.cuda\n"
        "import shipyard.serving_runtime.backends.pytorch, shipyard.serving_runtime.backends.onnxruntime\n"
        "bad = [m for m in ('tensorrt', 'torch', 'cuda', 'cuda.bindings') if m in sys.modules]\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


class _FakeCudart:
    """Host memory behind cuda-python's calling convention ((error, value) tuples), for the buffers' logic."""

    def __init__(self) -> None:
        import ctypes

        self._ctypes = ctypes
        self.live: dict[int, object] = {}
        self.calls: list[str] = []

    def _alloc(self, name: str, size: int) -> tuple[int, int]:
        block = (self._ctypes.c_uint8 * size)()
        address = self._ctypes.addressof(block)
        self.live[address] = block
        self.calls.append(f"{name}({size})")
        return 0, address

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        return self._alloc("cudaMalloc", size)

    def cudaMallocHost(self, size: int) -> tuple[int, int]:
        return self._alloc("cudaMallocHost", size)

    def cudaFree(self, pointer: int) -> tuple[int]:
        self.calls.append("cudaFree")
        del self.live[pointer]
        return (0,)

    def cudaFreeHost(self, pointer: int) -> tuple[int]:
        self.calls.append("cudaFreeHost")
        del self.live[pointer]
        return (0,)


def test_device_and_pinned_buffers_grow_reuse_and_free_with_their_own_allocator() -> None:
    import numpy as np

    from shipyard.serving_runtime.backends.cuda import DeviceBuffer, PinnedBuffer, grown_capacity

    cudart = _FakeCudart()
    device = DeviceBuffer(cudart)
    assert device.ensure(1000) is True
    first = device.pointer
    assert device.capacity == grown_capacity(0, 1000)
    assert device.ensure(500) is False and device.pointer == first  # big enough: reused
    assert device.ensure(device.capacity + 1) is True  # grows: old memory freed first
    assert cudart.calls[:3] == [f"cudaMalloc({grown_capacity(0, 1000)})", "cudaFree", cudart.calls[2]]
    device.free()
    assert device.pointer == 0 and not cudart.live

    pinned = PinnedBuffer(cudart)
    pinned.ensure(64)
    assert cudart.calls[-1].startswith("cudaMallocHost(")
    view = pinned.view(np.float32, (4, 4))
    view[:] = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert float(pinned.view(np.float32, (16,))[15]) == 15.0
    pinned.free()
    assert cudart.calls[-1] == "cudaFreeHost" and not cudart.live

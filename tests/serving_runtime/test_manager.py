"""ModelManager and ServedModel on real repositories in tmp dirs, with real ONNX Runtime and torch."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from repo_builders import SCALE_CONFIG, add_model, scale_model, scale_repo_model, write_config

from shipyard.serving_runtime.errors import (
    InvalidArgument,
    ModelConfigError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
)
from shipyard.serving_runtime.manager import ExplicitModeRequired, ModelManager
from shipyard.serving_runtime.scheduling import InferenceRequest

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ONES = np.ones((1, 4), dtype=np.float32)


async def _scale(manager: ModelManager, name: str, version: int | None = None) -> float:
    """The factor the served version multiplies by."""
    out = await manager.get(name, version).infer(InferenceRequest(inputs={"IN": ONES}, outputs=("OUT",)))
    return float(out["OUT"][0, 0])


def _entry(manager: ModelManager, name: str, version: int | None = None) -> dict[str, str]:
    matches = [
        e for e in manager.index() if e["name"] == name and e.get("version") == (str(version) if version else None)
    ]
    assert len(matches) == 1, manager.index()
    return matches[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two versions of one model (policy all), a model without config, a broken model."""
    repo = tmp_path / "repo"
    scale_repo_model(repo, "scale", {1: 2.0, 2: 3.0}, extra="version_policy: { all { } }")
    add_model(repo / "auto" / "1" / "model.onnx", width=3)
    broken = repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"definitely not onnx")
    write_config(broken, SCALE_CONFIG.format(name="broken", extra=""))
    return repo


async def test_repository_is_served_and_a_broken_model_is_unavailable(repo: Path) -> None:
    manager = ModelManager([repo], "none")
    await manager.start()
    try:
        assert await _scale(manager, "scale", 1) == 2.0
        assert await _scale(manager, "scale", 2) == 3.0
        assert await _scale(manager, "scale") == 3.0  # no version: the highest ready one
        a = np.arange(6, dtype=np.int64).reshape(2, 3)
        out = await manager.get("auto").infer(InferenceRequest(inputs={"A": a, "B": a}, batch_size=2))
        np.testing.assert_array_equal(out["SUM"], 2 * a)

        broken = _entry(manager, "broken", 1)
        assert broken["state"] == "UNAVAILABLE"
        assert "broken/1/model.onnx" in broken["reason"] and "ONNX" in broken["reason"]
        with pytest.raises(ModelNotReady, match=r"not ready.*broken/1/model\.onnx"):
            manager.get("broken")
        with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
            manager.get("nope")
        with pytest.raises(ModelNotFound, match=r"no version 7; ready versions: \[1, 2\]"):
            manager.get("scale", 7)

        assert [e["name"] for e in manager.index(ready_only=True)] == ["auto", "scale", "scale"]
        assert manager.is_ready(strict=False)
        assert not manager.is_ready(strict=True)  # Triton's --strict-readiness: a model failed

        meta = manager.get("scale").metadata()
        assert meta == {
            "name": "scale",
            "versions": ["1", "2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "IN", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1, 4]}],
        }
        auto = manager.get("auto")
        assert auto.max_batch_size == 4 and auto.backend == "onnxruntime"
        assert [(t.name, t.datatype, t.dims) for t in auto.inputs] == [("A", "INT64", (3,)), ("B", "INT64", (3,))]
        assert auto.config_dict()["max_batch_size"] == 4
        assert {(s.name, s.version) for s in manager.all_stats()} == {("auto", 1), ("scale", 1), ("scale", 2)}
    finally:
        await manager.shutdown()
    assert not manager.is_ready()


async def test_default_version_policy_serves_only_the_latest(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "m", {1: 2.0, 2: 3.0, 10: 4.0})
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert manager.versions("m") == [10]
    with pytest.raises(ModelNotFound):
        manager.get("m", 2)
    await manager.shutdown()


async def test_specific_policy_reports_a_missing_version(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "m", {1: 2.0, 2: 3.0}, extra="version_policy: { specific { versions: [1, 5] } }")
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert manager.versions("m") == [1]
    assert "m/5 does not exist" in _entry(manager, "m", 5)["reason"]
    await manager.shutdown()


async def test_duplicate_model_is_unavailable_and_others_serve(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    scale_repo_model(one, "dup", {1: 2.0})
    scale_repo_model(two, "dup", {1: 5.0})
    scale_repo_model(two, "solo", {1: 7.0})
    manager = ModelManager([one, two], "none")
    await manager.start()
    entry = _entry(manager, "dup")
    assert entry["state"] == "UNAVAILABLE" and "more than one model repository" in entry["reason"]
    with pytest.raises(ModelNotReady, match="more than one model repository"):
        manager.get("dup")
    assert await _scale(manager, "solo") == 7.0
    await manager.shutdown()


async def test_exit_on_error_raises_naming_the_model(repo: Path) -> None:
    manager = ModelManager([repo], "none", exit_on_error=True)
    with pytest.raises(ModelLoadError, match=r"broken: version 1 UNAVAILABLE: .*model\.onnx"):
        await manager.start()


async def test_broken_config_makes_the_model_unavailable_with_file_and_line(tmp_path: Path) -> None:
    scale_model(tmp_path / "bad" / "1" / "model.onnx", 2.0)
    path = write_config(tmp_path / "bad", 'name: "bad"\nmax_batch_size: eight\n')
    scale_repo_model(tmp_path, "good", {1: 2.0})
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert _entry(manager, "bad")["reason"].startswith(f"{path}:2:")
    assert await _scale(manager, "good") == 2.0
    await manager.shutdown()


async def test_poll_applies_new_versions_models_removals_and_config_changes(tmp_path: Path) -> None:
    model_dir = scale_repo_model(tmp_path, "m", {1: 2.0})
    manager = ModelManager([tmp_path], "poll")
    await manager.start()
    try:
        await manager.poll()  # nothing changed: nothing reloads
        first = manager.get("m", 1)
        await manager.poll()
        assert manager.get("m", 1) is first

        scale_model(model_dir / "2" / "model.onnx", 3.0)  # new version: latest-1 moves to it
        scale_repo_model(tmp_path, "new", {1: 9.0})  # new model
        await manager.poll()
        assert manager.versions("m") == [2] and await _scale(manager, "m") == 3.0
        assert _entry(manager, "m", 1) == {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert await _scale(manager, "new") == 9.0

        text = SCALE_CONFIG.format(name="m", extra="version_policy: { all { } }\nmax_batch_size: 2").replace(
            "max_batch_size: 8\n", ""
        )
        write_config(model_dir, text)  # config change: both versions, new batch size
        await manager.poll()
        assert manager.versions("m") == [1, 2]
        assert manager.get("m", 2).max_batch_size == 2 and await _scale(manager, "m", 1) == 2.0

        shutil.rmtree(model_dir / "1")  # removed version
        await manager.poll()
        assert manager.versions("m") == [2]

        shutil.rmtree(tmp_path / "new")  # removed model
        await manager.poll()
        with pytest.raises(ModelNotFound):
            manager.get("new")
        assert "new" not in {e["name"] for e in manager.index()}
    finally:
        await manager.shutdown()


async def test_failed_reload_keeps_the_old_version_serving(tmp_path: Path) -> None:
    model_dir = scale_repo_model(tmp_path, "m", {1: 2.0})
    manager = ModelManager([tmp_path], "poll")
    await manager.start()
    try:
        (model_dir / "1" / "model.onnx").write_bytes(b"a corrupt replacement of the model file")
        await manager.poll()
        assert await _scale(manager, "m", 1) == 2.0
        assert _entry(manager, "m", 1)["state"] == "READY"
        assert "model.onnx" in manager.last_error("m")

        (model_dir / "2").mkdir()
        (model_dir / "2" / "model.onnx").write_bytes(b"broken new version")
        await manager.poll()
        assert await _scale(manager, "m") == 2.0  # the new latest failed: version 1 keeps serving
        assert _entry(manager, "m", 2)["state"] == "UNAVAILABLE"

        write_config(model_dir, "max_batch_size: nope")  # broken config: old config keeps serving
        await manager.poll()
        assert await _scale(manager, "m", 1) == 2.0
        assert "config.pbtxt:1:" in manager.last_error("m")

        scale_model(model_dir / "2" / "model.onnx", 3.0)  # fixed: version 2 replaces version 1
        write_config(model_dir, SCALE_CONFIG.format(name="m", extra=""))
        await manager.poll()
        assert manager.versions("m") == [2] and await _scale(manager, "m") == 3.0
        assert manager.last_error("m") == ""
    finally:
        await manager.shutdown()


async def test_requests_in_flight_during_reloads_all_succeed(tmp_path: Path) -> None:
    model_dir = scale_repo_model(tmp_path, "m", {1: 2.0})
    manager = ModelManager([tmp_path], "poll")
    await manager.start()
    stop = asyncio.Event()
    answers: list[float] = []

    async def client() -> None:
        while not stop.is_set():
            answers.append(await _scale(manager, "m"))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        for round_ in range(3):
            extra = f"instance_group [ {{ count: {round_ + 1} kind: KIND_CPU }} ]"
            write_config(model_dir, SCALE_CONFIG.format(name="m", extra=extra))
            await manager.poll()
            assert len(manager.get("m").instances) == round_ + 1
        scale_model(model_dir / "2" / "model.onnx", 3.0)
        await manager.poll()
        count = len(answers)
        while len(answers) < count + 20:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        results = await asyncio.gather(*clients, return_exceptions=True)
        await manager.shutdown()
    assert [r for r in results if r is not None] == []  # no client saw an error
    assert set(answers) == {2.0, 3.0} and answers[-1] == 3.0


async def test_shutdown_finishes_accepted_requests(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "m", {1: 2.0})
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    model = manager.get("m")
    pending = [asyncio.create_task(model.infer(InferenceRequest(inputs={"IN": ONES}))) for _ in range(16)]
    await asyncio.sleep(0)
    await manager.shutdown()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, dict) for r in results), results
    with pytest.raises(ModelNotReady):
        manager.get("m")


async def test_explicit_mode_load_and_unload(repo: Path) -> None:
    manager = ModelManager([repo], "explicit", startup_models=["scale"])
    await manager.start()
    try:
        assert manager.versions("scale") == [1, 2]
        assert {"name": "auto"} in manager.index()  # in the repository, not loaded
        with pytest.raises(ModelNotFound):
            manager.get("auto")

        await manager.load("auto")
        assert manager.get("auto").max_batch_size == 4

        await manager.load("auto", config_json='{"max_batch_size": 2}')  # Triton's load with a config
        assert manager.get("auto").max_batch_size == 2

        with pytest.raises(ModelLoadError, match=r"broken/1/model\.onnx"):
            await manager.load("broken")
        with pytest.raises(ModelNotFound, match="'nope' is not in any model repository"):
            await manager.load("nope")
        with pytest.raises(InvalidArgument, match="invalid model name"):
            await manager.load("../repo/scale")
        with pytest.raises(ModelConfigError, match="invalid model config JSON"):
            await manager.load("auto", config_json="{not json")

        await manager.unload("scale")
        with pytest.raises(ModelNotReady, match="unloaded"):
            manager.get("scale", 1)
        assert _entry(manager, "scale", 1) == {
            "name": "scale",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        await manager.load("scale")
        assert await _scale(manager, "scale", 1) == 2.0
    finally:
        await manager.shutdown()


async def test_explicit_mode_star_loads_everything(repo: Path) -> None:
    manager = ModelManager([repo], "explicit", startup_models=["*"])
    await manager.start()
    assert [e["name"] for e in manager.index(ready_only=True)] == ["auto", "scale", "scale"]
    await manager.shutdown()


async def test_load_and_unload_need_explicit_mode(repo: Path) -> None:
    manager = ModelManager([repo], "poll")
    await manager.start()
    with pytest.raises(ExplicitModeRequired, match="--model-control-mode explicit"):
        await manager.load("scale")
    with pytest.raises(ExplicitModeRequired):
        await manager.unload("scale")
    await manager.shutdown()


async def test_warmup_runs_before_ready_and_its_failure_blocks_the_version(tmp_path: Path) -> None:
    warm = (
        'model_warmup [ { name: "zeros" batch_size: 8 count: 2 inputs { key: "IN" value: '
        "{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }, "
        '{ name: "random" batch_size: 1 inputs { key: "IN" value: { data_type: TYPE_FP32 dims: [ 4 ] '
        "random_data: true } } } ]"
    )
    scale_repo_model(tmp_path, "warm", {1: 2.0}, extra=warm)
    bad = warm.replace("dims: [ 4 ] zero_data", "dims: [ 5 ] zero_data")  # the model rejects 5 wide
    scale_repo_model(tmp_path, "cold", {1: 2.0}, extra=bad)
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert await _scale(manager, "warm") == 2.0
    assert "model_warmup 'zeros' failed" in _entry(manager, "cold", 1)["reason"]
    await manager.shutdown()


async def test_warmup_reads_input_data_files_from_the_warmup_dir(tmp_path: Path) -> None:
    warm = (
        'model_warmup [ { name: "file" batch_size: 2 inputs { key: "IN" value: '
        '{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "in.bin" } } } ]'
    )
    model_dir = scale_repo_model(tmp_path, "f", {1: 2.0}, extra=warm)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "in.bin").write_bytes(np.ones(8, np.float32).tobytes())
    short = scale_repo_model(tmp_path, "short", {1: 2.0}, extra=warm)
    (short / "warmup").mkdir()
    (short / "warmup" / "in.bin").write_bytes(np.ones(3, np.float32).tobytes())
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert await _scale(manager, "f") == 2.0
    assert "holds 3 FP32 values, shape [2, 4] needs 8" in _entry(manager, "short", 1)["reason"]
    await manager.shutdown()


async def test_reshape_maps_client_dims_to_model_shape(tmp_path: Path) -> None:
    scale_model(tmp_path / "r" / "1" / "model.onnx", 2.0)
    write_config(
        tmp_path / "r",
        'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]',
    )
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    out = await manager.get("r").infer(InferenceRequest(inputs={"IN": x}, batch_size=3))
    np.testing.assert_allclose(out["OUT"], 2 * x)
    assert manager.get("r").metadata()["inputs"] == [{"name": "IN", "datatype": "FP32", "shape": [-1, 2, 2]}]
    await manager.shutdown()


async def test_torchscript_model_is_served_on_cpu(tmp_path: Path) -> None:
    import torch

    class Affine(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0 + 1.0

    model_dir = tmp_path / "ts"
    (model_dir / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(Affine()), str(model_dir / "1" / "model.pt"))
    write_config(
        model_dir,
        'platform: "pytorch_libtorch"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        "instance_group [ { kind: KIND_AUTO } ]",
    )
    manager = ModelManager([tmp_path], "none", gpu_count=0)
    await manager.start()
    served = manager.get("ts")
    assert served.platform == "pytorch_libtorch"
    assert served.config.instance_group[0].kind == 2  # KIND_AUTO resolved to KIND_CPU without a GPU
    x = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], dtype=np.float32)
    out = await served.infer(InferenceRequest(inputs={"INPUT__0": x}, batch_size=2))
    np.testing.assert_allclose(out["OUTPUT__0"], x * 2 + 1)
    await manager.shutdown()


async def test_torchscript_without_config_asks_for_one(tmp_path: Path) -> None:
    import torch

    (tmp_path / "ts" / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(tmp_path / "ts" / "1" / "model.pt"))
    manager = ModelManager([tmp_path], "none")
    await manager.start()
    assert "list them (name, data_type, dims) in config.pbtxt" in _entry(manager, "ts")["reason"]
    await manager.shutdown()


async def test_tensorrt_plan_without_gpu_is_unavailable_with_a_clear_reason(tmp_path: Path) -> None:
    (tmp_path / "trt" / "1").mkdir(parents=True)
    (tmp_path / "trt" / "1" / "model.plan").write_bytes(b"\x00" * 128)
    write_config(
        tmp_path / "trt", SCALE_CONFIG.format(name="trt", extra="").replace("onnxruntime_onnx", "tensorrt_plan")
    )
    scale_repo_model(tmp_path, "onnx", {1: 2.0})
    manager = ModelManager([tmp_path], "none", gpu_count=0)
    await manager.start()
    assert "needs a GPU and TensorRT" in _entry(manager, "trt", 1)["reason"]
    assert await _scale(manager, "onnx") == 2.0
    await manager.shutdown()


async def test_kind_gpu_without_gpu_is_unavailable_with_a_clear_reason(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "g", {1: 2.0}, extra="instance_group [ { kind: KIND_GPU } ]")
    manager = ModelManager([tmp_path], "none", gpu_count=0)
    await manager.start()
    assert "KIND_GPU but no CUDA GPU is visible" in _entry(manager, "g", 1)["reason"]
    await manager.shutdown()


def test_constructor_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="control mode 'sometimes' is unknown"):
        ModelManager([tmp_path], "sometimes")
    with pytest.raises(ValueError, match="needs --model-control-mode explicit"):
        ModelManager([tmp_path], "poll", startup_models=["m"])

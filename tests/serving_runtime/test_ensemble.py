"""Ensembles (platform "ensemble") on real repositories with real ONNX Runtime composing models:
the step graph runs through each composing model's scheduler, bad ensembles are refused at load
with the step named, statistics are kept for the ensemble and its composing models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from server_harness import double_onnx, simple_onnx, write_model

from shipyard.serving_runtime.backends.base import TensorSpec
from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.manager import ModelManager
from shipyard.serving_runtime.scheduling import InferenceRequest
from shipyard.serving_runtime.scheduling.ensemble import EnsemblePlan, EnsembleScheduler, Step

DOUBLE = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
"""

SIMPLE = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

# X -> double -> A ; X -> double_b -> B ; (A, B) -> simple -> SUM = 4X, DIFF = 0
DIAMOND = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "DIFF" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "double" model_version: -1 input_map { key: "x" value: "X" } output_map { key: "y" value: "A" } },
  { model_name: "double_b" model_version: 1 input_map { key: "x" value: "X" } output_map { key: "y" value: "B" } },
  { model_name: "simple" model_version: -1
    input_map [ { key: "INPUT0" value: "A" }, { key: "INPUT1" value: "B" } ]
    output_map [ { key: "OUTPUT0" value: "SUM" }, { key: "OUTPUT1" value: "DIFF" } ] }
] }
"""


def _ensemble(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "double", {1: double_onnx(4)}, DOUBLE.format(delay=20000))
    write_model(repo, "double_b", {1: double_onnx(4)}, DOUBLE.format(delay=0))
    write_model(repo, "simple", {1: simple_onnx(width=4)}, SIMPLE)
    _ensemble(repo, "diamond", DIAMOND)  # sorts before its composing models: loaded after them anyway
    return repo


def _stats(manager: ModelManager, name: str) -> dict[str, object]:
    [stats] = [s.as_triton_dict() for s in manager.all_stats() if s.name == name]
    return stats


async def test_diamond_ensemble_runs_through_the_composing_models(repo: Path) -> None:
    manager = ModelManager([repo], "none")
    await manager.start()
    try:
        model = manager.get("diamond")
        assert model.metadata()["platform"] == "ensemble"
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        out = await model.infer(InferenceRequest(inputs={"X": x}, batch_size=3))
        np.testing.assert_array_equal(out["SUM"], 4 * x)
        np.testing.assert_array_equal(out["DIFF"], np.zeros_like(x))
        only = await model.infer(InferenceRequest(inputs={"X": x}, outputs=("DIFF",), batch_size=3))
        assert list(only) == ["DIFF"]

        # 16 concurrent single-item requests: "double" (20 ms queue delay) merges its steps.
        items = [np.full((1, 4), i, dtype=np.float32) for i in range(16)]
        results = await asyncio.gather(
            *(model.infer(InferenceRequest(inputs={"X": item}, batch_size=1)) for item in items)
        )
        for item, result in zip(items, results, strict=True):
            np.testing.assert_array_equal(result["SUM"], 4 * item)
        ensemble, double = _stats(manager, "diamond"), _stats(manager, "double")
        assert ensemble["inference_count"] == 3 + 3 + 16
        assert ensemble["execution_count"] == 18  # one per ensemble request
        assert double["inference_count"] == 22  # every step's items reached the composing model
        assert double["execution_count"] < 18  # ... in merged batches
        assert _stats(manager, "simple")["inference_count"] == 22
    finally:
        await manager.shutdown()


BAD = {
    "unknown model": (
        'step [ { model_name: "nope" input_map { key: "x" value: "X" } output_map { key: "y" value: "Y" } } ]',
        "step 0 (model 'nope') cannot use its model: unknown model 'nope'",
    ),
    "wrong input name": (
        'step [ { model_name: "double" input_map { key: "q" value: "X" } output_map { key: "y" value: "Y" } } ]',
        "step 0 (model 'double') input_map names 'q', not an input of the model (inputs: x)",
    ),
    "dtype mismatch": (
        'step [ { model_name: "double" input_map { key: "x" value: "I" } output_map { key: "y" value: "Y" } } ]',
        "step 0 (model 'double') input 'x' is FP32 but tensor 'I' from the ensemble's input is INT32",
    ),
    "doubly produced": (
        'step [ { model_name: "double" input_map { key: "x" value: "X" } output_map { key: "y" value: "Y" } },'
        ' { model_name: "double" input_map { key: "x" value: "X" } output_map { key: "y" value: "Y" } } ]',
        "step 1 (model 'double') output_map writes tensor 'Y', which step 0 already produces",
    ),
    "unproduced input": (
        'step [ { model_name: "double" input_map { key: "x" value: "T" } output_map { key: "y" value: "Y" } } ]',
        "step 0 (model 'double') input 'x' reads tensor 'T', which neither the ensemble's inputs nor any step",
    ),
    "cycle": (
        'step [ { model_name: "double" input_map { key: "x" value: "B" } output_map { key: "y" value: "A" } },'
        ' { model_name: "double" input_map { key: "x" value: "A" } output_map { key: "y" value: "B" } },'
        ' { model_name: "double" input_map { key: "x" value: "X" } output_map { key: "y" value: "Y" } } ]',
        "steps [0, 1] form a cycle",
    ),
    "output not produced": (
        'step [ { model_name: "double" input_map { key: "x" value: "X" } output_map { key: "y" value: "Z" } } ]',
        "output 'Y' is not produced by any step's output_map",
    ),
    "version 0 (model_version left out) is not loaded": (
        'step [ { model_name: "double" model_version: 0 input_map { key: "x" value: "X" } '
        'output_map { key: "y" value: "Y" } } ]',
        "step 0 (model 'double') cannot use its model: model 'double' has no version 0",
    ),
    "unmapped input": (
        'step [ { model_name: "simple" input_map { key: "INPUT0" value: "X" } '
        'output_map { key: "OUTPUT0" value: "Y" } } ]',
        "step 0 (model 'simple') leaves the model's input(s) INPUT1 unmapped",
    ),
}


async def test_bad_ensembles_are_refused_naming_the_step_and_the_rest_serves(repo: Path) -> None:
    for index, (raw_steps, _) in enumerate(BAD.values()):
        steps = raw_steps.replace('" input_map', '" model_version: -1 input_map')
        _ensemble(
            repo,
            f"bad{index}",
            'platform: "ensemble"\nmax_batch_size: 8\n'
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] },\n'
            '        { name: "I" data_type: TYPE_INT32 dims: [ 4 ] } ]\n'
            'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
            f"ensemble_scheduling {{ {steps} }}\n",
        )
    manager = ModelManager([repo], "none")
    await manager.start()
    try:
        reasons = {e["name"]: e.get("reason", "") for e in manager.index()}
        for index, (case, (_, expected)) in enumerate(BAD.items()):
            assert expected in reasons[f"bad{index}"], (case, reasons[f"bad{index}"])
            assert f"bad{index}/config.pbtxt" in reasons[f"bad{index}"], case
        out = await manager.get("diamond").infer(InferenceRequest(inputs={"X": np.ones((1, 4), np.float32)}))
        np.testing.assert_array_equal(out["SUM"], np.full((1, 4), 4, np.float32))
    finally:
        await manager.shutdown()


class _GatedModel:
    """A composing model whose requests wait for a gate: shows which steps run at the same time."""

    max_batch_size = 0
    inputs = (TensorSpec("x", "FP32", (-1,)),)

    def __init__(self, name: str, running: set[str], peak: list[int], gate: asyncio.Event) -> None:
        self.name, self._running, self._peak, self._gate = name, running, peak, gate

    async def infer(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        self._running.add(self.name)
        self._peak[0] = max(self._peak[0], len(self._running))
        if len(self._running) == 2:
            self._gate.set()
        await asyncio.wait_for(self._gate.wait(), 5)
        self._running.discard(self.name)
        return {"y": request.inputs["x"] + 1}


async def test_independent_steps_run_concurrently() -> None:
    running: set[str] = set()
    peak = [0]
    gate = asyncio.Event()
    models = {n: _GatedModel(n, running, peak, gate) for n in ("a", "b", "c")}
    plan = EnsemblePlan(
        "e",
        (
            Step(0, "a", None, {"x": "X"}, {"y": "A"}),
            Step(1, "b", None, {"x": "X"}, {"y": "B"}),
            Step(2, "c", None, {"x": "A"}, {"y": "C"}),
        ),
        {"X": -1, "A": 0, "B": 1, "C": 2},
        ("B", "C"),
    )
    scheduler = EnsembleScheduler(plan, lambda name, version: models[name], 1)
    scheduler_inputs = {"X": np.zeros(2, np.float32)}
    out = await scheduler.submit(InferenceRequest(inputs=scheduler_inputs))
    assert peak[0] == 2  # steps 0 and 1 were in flight together
    np.testing.assert_array_equal(out["C"], np.full(2, 2, np.float32))
    np.testing.assert_array_equal(out["B"], np.ones(2, np.float32))


async def test_explicit_load_of_an_ensemble_loads_its_composing_models_first(repo: Path) -> None:
    _ensemble(
        repo,
        "outer",
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "S" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "diamond" model_version: -1 input_map { key: "X" value: "X" }\n'
        '  output_map { key: "SUM" value: "S" } } ] }\n',
    )
    manager = ModelManager([repo], "explicit")
    await manager.start()
    try:
        assert manager.versions("double") == []
        await manager.load("outer")  # an ensemble of an ensemble: everything under it loads first
        assert all(manager.versions(m) == [1] for m in ("double", "double_b", "simple", "diamond", "outer"))
        x = np.ones((2, 4), np.float32)
        out = await manager.get("outer").infer(InferenceRequest(inputs={"X": x}, batch_size=2))
        np.testing.assert_array_equal(out["S"], 4 * x)
    finally:
        await manager.shutdown()


def _identity_any_width() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


async def test_a_tensor_that_does_not_fit_the_next_step_fails_that_request_naming_the_step(repo: Path) -> None:
    write_model(repo, "any", {1: _identity_any_width()}, DOUBLE.format(delay=0).replace("[ 4 ]", "[ -1 ]"))
    _ensemble(
        repo,
        "chain",
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        "ensemble_scheduling { step [\n"
        '  { model_name: "any" model_version: -1 input_map { key: "x" value: "X" }\n'
        '    output_map { key: "y" value: "A" } },\n'
        '  { model_name: "double" model_version: -1 input_map { key: "x" value: "A" }\n'
        '    output_map { key: "y" value: "Y" } }\n'
        "] }\n",
    )
    manager = ModelManager([repo], "none")
    await manager.start()
    try:
        chain = manager.get("chain")
        good = await chain.infer(InferenceRequest(inputs={"X": np.ones((1, 4), np.float32)}))
        np.testing.assert_array_equal(good["Y"], np.full((1, 4), 2, np.float32))
        with pytest.raises(InvalidArgument) as caught:
            await chain.infer(InferenceRequest(inputs={"X": np.ones((1, 5), np.float32)}))
        assert caught.value.message == (
            "in ensemble 'chain', ensemble 'chain' step 1 (model 'double'): input 'x' has shape [1, 5], "
            "the model expects [-1, 4]"
        )
        assert _stats(manager, "chain")["inference_stats"]["fail"]["count"] == 1  # type: ignore[index]
    finally:
        await manager.shutdown()

"""Validation gate, profile, batching recommendation and report files."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from shipyard.components.errors import ValidationFailed
from shipyard.components.optimize import optimize
from shipyard.components.validate import ProfileRow, Tolerances, recommend_batching, validate


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory, digits_onnx: Path, digits: object) -> Path:
    out = tmp_path_factory.mktemp("int8")
    return optimize(digits_onnx, out, target="onnxruntime", precision="int8", quantization="static",
                    calibration_inputs={"input": digits.x_train[:200]}, progress=False).path  # type: ignore[attr-defined]  # fmt: skip


def test_int8_passes_its_gate_with_accuracy_profile_and_report(
    tmp_path: Path, digits_onnx: Path, int8_model: Path, digits: object
) -> None:
    report = validate(digits_onnx, int8_model, {"input": digits.x_test}, digits.y_test,  # type: ignore[attr-defined]
                      precision="int8", max_batch_size=16, latency_budget_ms=50, report_dir=tmp_path)  # fmt: skip
    assert report.passed, report.failures
    p = report.parity
    assert p.accuracy_reference is not None and p.accuracy_reference > 0.95
    assert p.accuracy_delta is not None and abs(p.accuracy_delta) <= 0.02
    assert [r.batch_size for r in report.profile] == [1, 2, 4, 8, 16]
    assert report.recommendation is not None and report.recommendation.max_batch_size <= 16
    md = (tmp_path / "validation.md").read_text()
    assert "**Gate: PASSED**" in md and "Task accuracy" in md and "max_queue_delay_microseconds" in md
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tags = report.lineage_tags()
    assert tags["shipyard.validation.passed"] is True and "shipyard.batching" in tags


def test_wrong_tolerance_fails_with_a_readable_report(digits_onnx: Path, int8_model: Path, digits: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate(digits_onnx, int8_model, {"input": digits.x_test}, digits.y_test, precision="fp32",  # type: ignore[attr-defined]
                 profile=False)  # fmt: skip
    text = info.value.text
    assert "**Gate: FAILED**" in text and "max abs error" in text and "> 0.001" in text
    assert info.value.report.passed is False and info.value.report.profile == []


def test_corrupted_weights_fail_on_top1_and_accuracy(tmp_path: Path, digits_onnx: Path, digits: object) -> None:
    model = onnx.load(str(digits_onnx))
    for init in model.graph.initializer:  # flip the sign of every float weight: a valid file, wrong numbers
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ValidationFailed, match="'logits': top-1 agreement 0") as info:
        validate(digits_onnx, broken, {"input": digits.x_test}, digits.y_test, precision="int8", profile=False)  # type: ignore[attr-defined]
    assert "accuracy dropped" in info.value.text


def test_unloadable_candidate_fails_the_gate(tmp_path: Path, digits_onnx: Path, digits: object) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(digits_onnx.read_bytes()[:500])
    with pytest.raises(ValidationFailed, match="cannot load"):
        validate(digits_onnx, garbage, {"input": digits.x_test[:10]}, profile=False)  # type: ignore[attr-defined]


def test_custom_tolerances_are_used(digits_onnx: Path, int8_model: Path, digits: object) -> None:
    strict = Tolerances(min_top1_agreement=1.01)
    with pytest.raises(ValidationFailed, match=r"< 1\.01"):
        validate(digits_onnx, int8_model, {"input": digits.x_test}, tolerances=strict, profile=False)  # type: ignore[attr-defined]


def _row(batch: int, ms: float) -> ProfileRow:
    return ProfileRow(batch, 10, ms, ms, ms, batch / (ms / 1000))


def test_recommendation_respects_the_latency_budget() -> None:
    rows = [_row(1, 1.0), _row(2, 1.2), _row(4, 1.6), _row(8, 2.6), _row(16, 4.5), _row(32, 9.0)]
    rec = recommend_batching(rows, latency_budget_ms=5.0)
    assert rec.max_batch_size == 16  # 32 takes 9 ms > 5 ms
    assert rec.preferred_batch_size == 16  # 8 gives 3077/s < 90% of 3556/s
    assert 0 < rec.max_queue_delay_microseconds <= 250  # half of the 0.5 ms left
    tight = recommend_batching(rows, latency_budget_ms=0.5)
    assert tight.max_batch_size == 1 and tight.max_queue_delay_microseconds == 0 and "no batching" in tight.reason


def test_batch_job_rows_follow_the_cost_curve() -> None:
    """A real-time batch topped up with batch-job rows (or waiting behind a slice) may cost 1.25x a one-row
    call at most: many rows where a call costs the same at any batch (a GPU), a few where each row adds
    compute (the wide MLP on a compute-bound CPU: 1.9, 2.2, 2.5, 3.5 ms ...)."""
    flat = [_row(1, 1.0), _row(2, 1.0), _row(4, 1.02), _row(8, 1.1), _row(16, 1.24), _row(32, 1.7), _row(64, 3.0)]
    assert recommend_batching(flat, latency_budget_ms=50).background_rows == 16
    assert recommend_batching(flat, latency_budget_ms=1.5).background_rows == 16
    capped = recommend_batching(flat, latency_budget_ms=1.05)  # the largest batch within the budget is 4
    assert (capped.max_batch_size, capped.background_rows) == (4, 4)
    compute = [_row(1, 1.9), _row(2, 2.2), _row(4, 2.5), _row(8, 3.5), _row(16, 4.7), _row(32, 8.0)]
    rec = recommend_batching(compute, latency_budget_ms=50)
    assert (rec.max_batch_size, rec.background_rows) == (32, 2)
    assert "batch-job rows per real-time batch or slice: 2" in rec.reason


def test_a_recommendation_saved_before_background_rows_still_loads(tmp_path: Path) -> None:
    import json

    from shipyard.components.validate import load_recommendation

    saved = {"max_batch_size": 32, "preferred_batch_size": 16, "max_queue_delay_microseconds": 400,
             "latency_budget_ms": 20.0, "reason": "older"}  # fmt: skip
    (tmp_path / "validation.json").write_text(json.dumps({"recommendation": saved}))
    assert load_recommendation(tmp_path / "validation.json").background_rows == 0  # the publish step's defaults

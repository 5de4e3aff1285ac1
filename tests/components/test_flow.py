"""Issue 5's done-when: the digits CNN through every step with real MLflow, ONNX Runtime and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard import registry
from shipyard.components.errors import ValidationFailed
from shipyard.components.flow import deploy_flow
from shipyard.components.validate import Tolerances
from shipyard.registry import lineage as L


@pytest.mark.slow
async def test_digits_int8_end_to_end_served_with_lineage(
    tmp_path: Path, tracking_uri: str, digits_module: torch.nn.Module, digits: object
) -> None:
    d = digits
    repo = tmp_path / "repo"
    result = deploy_flow(
        digits_module, name="digits", repository=repo, input_example=d.x_test[:2],  # type: ignore[attr-defined]
        held_out_inputs={"input": d.x_test}, held_out_labels=d.y_test,  # type: ignore[attr-defined]
        work_dir=tmp_path / "work", precision="int8", quantization="static",
        calibration_inputs={"input": d.x_train[:256]}, max_batch_size=32, output_names=["logits"],  # type: ignore[attr-defined]
        alias="champion", tracking_uri=tracking_uri,
    )  # fmt: skip
    assert result.model_uri == "models:/digits/1" and result.optimized.target == "onnxruntime"
    parity = result.validation.parity
    assert parity.accuracy_candidate is not None and parity.accuracy_candidate > 0.95
    assert parity.accuracy_delta is not None and abs(parity.accuracy_delta) <= 0.02
    assert result.published.version == 1 and result.promoted == "models:/digits/1"

    tags = registry.get_lineage("models:/digits@champion", tracking_uri)
    for key in (L.SOURCE_RUN_ID, L.ONNX_SHA256, L.ENGINE_SHA256, L.ENGINE_TARGET, L.ENGINE_RUNTIME,
                L.VALIDATION_ACCURACY_DELTA, L.PROFILE_SUMMARY, L.BATCHING, L.PUBLISHED_URI):  # fmt: skip
        assert tags.get(key), key
    assert tags[L.VALIDATION_PASSED] == "true" and tags[L.ENGINE_PRECISION] == "int8"
    assert tags[L.ENGINE_SHA256] == result.optimized.sha256 == tags[L.VALIDATION_ENGINE_SHA256]
    assert json.loads(tags[L.BATCHING])["max_batch_size"] <= 32
    assert tags[L.PUBLISHED_URI] == (repo / "digits" / "1").as_uri()

    # served by the runtime with the same predictions as the validated model
    import onnxruntime as ort

    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    manager = ModelManager([repo], control_mode="none", gpu_count=0)
    await manager.start()
    try:
        served = manager.get("digits")
        assert served.config.parameters["mlflow_model_uri"].string_value == "models:/digits/1"
        x = d.x_test[:8]  # type: ignore[attr-defined]
        got = (await served.infer(InferenceRequest(inputs={"input": x}, batch_size=8)))["logits"]
        want = ort.InferenceSession(str(result.optimized.path)).run(["logits"], {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        await manager.shutdown()

    # re-running the flow: no duplicate MLflow version, tags kept, a new repository version
    again = deploy_flow(
        digits_module, name="digits", repository=repo, input_example=d.x_test[:2],  # type: ignore[attr-defined]
        work_dir=tmp_path / "work2", max_batch_size=32, output_names=["logits"], tracking_uri=tracking_uri,
        profile=False,
    )  # fmt: skip
    assert again.model_uri == "models:/digits/1" and again.published.version == 2
    client = registry.get_client(tracking_uri)
    assert len(client.search_model_versions("name='digits'")) == 1


@pytest.mark.slow
def test_broken_optimization_fails_the_gate_publishes_nothing_and_cannot_be_promoted(
    tmp_path: Path, tracking_uri: str, digits_module: torch.nn.Module, digits: object
) -> None:
    d = digits
    repo = tmp_path / "repo"
    wrong = Tolerances(max_abs=1e-6, min_top1_agreement=1.0)  # a wrong (impossible for INT8) tolerance
    with pytest.raises(ValidationFailed) as info:
        deploy_flow(
            digits_module, name="digits", repository=repo, input_example=d.x_test[:2],  # type: ignore[attr-defined]
            held_out_inputs={"input": d.x_test}, held_out_labels=d.y_test,  # type: ignore[attr-defined]
            work_dir=tmp_path / "work", precision="int8", tolerances=wrong, output_names=["logits"],
            alias="champion", tracking_uri=tracking_uri,
        )  # fmt: skip
    assert "**Gate: FAILED**" in info.value.text and "max abs error" in info.value.text
    assert (tmp_path / "work" / "validation" / "validation.md").is_file()
    assert not repo.exists() or not any(repo.iterdir())  # nothing published
    tags = registry.get_lineage("models:/digits/1", tracking_uri)
    assert tags[L.VALIDATION_PASSED] == "false" and L.PUBLISHED_VERSION not in tags
    with pytest.raises(registry.PromotionRefused, match="validation failed"):
        registry.promote("models:/digits/1", "champion", tracking_uri=tracking_uri)
    with pytest.raises(registry.ModelVersionNotFound):
        registry.get_version("models:/digits@champion", tracking_uri)

"""Registry against real MLflow: embedded sqlite store and a real ``mlflow server`` on loopback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard import registry
from shipyard.registry import lineage as L
from shipyard.zoo import digits_data, torch_model


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, np.ndarray]:
    return torch_model("digits_cnn"), digits_data().x_test[:4]


def test_register_module_resolve_and_predict(tracking_uri: str, digits: tuple[torch.nn.Module, np.ndarray]) -> None:
    module, example = digits
    reg = registry.register_module(module, example, "digits", tags={"team": "vision"}, tracking_uri=tracking_uri)
    assert reg.created and reg.version == 1 and reg.uri == "models:/digits/1"

    resolved = registry.resolve_model("models:/digits/1", tracking_uri=tracking_uri)
    assert (resolved.local_path / "MLmodel").is_file()
    assert resolved.tags["team"] == "vision"
    assert resolved.tags[L.SOURCE_RUN_ID] == reg.run_id
    np.testing.assert_array_equal(resolved.input_example(), example)

    loaded, loaded_example = registry.load_torch_model(reg.uri, tracking_uri=tracking_uri)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(example)).numpy(), module(torch.from_numpy(example)).numpy(),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    assert loaded_example is not None

    # the signature keeps a dynamic batch dimension
    from mlflow.models import Model

    signature = Model.load(str(resolved.local_path)).signature
    assert signature is not None and signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)


def test_reregistering_is_idempotent_and_keeps_tags(
    tracking_uri: str, digits: tuple[torch.nn.Module, np.ndarray]
) -> None:
    module, example = digits
    first = registry.register_module(module, example, "digits", tags={"a": "1"}, tracking_uri=tracking_uri)
    registry.record_lineage(first.uri, {L.ONNX_SHA256: "abc"}, tracking_uri=tracking_uri)
    again = registry.register_module(module, example, "digits", tags={"b": "2"}, tracking_uri=tracking_uri)
    assert not again.created and again.version == first.version
    client = registry.get_client(tracking_uri)
    assert len(client.search_model_versions("name='digits'")) == 1
    tags = registry.get_version(first.uri, tracking_uri).tags
    assert tags["a"] == "1" and tags["b"] == "2" and tags[L.ONNX_SHA256] == "abc"

    # different weights: a new version
    other = torch_model("digits_cnn")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    second = registry.register_module(other, example, "digits", tracking_uri=tracking_uri)
    assert second.created and second.version == 2


def test_register_file_and_run(tracking_uri: str, tmp_path: Path, digits: tuple[torch.nn.Module, np.ndarray]) -> None:
    import mlflow

    module, example = digits
    path = tmp_path / "digits.pt"
    torch.save(module, path)
    from_file = registry.register_file(path, "digits-file", input_example=example, tracking_uri=tracking_uri)
    assert from_file.created and from_file.tags[L.SOURCE_KIND] == "file"
    assert registry.register_file(path, "digits-file", input_example=example, tracking_uri=tracking_uri).version == 1

    state_dict = tmp_path / "weights.pt"
    torch.save(module.state_dict(), state_dict)
    with pytest.raises(registry.RegistryError, match="state dict"):
        registry.register_file(state_dict, "digits-file", input_example=example, tracking_uri=tracking_uri)

    # a data scientist's own run
    registry.get_client(tracking_uri)
    own = mlflow.create_experiment("own-work", artifact_location=(tmp_path / "own-artifacts").as_uri())
    with mlflow.start_run(experiment_id=own) as run:
        mlflow.pytorch.log_model(module, name="net", input_example=example)
    from_run = registry.register_run(run.info.run_id, "digits-run", artifact_name="net", tracking_uri=tracking_uri)
    assert from_run.created and from_run.run_id == run.info.run_id
    again = registry.register_run(run.info.run_id, "digits-run", artifact_name="net", tracking_uri=tracking_uri)
    assert not again.created and again.version == from_run.version
    with pytest.raises(registry.RegistryError, match="runs:/nope/net"):
        registry.register_run("nope", "digits-run", artifact_name="net", tracking_uri=tracking_uri)


def test_aliases_and_promotion_gate(tracking_uri: str, digits: tuple[torch.nn.Module, np.ndarray]) -> None:
    module, example = digits
    reg = registry.register_module(module, example, "digits", tracking_uri=tracking_uri)
    with pytest.raises(registry.PromotionRefused, match="not validated"):
        registry.promote(reg.uri, "champion", tracking_uri=tracking_uri)
    registry.record_lineage(
        reg.uri,
        {L.ENGINE_SHA256: "e1", L.VALIDATION_PASSED: False, L.VALIDATION_SUMMARY: "top-1 agreement 0.41 < 0.97"},
        tracking_uri=tracking_uri,
    )
    with pytest.raises(registry.PromotionRefused, match=r"top-1 agreement 0\.41"):
        registry.promote(reg.uri, "champion", tracking_uri=tracking_uri)
    registry.record_lineage(reg.uri, {L.VALIDATION_PASSED: True, L.VALIDATION_ENGINE_SHA256: "e0"}, tracking_uri)
    with pytest.raises(registry.PromotionRefused, match="not the current engine"):
        registry.promote(reg.uri, "champion", tracking_uri=tracking_uri)
    registry.record_lineage(reg.uri, {L.VALIDATION_ENGINE_SHA256: "e1"}, tracking_uri)
    assert registry.promote(reg.uri, "champion", tracking_uri=tracking_uri) == "models:/digits/1"
    resolved = registry.resolve_model("models:/digits@champion", tracking_uri=tracking_uri)
    assert resolved.version == 1 and "champion" in resolved.aliases

    with pytest.raises(registry.ModelVersionNotFound, match="versions of 'digits': 1"):
        registry.get_version("models:/digits/7", tracking_uri)
    with pytest.raises(registry.ModelVersionNotFound):
        registry.get_version("models:/digits@nobody", tracking_uri)
    with pytest.raises(registry.RegistryError, match=r"models:/NAME/VERSION"):
        registry.get_version("digits:1", tracking_uri)
    with pytest.raises(registry.RegistryError, match="invalid alias"):
        registry.promote(reg.uri, "latest", tracking_uri=tracking_uri)


@pytest.mark.slow
def test_round_trip_against_real_mlflow_server(mlflow_server: str, digits: tuple[torch.nn.Module, np.ndarray]) -> None:
    module, example = digits
    reg = registry.register_module(module, example, "digits-srv", tags={"k": "v"}, tracking_uri=mlflow_server)
    assert reg.created
    again = registry.register_module(module, example, "digits-srv", tracking_uri=mlflow_server)
    assert again.version == reg.version and not again.created
    registry.record_lineage(reg.uri, {L.VALIDATION_PASSED: True}, mlflow_server)
    registry.promote(reg.uri, "champion", tracking_uri=mlflow_server)
    loaded, _ = registry.load_torch_model("models:/digits-srv@champion", tracking_uri=mlflow_server)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(example)).numpy(), module(torch.from_numpy(example)).numpy(),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    assert registry.get_lineage(reg.uri, mlflow_server)[L.VALIDATION_PASSED] == "true"

"""The pipelines compile to KFP v2 YAML, load back with kfp, and name every component."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from kfp import components
from typer.testing import CliRunner

from shipyard.cli import build_app
from shipyard.pipelines.definitions import make_deploy_pipeline, make_promotion_pipeline
from shipyard.pipelines.kfp_components import ALL_COMPONENTS
from shipyard.pipelines.pipeline_cli import parse_params

DEPLOY_STEPS = {"resolve-model", "export-onnx", "optimize-model", "validate-model", "publish-model", "deploy-model",
                "smoke-test"}  # fmt: skip


def _compile(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.yaml"
    result = CliRunner().invoke(build_app(), ["pipeline", "compile", name, "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return next(yaml.safe_load_all(out.read_text()))  # the pipeline spec (the platform spec follows it)


def test_deploy_pipeline_compiles_and_loads_back(tmp_path: Path) -> None:
    spec = _compile(tmp_path, "deploy")
    assert spec["pipelineInfo"]["name"] == "shipyard-deploy"
    assert {c.removeprefix("comp-") for c in spec["components"]} == DEPLOY_STEPS
    assert spec["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"
    loaded = components.load_component_from_file(str(tmp_path / "deploy.yaml"))
    assert loaded.name == "shipyard-deploy"
    assert {"model_uri", "repository", "model_name", "target"} <= set(loaded.component_spec.inputs)
    # typed artifacts between the steps
    validate = spec["components"]["comp-validate-model"]
    assert validate["inputDefinitions"]["artifacts"]["candidate"]["artifactType"]["schemaTitle"] == "system.Model"
    outputs = validate["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["plot"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_promotion_pipeline_has_canary_branches(tmp_path: Path) -> None:
    spec = _compile(tmp_path, "promotion")
    names = {c.removeprefix("comp-") for c in spec["components"]}
    assert {"alias-version", "promote-model", "deploy-model", "smoke-test"} <= names
    text = (tmp_path / "promotion.yaml").read_text()
    assert "older-version-serves" in text and "deploy canary" in text and "roll out" in text
    loaded = components.load_component_from_file(str(tmp_path / "promotion.yaml"))
    assert {"alias", "canary_traffic_percent"} <= set(loaded.component_spec.inputs)


def test_gpu_variant_requests_a_gpu_for_optimize_and_validate(tmp_path: Path) -> None:
    spec = _compile(tmp_path, "deploy", "--gpu")
    executors = spec["deploymentSpec"]["executors"]
    with_gpu = {name for name, ex in executors.items() if "accelerator" in ex["container"].get("resources", {})}
    assert with_gpu == {"exec-optimize-model", "exec-validate-model"}
    assert executors["exec-optimize-model"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"


def test_components_are_thin_and_self_contained() -> None:
    """Each component runs shipyard code imported inside its body, in the project's image."""
    for component in ALL_COMPONENTS:
        container = component.component_spec.implementation.container
        assert container.image.startswith("ghcr.io/shipyard/shipyard:")
        assert "from shipyard." in " ".join(container.command), component.name
        assert component.component_spec.description, component.name


def test_parse_params_types_and_errors() -> None:
    pipeline = make_deploy_pipeline()
    args = parse_params(pipeline, ["model_uri=models:/d/1", "repository=/r", "model_name=d", "http_port=9000",
                                   "timeout_s=5"])  # fmt: skip
    assert args["http_port"] == 9000 and args["timeout_s"] == 5.0
    with pytest.raises(typer.BadParameter, match="missing --param for: model_uri, repository, model_name"):
        parse_params(pipeline, [])
    with pytest.raises(typer.BadParameter, match="nope: not a parameter"):
        parse_params(make_promotion_pipeline(), ["nope=1"])
    with pytest.raises(typer.BadParameter, match="expected int"):
        parse_params(pipeline, ["http_port=eighty"])

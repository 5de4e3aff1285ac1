"""What the pipelines need on a cluster: the component image set at compile time, credentials from
Secrets on every task (kfp-kubernetes), and `shipyard pipeline submit` against a replayed KFP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from replay import ReplayServer
from typer.testing import CliRunner

from shipyard.pipelines.cluster import MLFLOW_KEYS, MLFLOW_SECRET, STORAGE_KEYS, STORAGE_SECRET
from shipyard.pipelines.kfp_components import PIPELINE_IMAGE
from shipyard.pipelines.pipeline_cli import pipeline_app

CONVERSATION = json.loads((Path(__file__).parent / "data" / "kfp_conversation.json").read_text())
IMAGE = "registry.example.com/team/shipyard:2.0"


def _compile(tmp_path: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{name}.yaml"
    result = CliRunner().invoke(pipeline_app, ["compile", name, "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def _images(spec: dict[str, Any]) -> set[str]:
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def _check_secrets(spec: dict[str, Any], platform: dict[str, Any]) -> None:
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"]), "every task gets the credentials"
    for name, config in executors.items():
        by_secret = {s["secretName"]: s for s in config["secretAsEnv"]}
        assert set(by_secret) == {MLFLOW_SECRET, STORAGE_SECRET}, name
        for secret, keys in ((MLFLOW_SECRET, MLFLOW_KEYS), (STORAGE_SECRET, STORAGE_KEYS)):
            assert by_secret[secret]["optional"] is True
            assert {m["envVar"] for m in by_secret[secret]["keyToEnv"]} == set(keys)


@pytest.mark.parametrize("name", ["deploy", "promotion"])
def test_compile_sets_the_image_and_wires_the_secrets(tmp_path: Path, name: str) -> None:
    spec, platform = _compile(tmp_path, name, "--image", IMAGE)
    assert _images(spec) == {IMAGE}
    _check_secrets(spec, platform)
    # the image already has kfp: KFP must not pip-install anything when the pod starts
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])
    default_spec, _ = _compile(tmp_path, name)
    assert _images(default_spec) == {PIPELINE_IMAGE}


def test_a_bad_image_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(pipeline_app, ["compile", "deploy", "-o", str(tmp_path / "x.yaml"), "--image", "a b"])
    assert result.exit_code == 2
    assert "give an image reference" in result.output


def _submit(server: ReplayServer, *args: str) -> Any:
    return CliRunner().invoke(pipeline_app, ["submit", *args, "--host", server.url, "--token", "replay-token"])


def test_submit_creates_the_experiment_and_the_run() -> None:
    with ReplayServer(CONVERSATION["first_submit"]) as server:
        result = _submit(
            server, "deploy", "-p", "model_uri=models:/digits/3", "-p", "repository=s3://models/repo",
            "-p", "model_name=digits", "--image", IMAGE, "--service-account", "shipyard-pipeline",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not server.mismatches and server.done, server.mismatches
    assert "submitted run 9a0c7e4b-2d3f-4c1a-8b6e-5f7d9c2e1a34" in result.output
    assert all(r["authorization"] == "Bearer replay-token" for r in server.requests)
    assert server.requests[2]["body"] == {"display_name": "shipyard"}
    run = server.requests[3]["body"]
    assert run["experiment_id"] == "3f8d2a61-7c1e-4b9a-9e55-0d4c2b1a6e70"
    assert run["service_account"] == "shipyard-pipeline"
    assert run["display_name"].startswith("shipyard deploy ")
    assert run["runtime_config"]["parameters"] == {
        "model_uri": "models:/digits/3", "repository": "s3://models/repo", "model_name": "digits",
        "deployment_name": "digits",
    }  # fmt: skip
    assert _images(run["pipeline_spec"]["pipeline_spec"]) == {IMAGE}
    _check_secrets(run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"])


def test_submit_into_an_existing_experiment_of_a_profile() -> None:
    with ReplayServer(CONVERSATION["existing_experiment_multi_user"]) as server:
        result = _submit(
            server, "promotion", "-p", "model_uri=models:/digits/3", "-p", "repository=s3://models/repo",
            "-p", "model_name=digits", "--namespace", "team-ml",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not server.mismatches and server.done, server.mismatches
    assert "display_name" in server.requests[0]["query"] and "namespace=team-ml" in server.requests[0]["query"]
    assert "submitted run c41e6b2a-8f0d-4e3b-a7c9-1d2e3f4a5b6c" in result.output


def test_submit_refused_is_one_line() -> None:
    with ReplayServer(CONVERSATION["unauthorized"]) as server:
        result = _submit(server, "deploy", "-p", "model_uri=m", "-p", "repository=r", "-p", "model_name=d",
                         "--namespace", "team-ml")  # fmt: skip
    assert result.exit_code == 2
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "403 Failed to authorize with API (check --token and --namespace)" in line

"""`shipyard deploy`: --dry-run prints applicable YAML; bad settings exit 2 naming the fix."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from shipyard.cli import build_app

pytestmark = pytest.mark.kserve_sdk  # --dry-run renders with the kserve SDK


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_prints_runtime_and_service_yaml() -> None:
    code, out, _ = _run("deploy", "s3://models/repo", "--name", "digits", "--namespace", "ml", "--dry-run",
                        "--gpus", "1", "--max-replicas", "4", "--scale-metric", "pending_requests",
                        "--scale-target", "16", "--image", "registry.example/rt:2")  # fmt: skip
    assert code == 0, out
    runtime, isvc = yaml.safe_load_all(out)
    assert runtime["kind"] == "ServingRuntime" and runtime["spec"]["containers"][0]["image"] == "registry.example/rt:2"
    assert isvc["metadata"] == {**isvc["metadata"], "name": "digits", "namespace": "ml"}
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "s3://models/repo"
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["autoScaling"]["metrics"][0]["external"]["target"]["value"] == "16"


def test_dry_run_without_runtime_prints_only_the_service() -> None:
    code, out, _ = _run("deploy", "gs://b/r", "--name", "d", "--dry-run", "--no-apply-runtime", "--canary-percent=10")
    assert code == 0
    [isvc] = yaml.safe_load_all(out)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("/local/path", "--name", "d"), "has no scheme"),
        (("s3://b/r", "--name", "Bad_Name"), "not a valid Kubernetes name"),
        (("s3://b/r", "--name", "d", "--scale-metric", "pending_requests", "--canary-percent", "5"), "Serverless"),
        (("s3://b/r", "--name", "d", "--scale-metric", "gpu"), "metric 'gpu' is not supported"),
    ],
)
def test_bad_settings_exit_2_with_the_reason(args: tuple[str, ...], message: str) -> None:
    code, _, err = _run("deploy", *args, "--dry-run")
    assert code == 2
    assert message in err


def test_local_dry_run_prints_the_runtime_command(tmp_path: object) -> None:
    code, out, _ = _run("deploy", "/srv/repo", "--name", "d", "--target", "local", "--dry-run", "--http-port", "9000")
    assert code == 0
    assert "-m shipyard.serving_runtime --model-repository /srv/repo --host 127.0.0.1 --http-port 9000" in out


def test_kserve_without_a_cluster_says_how_to_proceed(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = _run("deploy", "s3://b/r", "--name", "d", "--timeout", "1")
    assert code == 2  # no cluster is the user's situation to fix (the line says how), not a shipyard bug
    assert "--target local" in err

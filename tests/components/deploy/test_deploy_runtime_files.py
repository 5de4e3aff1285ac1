"""serving_runtime/manifests and the Dockerfile: CRD-valid, and their container args are the runtime's own flags.

Runs in the main pytest session (no kserve import): the runtime's parser lives beside tritonclient.grpc.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from shipyard.components.deploy import RuntimeSpec

if TYPE_CHECKING:
    import argparse

    from shipyard.serving_runtime.server import ServerOptions

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "serving_runtime" / "manifests"
DOCKERFILE = ROOT / "serving_runtime" / "Dockerfile"


def build_parser() -> argparse.ArgumentParser:
    # imported here: the kserve_sdk session collects this module too, and the runtime's CLI
    # imports tritonclient.grpc, whose protos clash with kserve's
    from shipyard.serving_runtime.cli import build_parser

    return build_parser()


def parse_options(argv: list[str]) -> ServerOptions:
    from shipyard.serving_runtime.cli import parse_options

    return parse_options(argv)


def _docs(kserve_only: bool = True) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return [d for d in docs if d["apiVersion"].startswith("serving.kserve.io/")] if kserve_only else docs


def _runtime_container() -> dict[str, Any]:
    [runtime] = [d for d in _docs() if d["kind"] == "ServingRuntime"]
    [container] = runtime["spec"]["containers"]
    return container


def _with_repository(args: list[str], repo: Path) -> list[str]:
    return [a.replace("/mnt/models", str(repo)) for a in args]


def test_manifests_validate_against_the_crds(crd_validate: Any) -> None:
    docs = _docs()
    assert {d["kind"] for d in docs} == {"ServingRuntime", "ClusterServingRuntime", "InferenceService"}
    for doc in docs:
        crd_validate(doc)


def test_manifest_args_are_accepted_by_the_runtime_parser(tmp_path: Path) -> None:
    container = _runtime_container()
    assert container["name"] == "kserve-container"
    args = container["args"]
    parsed = build_parser().parse_args(args)
    assert (parsed.repositories, parsed.http_port, parsed.grpc_port) == (["/mnt/models"], 8080, 8081)
    # the full check (the repository must be a directory) on a real one
    options = parse_options(_with_repository(args, tmp_path))
    assert (options.http_port, options.grpc_port) == (8080, 8081)
    assert [Path(p) for p in options.repositories] == [tmp_path]
    # the probes and the Prometheus port point at the REST port the args open
    assert container["readinessProbe"]["httpGet"]["port"] == options.http_port
    assert container["ports"][0]["containerPort"] == options.http_port


def test_generated_runtime_args_are_accepted_by_the_runtime_parser(tmp_path: Path) -> None:
    args = RuntimeSpec(http_port=9000, grpc_port=9001, extra_args=("--model-control-mode=poll",)).args()
    options = parse_options(_with_repository(args, tmp_path))
    assert (options.http_port, options.grpc_port, options.control_mode) == (9000, 9001, "poll")


def test_runtime_parser_rejects_what_it_should(capsys: pytest.CaptureFixture[str]) -> None:
    """The args test is meaningful: a misspelled flag is a usage error."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--model-repository=/mnt/models", "--http_prt=8080"])
    assert exc.value.code == 2
    assert "--http_prt" in capsys.readouterr().err


def test_examples_use_the_runtime_and_kserve_conventions() -> None:
    docs = _docs()
    [runtime] = [d for d in docs if d["kind"] == "ServingRuntime"]
    services = [d for d in docs if d["kind"] == "InferenceService"]
    assert len(services) >= 2
    for isvc in services:
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["protocolVersion"] == "v2"
        assert "://" in model["storageUri"]
    keda = [s for s in services if s["metadata"]["annotations"].get("serving.kserve.io/autoscalerClass") == "keda"]
    assert keda, "one example scales with KEDA on the runtime's metrics"
    [metric] = keda[0]["spec"]["predictor"]["autoScaling"]["metrics"]
    assert "nv_inference_pending_request_count" in metric["external"]["metric"]["query"]


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["resources"]
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file(), resource
    image = _runtime_container()["image"]
    assert any(image.startswith(i["name"] + ":") for i in kustomization["images"])


def test_dockerfile_runs_the_runtime_with_its_default_args(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["python", "-m", "shipyard.serving_runtime"]
    assert cmd == _runtime_container()["args"]  # the ServingRuntime's args replace CMD with the same flags
    parse_options(_with_repository(cmd, tmp_path))
    # lean: only the serve and gpu extras, a CUDA base, ports as the args say
    assert re.findall(r'pip install "\.\[([a-z0-9,]+)\]"', text) == ["serve,gpu,s3,gcs,azure"]  # stores: remote.py
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, re.M)
    assert re.search(r"^EXPOSE 8080 8081$", text, re.M)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert not [line for line in installs if any(w in line for w in ("mlflow", "kfp", "pipeline"))]


def test_cluster_manifests_validate_against_the_kubernetes_schemas() -> None:
    """rbac.yaml as the API server of Kubernetes 1.30 would check it, and the runtime's pod parts:
    container (probes, resources, ports) and the InferenceServices' termination grace period."""
    import kubernetes_validate

    others = [d for d in _docs(kserve_only=False) if not d["apiVersion"].startswith("serving.kserve.io/")]
    assert {d["kind"] for d in others} == {"ServiceAccount", "Role", "RoleBinding"}
    for doc in others:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    services = [d for d in _docs() if d["kind"] == "InferenceService"]
    for runtime in [d for d in _docs() if d["kind"].endswith("ServingRuntime")]:
        [container] = runtime["spec"]["containers"]
        for isvc in services:
            grace = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
                   "spec": {"containers": [container], "terminationGracePeriodSeconds": grace}}  # fmt: skip
            kubernetes_validate.validate(pod, "1.30", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):  # the check is not vacuous
        kubernetes_validate.validate({**others[1], "rules": [{"verbs": "create"}]}, "1.30", strict=True)


def test_pods_get_more_time_than_the_drain_and_probe_our_endpoints(tmp_path: Path) -> None:
    container = _runtime_container()
    drain = parse_options(_with_repository(container["args"], tmp_path)).graceful_shutdown_secs
    for isvc in [d for d in _docs() if d["kind"] == "InferenceService"]:
        assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > drain
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    [cluster_runtime] = [d for d in _docs() if d["kind"] == "ClusterServingRuntime"]
    formats = cluster_runtime["spec"]["supportedModelFormats"]
    assert {f["name"] for f in formats} == {"onnx", "tensorrt", "pytorch"} and all(f["autoSelect"] for f in formats)
    assert cluster_runtime["spec"]["containers"] == [container]


def test_rbac_role_grants_only_kserve_verbs_and_argo_results() -> None:
    [role] = [d for d in _docs(kserve_only=False) if d["kind"] == "Role"]
    groups = {r["apiGroups"][0] for r in role["rules"]}
    assert groups == {"serving.kserve.io", "argoproj.io"}
    [binding] = [d for d in _docs(kserve_only=False) if d["kind"] == "RoleBinding"]
    [account] = [d for d in _docs(kserve_only=False) if d["kind"] == "ServiceAccount"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]

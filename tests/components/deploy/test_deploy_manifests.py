"""Generated ServingRuntime / InferenceService manifests (kserve SDK models) against KServe's full CRD schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.components.deploy import (
    Autoscaling,
    InferenceServiceSpec,
    RuntimeSpec,
    kserve_manifests,
    render_kserve,
)

pytestmark = pytest.mark.kserve_sdk
# kserve is imported inside the tests (kserve_manifests imports it lazily): the other pytest session
# collects this module too, beside modules that import tritonclient.grpc.


def _isvc(**kw: Any) -> dict[str, Any]:
    spec = InferenceServiceSpec(**{"name": "digits", "storage_uri": "s3://models/repo", "namespace": "ml", **kw})
    return kserve_manifests(spec)[0]


def test_serving_runtime_matches_kserve_conventions(crd_validate: Any) -> None:
    runtime, _ = kserve_manifests(
        InferenceServiceSpec(name="digits", storage_uri="s3://models/repo", namespace="ml"),
        RuntimeSpec(image="registry.example/shipyard-runtime:1.2"),
    )
    crd_validate(runtime)
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert runtime["metadata"]["namespace"] == "ml"
    spec = runtime["spec"]
    assert "multiModel" not in spec  # multiModel means ModelMesh
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"onnx", "tensorrt", "pytorch"}
    assert all(f["autoSelect"] for f in spec["supportedModelFormats"])
    assert spec["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert spec["annotations"]["prometheus.io/port"] == "8080"
    assert spec["annotations"]["prometheus.io/path"] == "/metrics"
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "registry.example/shipyard-runtime:1.2"
    assert container["args"] == ["--model-repository=/mnt/models", "--http-port=8080", "--grpc-port=8081",
                                 "--graceful-shutdown-secs=30"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]


def test_cluster_serving_runtime_validates(crd_validate: Any) -> None:
    runtime, _ = kserve_manifests(
        InferenceServiceSpec(name="digits", storage_uri="s3://models/repo"), RuntimeSpec(cluster_scoped=True)
    )
    crd_validate(runtime)
    assert runtime["kind"] == "ClusterServingRuntime"
    assert "namespace" not in runtime["metadata"]


def test_gpu_service_scales_on_the_runtime_queue_with_keda(crd_validate: Any) -> None:
    isvc = _isvc(gpus=1, min_replicas=1, max_replicas=8, autoscaling=Autoscaling("pending_requests", target=16))
    crd_validate(isvc)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == "shipyard-runtime"
    assert model["storageUri"] == "s3://models/repo"
    assert model["modelFormat"] == {"name": "onnx"}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 8)
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert metric["external"]["metric"]["query"] == (
        'sum(nv_inference_pending_request_count{namespace="ml",pod=~"digits-predictor-.*"})'
    )
    assert metric["external"]["target"] == {"type": "Value", "value": "16"}


def test_serverless_canary_with_knative_concurrency(crd_validate: Any) -> None:
    isvc = _isvc(canary_traffic_percent=10, autoscaling=Autoscaling("concurrency", target=32), max_replicas=3)
    crd_validate(isvc)
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 32)
    assert "nvidia.com/gpu" not in predictor["model"]["resources"]["limits"]


def test_standard_mode_cpu_utilization_hpa(crd_validate: Any) -> None:
    isvc = _isvc(deployment_mode="Standard", autoscaling=Autoscaling("cpu", target=70), max_replicas=4)
    crd_validate(isvc)
    [metric] = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    assert metric == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]


def test_grpc_protocol_declares_the_h2c_port(crd_validate: Any) -> None:
    isvc = _isvc(protocol="grpc-v2", model_format="tensorrt")
    crd_validate(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2"
    assert model["ports"] == [{"containerPort": 8081, "name": "h2c", "protocol": "TCP"}]


def test_validator_is_not_vacuous(crd_validate: Any) -> None:
    """The schema check rejects what the API server would: a wrong type, an undeclared field."""
    good = _isvc()
    bad_type = copy.deepcopy(good)
    bad_type["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(AssertionError, match="minReplicas"):
        crd_validate(bad_type)
    typo = copy.deepcopy(good)
    typo["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(AssertionError, match="storageURI"):
        crd_validate(typo)
    bad_enum = copy.deepcopy(good)
    bad_enum["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(AssertionError, match="scaleMetric"):
        crd_validate(bad_enum)


def test_dry_run_yaml_is_kubectl_applicable(crd_validate: Any) -> None:
    text = render_kserve(
        InferenceServiceSpec(name="digits", storage_uri="gs://b/repo", gpus=2, runtime="shipyard-gpu"),
        RuntimeSpec(name="shipyard-gpu"),
    )
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
    for doc in docs:
        crd_validate(doc)
    assert docs[1]["spec"]["predictor"]["model"]["runtime"] == docs[0]["metadata"]["name"] == "shipyard-gpu"
    assert docs[1]["spec"]["predictor"]["model"]["resources"]["requests"]["nvidia.com/gpu"] == "2"


def test_runtime_name_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime 'shipyard-runtime' but the runtime to apply is 'other'"):
        kserve_manifests(InferenceServiceSpec(name="a", storage_uri="s3://b/r"), RuntimeSpec(name="other"))


def test_committed_manifests_are_what_the_generator_renders() -> None:
    """serving_runtime/manifests/*.yaml stay in sync with the code (regenerate them when this fails)."""

    from shipyard.components.deploy import manifests

    folder = Path(__file__).resolve().parents[3] / "serving_runtime" / "manifests"
    runtime = yaml.safe_load((folder / "servingruntime.yaml").read_text())
    assert runtime == manifests.to_dict(manifests.serving_runtime(RuntimeSpec()))
    cluster_runtime = yaml.safe_load((folder / "clusterservingruntime.yaml").read_text())
    assert cluster_runtime == manifests.to_dict(manifests.serving_runtime(RuntimeSpec(cluster_scoped=True)))
    expected = {
        "inferenceservice.yaml": InferenceServiceSpec(
            name="digits-cnn",
            storage_uri="s3://shipyard-models/repository",
            max_replicas=3,
            autoscaling=Autoscaling("concurrency", 16),
        ),
        "inferenceservice-keda.yaml": InferenceServiceSpec(
            name="digits-cnn-gpu",
            storage_uri="s3://shipyard-models/repository",
            model_format="tensorrt",
            gpus=1,
            cpu="4",
            memory="8Gi",
            max_replicas=8,
            autoscaling=Autoscaling("pending_requests", 16),
        ),
    }
    for filename, spec in expected.items():
        generated = manifests.to_dict(manifests.inference_service(spec))
        del generated["metadata"]["namespace"]  # kustomize sets it
        assert yaml.safe_load((folder / filename).read_text()) == generated, filename

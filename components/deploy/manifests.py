"""Render the ServingRuntime and the InferenceService with the kserve SDK's models.

Importing this module imports the kserve SDK, whose gRPC protos clash with tritonclient.grpc's:
never import it in a process that imports ``tritonclient.grpc`` or the runtime's config module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from kserve import (
    ApiClient,
    V1alpha1ServingRuntime,
    V1alpha1ServingRuntimeSpec,
    V1alpha1SupportedModelFormat,
    V1beta1AutoScalingSpec,
    V1beta1ExternalMetrics,
    V1beta1ExternalMetricSource,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1MetricsSpec,
    V1beta1MetricTarget,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
    V1beta1ResourceMetricSource,
    constants,
)
from kubernetes.client import (
    V1Container,
    V1ContainerPort,
    V1HTTPGetAction,
    V1ObjectMeta,
    V1Probe,
    V1ResourceRequirements,
)

from shipyard.components.deploy.spec import (
    LIVE_PATH,
    METRICS_PATH,
    MODEL_FORMATS,
    PROMETHEUS_QUERIES,
    READY_PATH,
    TERMINATION_GRACE_S,
    InferenceServiceSpec,
    RuntimeSpec,
)

CONTAINER_NAME = "kserve-container"  # KServe merges the predictor's model spec into this container
GPU_RESOURCE = "nvidia.com/gpu"
LABELS = {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/part-of": "shipyard"}


def _probe(path: str, port: int, *, initial_delay_s: int, failure_threshold: int) -> V1Probe:
    return V1Probe(
        http_get=V1HTTPGetAction(path=path, port=port),
        initial_delay_seconds=initial_delay_s,
        period_seconds=5,
        timeout_seconds=2,
        failure_threshold=failure_threshold,
    )


def prometheus_annotations(port: int) -> dict[str, str]:
    """Annotations that make KServe and a plain Prometheus scrape the runtime's ``/metrics``."""
    return {
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "prometheus.kserve.io/port": str(port),
        "prometheus.kserve.io/path": METRICS_PATH,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": METRICS_PATH,
    }


def serving_runtime(spec: RuntimeSpec, namespace: str | None = None) -> V1alpha1ServingRuntime:
    """The ServingRuntime (or ClusterServingRuntime when ``spec.cluster_scoped``) for our image.

    Its container is ``kserve-container`` running the runtime on ``/mnt/models`` with the OIP v2
    REST and gRPC protocols, readiness on ``/v2/health/ready``; ``multiModel`` stays unset (that
    would mean ModelMesh). Raises nothing beyond what ``RuntimeSpec`` raised at construction.
    """
    container = V1Container(
        name=CONTAINER_NAME,
        image=spec.image,
        args=spec.args(),
        # Knative allows one port; gRPC is reached inside the pod or through an InferenceService
        # with protocol grpc-v2 (which declares the h2c port).
        ports=[V1ContainerPort(container_port=spec.http_port, name="http1", protocol="TCP")],
        readiness_probe=_probe(READY_PATH, spec.http_port, initial_delay_s=2, failure_threshold=3),
        liveness_probe=_probe(LIVE_PATH, spec.http_port, initial_delay_s=10, failure_threshold=6),
        resources=V1ResourceRequirements(
            requests={"cpu": spec.cpu, "memory": spec.memory},
            limits={"cpu": spec.cpu, "memory": spec.memory},
        ),
    )
    formats = [V1alpha1SupportedModelFormat(name=name, auto_select=True, priority=1) for name in MODEL_FORMATS]
    return V1alpha1ServingRuntime(
        api_version=constants.KSERVE_V1ALPHA1,
        kind="ClusterServingRuntime" if spec.cluster_scoped else "ServingRuntime",
        metadata=V1ObjectMeta(
            name=spec.name,
            namespace=None if spec.cluster_scoped else namespace,
            labels={**LABELS, "app.kubernetes.io/component": "serving-runtime"},
        ),
        spec=V1alpha1ServingRuntimeSpec(
            annotations=prometheus_annotations(spec.http_port),
            supported_model_formats=formats,
            protocol_versions=["v2", "grpc-v2"],
            containers=[container],
        ),
    )


def _resources(spec: InferenceServiceSpec) -> V1ResourceRequirements:
    requests: dict[str, str] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, str] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.gpus)
    return V1ResourceRequirements(requests=requests, limits=limits)


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _autoscaling(spec: InferenceServiceSpec) -> dict[str, Any]:
    """Predictor fields and metadata annotations for ``spec.autoscaling`` (empty without one)."""
    scaling = spec.autoscaling
    if scaling is None:
        return {}
    if spec.mode == "Serverless":
        return {"scale_metric": scaling.metric, "scale_target": max(1, round(scaling.target))}
    if scaling.uses_prometheus:
        query = PROMETHEUS_QUERIES[scaling.metric].format(namespace=spec.namespace, name=spec.name)
        metric = V1beta1MetricsSpec(
            type="External",
            external=V1beta1ExternalMetricSource(
                metric=V1beta1ExternalMetrics(backend="prometheus", server_address=scaling.prometheus_url, query=query),
                target=V1beta1MetricTarget(type="Value", value=_quantity(scaling.target)),
            ),
        )
    else:  # cpu / memory utilization through an HPA
        metric = V1beta1MetricsSpec(
            type="Resource",
            resource=V1beta1ResourceMetricSource(
                name=scaling.metric,
                target=V1beta1MetricTarget(type="Utilization", average_utilization=max(1, round(scaling.target))),
            ),
        )
    return {"auto_scaling": V1beta1AutoScalingSpec(metrics=[metric])}


def inference_service(spec: InferenceServiceSpec, runtime: RuntimeSpec | None = None) -> V1beta1InferenceService:
    """The InferenceService serving ``spec.storage_uri`` with our runtime over OIP v2.

    ``runtime`` supplies the gRPC port when ``spec.protocol`` is ``grpc-v2`` (default ports otherwise).
    Raises nothing beyond what the specs raised at construction.
    """
    runtime = runtime or RuntimeSpec(name=spec.runtime)
    annotations = {
        "serving.kserve.io/deploymentMode": spec.mode,
        "serving.kserve.io/enable-prometheus-scraping": "true",
    }
    if spec.autoscaling is not None and spec.autoscaling.uses_prometheus:
        annotations["serving.kserve.io/autoscalerClass"] = "keda"
    annotations.update(spec.annotations)
    ports = None
    if spec.protocol == "grpc-v2":
        ports = [V1ContainerPort(container_port=runtime.grpc_port, name="h2c", protocol="TCP")]
    model = V1beta1ModelSpec(
        name=CONTAINER_NAME,
        model_format=V1beta1ModelFormat(name=spec.model_format),
        protocol_version=spec.protocol,
        runtime=spec.runtime,
        storage_uri=spec.storage_uri,
        resources=_resources(spec),
        ports=ports,
    )
    predictor = V1beta1PredictorSpec(
        model=model,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        canary_traffic_percent=spec.canary_traffic_percent,
        service_account_name=spec.service_account,
        termination_grace_period_seconds=TERMINATION_GRACE_S,  # above the runtime's drain (--graceful-shutdown-secs)
        **_autoscaling(spec),
    )
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=spec.name,
            namespace=spec.namespace,
            labels={**LABELS, "app.kubernetes.io/component": "inference-service", **spec.labels},
            annotations=annotations,
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """A kserve/kubernetes SDK model as the plain (camelCase) dict the API server takes."""
    result: dict[str, Any] = ApiClient().sanitize_for_serialization(obj)
    return result


def to_yaml(objs: Iterable[Any]) -> str:
    """Several SDK models (or plain dicts) as one multi-document YAML string, ``kubectl apply``-able."""
    docs = [obj if isinstance(obj, dict) else to_dict(obj) for obj in objs]
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
